"""The sandbox's HTTP edge: ModelGates' four video endpoints, the admin routes, faults.

A threaded HTTP/1.1 keep-alive server from the standard library.  Content is written
straight to the socket in views of at most 1 MiB, so a GiB download streams at
loopback speed with flat memory.  Injected faults are taken in this order: auth,
then the fault queue (hang, then error), then the random ``error_rate``.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import socketserver
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from .admin import PREFIX, handle_admin
from .content import Output
from .errors import RETRY_AFTER_STATUSES, ApiError, envelope
from .jobs import API_PREFIX, Job, public_view
from .models import list_models
from .state import Fault, SandboxState
from .validation import validate_submit

BODY_LIMIT = 50 * 1024 * 1024
RANGE_PATTERN = re.compile(r"^bytes=(\d*)-(\d*)$")
STAT_NAMES = {"submit": "submits", "poll": "polls", "content": "content_requests"}

log = logging.getLogger(__name__)


class SandboxHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server that carries the sandbox state and API key."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: SandboxState, api_key: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.state = state
        self.api_key = api_key
        super().__init__(address, SandboxRequestHandler)

    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup ``HTTPServer`` does."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def base_url(self) -> str:
        """Return the API base URL, e.g. ``http://127.0.0.1:8090/api/v1``."""
        host = f"[{self.server_name}]" if ":" in self.server_name else self.server_name
        return f"http://{host}:{self.server_port}{API_PREFIX}"


