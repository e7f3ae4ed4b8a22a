"""The sandbox's HTTP server: ModelGates' four video endpoints plus admin knobs.

A development tool, not ModelGates: a real threaded HTTP/1.1 server on loopback that
answers like the upstream API (202 on submit, statuses on a clock, the error
envelope, per-model capability checks, content by index, signed callbacks) and can
be made to misbehave on purpose.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import models
from .callbacks import CallbackSender, is_loopback
from .state import TERMINAL, Job, SandboxSettings, State, job_object

BODY_LIMIT = 50 * 1024 * 1024
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
ERROR_TYPES = {
    429: "rate_limit_exceeded",
    402: "payment_required",
    500: "provider_unavailable",
    502: "provider_unavailable",
    503: "provider_unavailable",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sandbox: SandboxServer


class SandboxServer:
    """The sandbox upstream: start it, point MODELGATES_BASE_URL at `base_url`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "sandbox-key",
        webhook_secret: str = "sandbox-secret",
        settings: SandboxSettings | None = None,
    ) -> None:
        if not is_loopback(f"http://{host}/"):
            raise ValueError("the sandbox only listens on loopback addresses")
        self.api_key = api_key
        self.state = State(settings or SandboxSettings())
        self._http = _Server((host, port), _Handler)
        self._http.sandbox = self
        self.port = int(self._http.server_address[1])
        self.base_url = f"http://{host}:{self.port}/api/v1"
        self.callbacks = CallbackSender(self.state, webhook_secret, self.base_url)
        self._thread: threading.Thread | None = None

    @property
    def settings(self) -> SandboxSettings:
        """The live knobs."""
        return self.state.settings

    def start(self) -> SandboxServer:
        """Serve in a background thread."""
        self.callbacks.start()
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until `stop`."""
        self.callbacks.start()
        self._http.serve_forever()

    def stop(self) -> None:
        """Stop serving and delivering."""
        self._http.shutdown()
        self._http.server_close()
        self.callbacks.stop()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def jobs(self) -> list[dict[str, Any]]:
        """Admin view of every job."""
        with self.state.lock:
            return [self.state.view(job, self.base_url) for job in self.state.jobs.values()]

    def job(self, job_id: str) -> dict[str, Any]:
        """Admin view of one job (KeyError if unknown)."""
        with self.state.lock:
            return self.state.view(self.state.jobs[job_id], self.base_url)

    def stats(self) -> dict[str, int]:
        """Counters: submits, polls, content requests, callbacks, injected errors."""
        with self.state.lock:
            return {
                key: self.state.stats[key]
                for key in (
                    "submits",
                    "polls",
                    "content_requests",
                    "models",
                    "callbacks_sent",
                    "callbacks_dropped",
                    "callbacks_failed",
                    "injected_errors",
                )
            }

    def expected_sha256(self, job_id: str, index: int) -> str:
        """The sha256 of what output ``index`` of ``job_id`` serves."""
        with self.state.lock:
            return self.state.content(self.state.jobs[job_id], index).sha256

    def add_fault(self, endpoint: str, status: int, count: int = 1, **options: Any) -> None:
        """Script the next answers of an endpoint (see the module docstring)."""
        self.state.add_fault(endpoint, status, count, **options)

    def advance(self, seconds: float) -> None:
        """Move the sandbox clock forward."""
        with self.state.lock:
            self.state.offset += seconds


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    @property
    def sandbox(self) -> SandboxServer:
        return self.server.sandbox

    # Plumbing -------------------------------------------------------------

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, retry_after: int | None = None) -> None:
        metadata = {"error_type": ERROR_TYPES[status]} if status in ERROR_TYPES else None
        headers = {}
        if status in (429, 503):
            headers["Retry-After"] = str(retry_after or self.sandbox.settings.retry_after)
        self._send_json(
            status,
            {"error": {"code": status, "message": message, "metadata": metadata}, "user_id": None},
            headers,
        )

    def _read_body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > BODY_LIMIT:
            self.close_connection = True
            self._error(413, "Request body exceeds 50 MiB")
            return None
        return self.rfile.read(length) if length else b""

    def _drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length <= BODY_LIMIT:
            self.rfile.read(length)

    # Routing --------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        if path.startswith("/_sandbox/"):
            self._admin(method, path[len("/_sandbox/") :])
            return
        if not path.startswith("/api/v1/"):
            self._drain()
            self._error(404, "Not found")
            return
        if self.headers.get("Authorization") != f"Bearer {self.sandbox.api_key}":
            self._drain()
            self._error(401, "Missing or invalid API key")
            return
        parts = path[len("/api/v1/") :].split("/")
        if method == "GET" and parts == ["videos", "models"]:
            self._endpoint("models", self._models)
        elif method == "POST" and parts == ["videos"]:
            self._endpoint("submit", self._submit)
        elif method == "GET" and len(parts) == 2 and parts[0] == "videos":
            self._endpoint("poll", lambda fault: self._poll(parts[1]))
        elif method == "GET" and len(parts) == 3 and parts[::2] == ["videos", "content"]:
            self._endpoint("content", lambda fault: self._content(parts[1], query, fault))
        else:
            self._drain()
            self._error(404, "Not found")

    def _endpoint(self, name: str, answer: Any) -> None:
        state = self.sandbox.state
        state.stats[
            {
                "submit": "submits",
                "poll": "polls",
                "content": "content_requests",
                "models": "models",
            }[name]
        ] += 1
        fault = state.take_fault(name)
        if fault is not None and fault.get("hang_seconds"):
            time.sleep(fault["hang_seconds"])
        if fault is not None and fault["status"] >= 300 and not fault.get("after_create"):
            state.stats["injected_errors"] += 1
            self._drain()
            self._error(
                fault["status"], f"sandbox: injected {fault['status']}", fault.get("retry_after")
            )
            return
        if fault is None and state.chance(state.settings.error_rate):
            state.stats["injected_errors"] += 1
            self._drain()
            self._error(
                state.random.choice(state.settings.error_statuses), "sandbox: injected error"
            )
            return
        answer(fault)

    # The API --------------------------------------------------------------

    def _models(self, fault: dict[str, Any] | None) -> None:
        self._send_json(200, {"data": models.MODELS})

    def _submit(self, fault: dict[str, Any] | None) -> None:
        raw = self._read_body()
        if raw is None:
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, "Body is not JSON")
            return
        if not isinstance(body, dict):
            self._error(400, "Body must be a JSON object")
            return
        state = self.sandbox.state
        problem = models.problem(body, state.settings.require_https_callbacks)
        if problem is not None:
            self._error(*problem)
            return
        options = ((body.get("provider") or {}).get("options") or {}).get("sandbox") or {}
        knobs = options.get("parameters", options) if isinstance(options, dict) else {}
        job = Job(
            id="job-" + secrets.token_hex(8),
            model=body["model"],
            params=body,
            created=state.now(),
            callback_url=body.get("callback_url"),
            outcome=str(knobs.get("outcome", "completed")),
            outputs=max(1, int(knobs.get("outputs", 1))),
            callback=str(knobs.get("callback", "deliver")),
            content_size=knobs.get("content_size"),
            pending_seconds=knobs.get("pending_seconds"),
            in_progress_seconds=knobs.get("in_progress_seconds"),
        )
        if job.outcome not in TERMINAL:
            self._error(400, f"sandbox: unknown outcome {job.outcome!r}")
            return
        with state.lock:
            state.jobs[job.id] = job
        if fault is not None and fault.get("after_create"):  # created, yet the answer fails
            state.stats["injected_errors"] += 1
            self._error(
                fault["status"],
                f"sandbox: injected {fault['status']} after creating the job",
                fault.get("retry_after"),
            )
            return
        self._send_json(
            202,
            {
                "id": job.id,
                "polling_url": f"/api/v1/videos/{job.id}",
                "status": "pending",
                "generation_id": job.generation_id,
            },
        )

    def _poll(self, job_id: str) -> None:
        state = self.sandbox.state
        with state.lock:
            job = state.jobs.get(job_id)
            if job is None:
                self._error(404, f"Job {job_id} not found")
                return
            answer = job_object(job, state.status(job), self.sandbox.base_url)
        self._send_json(200, answer)

    def _content(
        self, job_id: str, query: dict[str, list[str]], fault: dict[str, Any] | None
    ) -> None:
        state = self.sandbox.state
        with state.lock:
            job = state.jobs.get(job_id)
            status = state.status(job) if job else None
        if job is None:
            self._error(404, f"Job {job_id} not found")
            return
        raw_index = query.get("index", ["0"])[0]
        if not raw_index.isdigit() or int(raw_index) >= job.outputs:
            self._error(400, f"index {raw_index} out of range")
            return
        if status != "completed":
            self._error(404, f"Job {job_id} is {status}: no content")
            return
        index = int(raw_index)
        with state.lock:
            job.content_requests[index] += 1
        content = state.content(job, index)
        start, end, partial = 0, content.size, False
        match = RANGE.match(self.headers.get("Range", ""))
        if match and state.settings.range_support == "206":
            start = int(match.group(1))
            end = min(content.size, int(match.group(2)) + 1) if match.group(2) else content.size
            if start >= content.size or start >= end:
                self._error(416, "Range not satisfiable")
                return
            partial = True
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{content.size}")
        self.end_headers()
        cut = fault.get("truncate_at") if fault else None
        if cut is None and state.chance(state.settings.truncate_downloads):
            cut = (end - start) // 2
        self._stream(content.chunks(start, end), cut)

    def _stream(self, chunks: Any, cut: int | None) -> None:
        sent = 0
        throttle = self.sandbox.settings.throttle_bytes_per_second
        started = time.monotonic()
        for chunk in chunks:
            if cut is not None and sent + len(chunk) > cut:
                self.wfile.write(chunk[: cut - sent])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # cut the download short on purpose
                return
            self.wfile.write(chunk)
            sent += len(chunk)
            throttle = self.sandbox.settings.throttle_bytes_per_second
            if throttle:
                ahead = sent / throttle - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

    # Admin ------------------------------------------------------------------

    def _admin(self, method: str, path: str) -> None:
        sandbox = self.sandbox
        raw = self._read_body() if method == "POST" else b""
        if raw is None:
            return
        try:
            body = json.loads(raw) if raw else {}
            if method == "GET" and path == "jobs":
                self._send_json(200, {"jobs": sandbox.jobs()})
            elif method == "GET" and path.startswith("jobs/"):
                self._send_json(200, sandbox.job(path[len("jobs/") :]))
            elif method == "GET" and path == "stats":
                self._send_json(200, sandbox.stats())
            elif method == "GET" and path == "settings":
                self._send_json(200, sandbox.state.settings_dict())
            elif method == "POST" and path == "settings":
                sandbox.settings.update(body)
                self._send_json(200, sandbox.state.settings_dict())
            elif method == "POST" and path == "faults":
                sandbox.add_fault(**body)
                self._send_json(200, {"queued": body})
            elif method == "POST" and path == "advance":
                sandbox.advance(float(body["seconds"]))
                self._send_json(200, {"now": sandbox.state.now()})
            elif method == "POST" and path == "reset":
                with sandbox.state.lock:
                    sandbox.state.jobs.clear()
                    sandbox.state.faults.clear()
                    sandbox.state.stats.clear()
                self._send_json(200, {"reset": True})
            else:
                self._send_json(404, {"error": "no such admin endpoint"})
        except KeyError as error:
            self._send_json(404, {"error": f"unknown: {error}"})
        except (TypeError, ValueError) as error:
            self._send_json(400, {"error": str(error)})