def parse_range(header: str, total: int) -> tuple[int, int] | None:
    """Return ``[start, stop)`` for a single byte range, None to ignore it, or raise 416."""
    match = RANGE_PATTERN.match(header.strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:
        if int(last) == 0:
            raise _unsatisfiable(total)
        return max(total - int(last), 0), total
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= total:
        raise _unsatisfiable(total)
    return start, min(int(last) + 1, total) if last else total


def _unsatisfiable(total: int) -> ApiError:
    return ApiError(416, "range not satisfiable", headers={"Content-Range": f"bytes */{total}"})


def _route(method: str, path: str) -> tuple[str, str]:
    segments = [part for part in path[len(API_PREFIX) :].split("/") if part]
    wanted, endpoint, job_id = "GET", "", ""
    if segments == ["videos", "models"]:
        endpoint = "models"
    elif segments == ["videos"]:
        wanted, endpoint = "POST", "submit"
    elif len(segments) == 2 and segments[0] == "videos":
        endpoint, job_id = "poll", segments[1]
    elif len(segments) == 3 and segments[0] == "videos" and segments[2] == "content":
        endpoint, job_id = "content", segments[1]
    else:
        raise ApiError(404, f"no route for {path}")
    if method != wanted:
        raise ApiError(405, f"use {wanted} for {path}", headers={"Allow": wanted})
    return endpoint, job_id


class SandboxRequestHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests like the ModelGates video API."""

    protocol_version = "HTTP/1.1"
    server_version = "ModelGatesSandbox/1 (development sandbox, not ModelGates)"
    _started = False

    def version_string(self) -> str:
        """Return the Server header value."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Log requests at debug level instead of printing them."""
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        """Dispatch a GET."""
        self._handle("GET")

    def do_POST(self) -> None:
        """Dispatch a POST."""
        self._handle("POST")

    def do_PUT(self) -> None:
        """Dispatch a PUT (always refused)."""
        self._handle("PUT")

    def do_DELETE(self) -> None:
        """Dispatch a DELETE (always refused)."""
        self._handle("DELETE")

    @property
    def _server(self) -> SandboxHTTPServer:
        return cast(SandboxHTTPServer, self.server)

    def _handle(self, method: str) -> None:
        self._started = False
        url = urlsplit(self.path)
        try:
            raw = self._read_body()
            if url.path.startswith(PREFIX):
                state, base_url = self._server.state, self._server.base_url
                self._send_json(*handle_admin(state, base_url, method, url.path, raw))
            elif url.path == API_PREFIX or url.path.startswith(API_PREFIX + "/"):
                self._api(method, url.path, parse_qs(url.query), raw)
            else:
                raise ApiError(404, f"no route for {url.path}")
        except ApiError as error:
            self._send_error(error)
        except OSError:
            self.close_connection = True
        except Exception:
            log.exception("sandbox: %s %s crashed", method, self.path)
            self._send_error(ApiError(500, "sandbox internal error"))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "identity").lower() != "identity":
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise ApiError(400, "invalid Content-Length")
        if length > BODY_LIMIT:
            self.close_connection = True
            raise ApiError(413, "request body exceeds 50 MiB")
        return self.rfile.read(length) if length else b""

    def _api(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> None:
        endpoint, job_id = _route(method, path)
        state = self._server.state
        expected = f"Bearer {self._server.api_key}".encode()
        if not hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
            state.count("unauthorized")
            challenge = {"WWW-Authenticate": "Bearer"}
            raise ApiError(401, "missing or invalid API key", headers=challenge)
        state.count(STAT_NAMES.get(endpoint, endpoint))
        raw_index = query.get("index", ["0"])[-1]
        if endpoint == "content" and raw_index.isdigit():
            state.count_content(job_id, str(int(raw_index)))
        fault = state.take_fault(endpoint)
        if fault is not None and fault.hang_seconds:
            state.count("hung_requests")
            time.sleep(fault.hang_seconds)
        if fault is not None and fault.is_error and not fault.after_create:
            state.count("injected_errors")
            raise ApiError(cast(int, fault.status), "sandbox: injected fault", fault.retry_after)
        settings = state.settings
        if fault is None and state.chance(settings.error_rate):
            state.count("injected_errors")
            raise ApiError(state.pick(settings.error_statuses), "sandbox: injected random error")
        if endpoint == "models":
            self._send_json(200, {"data": list_models()})
        elif endpoint == "submit":
            self._submit(raw, fault)
        elif endpoint == "poll":
            self._send_json(200, public_view(self._job(job_id), state.now(), self._server.base_url))
        else:
            self._content(self._job(job_id), raw_index, fault)

    def _job(self, job_id: str) -> Job:
        try:
            return self._server.state.job(job_id)
        except KeyError:
            raise ApiError(404, f"job {job_id} not found") from None

    def _submit(self, raw: bytes, fault: Fault | None) -> None:
        state = self._server.state
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "request body is not valid JSON") from None
        job = state.create_job(validate_submit(body, state.settings.require_https_callbacks))
        log.info("sandbox: created %s (%s)", job.id, job.model)
        if fault is not None and fault.after_create:
            state.count("injected_errors")
            message = "sandbox: injected fault after creating the job"
            raise ApiError(cast(int, fault.status), message, fault.retry_after)
        answer = {
            "id": job.id,
            "polling_url": f"{API_PREFIX}/videos/{job.id}",
            "status": "pending",
            "generation_id": job.generation_id,
        }
        self._send_json(202, answer)

    def _content(self, job: Job, raw_index: str, fault: Fault | None) -> None:
        state = self._server.state
        settings = state.settings
        if not raw_index.isdigit():
            raise ApiError(400, "index must be a non-negative integer")
        now, index = state.now(), int(raw_index)
        status = job.status(now)
        if status in ("pending", "in_progress"):
            raise ApiError(404, f"job {job.id} is not ready ({status})")
        if status != "completed":
            raise ApiError(404, f"job {job.id} is {status}; it has no content")
        if index >= job.outputs:
            raise ApiError(400, f"index {index} is out of range ({job.outputs} output(s))")
        if now >= job.expires_at:
            raise ApiError(404, f"the outputs of job {job.id} have expired")
        output = job.output(index)
        start, stop = 0, output.size
        span = None
        if settings.range_support == "206" and self.headers.get("Range"):
            span = parse_range(self.headers["Range"], output.size)
            start, stop = span or (start, stop)
        cut = fault.truncate_at if fault is not None else None
        if cut is None and state.chance(settings.truncate_downloads):
            cut = (stop - start) // 2
        self.send_response(206 if span else 200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(stop - start))
        if settings.range_support == "206":
            self.send_header("Accept-Ranges", "bytes")
        if span:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{output.size}")
        self.end_headers()
        self._started = True
        self._stream(output, start, stop if cut is None else min(stop, start + cut))
        if cut is not None and start + cut < stop:
            state.count("truncated_downloads")
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _stream(self, output: Output, start: int, stop: int) -> None:
        settings = self._server.state.settings
        began, sent = time.monotonic(), 0
        for chunk in output.chunks(start, stop):
            self.wfile.write(chunk)
            sent += len(chunk)
            if settings.throttle_bytes_per_second:
                ahead = sent / settings.throttle_bytes_per_second - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, error: ApiError) -> None:
        if self._started:  # headers already went out: all we can do is hang up
            self.close_connection = True
            return
        headers = dict(error.headers)
        if error.status in RETRY_AFTER_STATUSES:
            retry_after = error.retry_after
            if retry_after is None:
                retry_after = self._server.state.settings.retry_after
            headers["Retry-After"] = str(retry_after)
        self._send_json(error.status, envelope(error.status, error.message), headers)
