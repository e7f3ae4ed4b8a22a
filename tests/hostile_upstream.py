"""A ModelGates stand-in on a real loopback socket that misbehaves on cue, for tests.

    from hostile_upstream import Answer, HostileUpstream, ranged_file

    with HostileUpstream() as upstream:
        upstream.on("GET", "/videos/job-1/content", Answer(200, VIDEO, encoding="gzip"))
        upstream.on("GET", "/videos/job-1", Answer.json_text('{"id": "job-1", "cost": NaN}'))
        client = ModelGatesClient(upstream.base_url, "key")
        ...
        assert upstream.requests[0].headers["accept-encoding"] == "identity"

Routes match the method and the path below ``/api/v1`` (no query; ``fnmatch`` patterns
such as ``/videos/*/content`` work), newest route first.  A route's answers are given
out in order and its last one repeats.  An answer is an :class:`Answer` or a callable
``(Seen) -> Answer`` (see :func:`ranged_file`, a well-behaved server of one file that
honours ``Range``).  A request no route matches gets a 404 error envelope.

An :class:`Answer` is written byte by byte as scripted, so it can lie in every way a
server or proxy could: any status, headers sent verbatim (duplicates, huge or
non-numeric values), a ``Content-Length`` that is wrong or missing, chunked framing, a
connection cut mid-body, a body that stalls until released (``hold_after`` + ``gate``,
for "pause the stream" tests) or drips slowly, or ``raw`` bytes instead of a response.
Every answer closes its connection afterwards (``Connection: close`` unless
``connection_close=False``), so a scripted lie never leaks into the next request.

As a pytest fixture: ``from hostile_upstream import hostile_upstream_fixture  # noqa: F401``
in a test module gives its tests a started ``hostile_upstream``.
"""

from __future__ import annotations

import fnmatch
import http
import json
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

API_PREFIX = "/api/v1"
AUTO = "auto"


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str  # below API_PREFIX when it starts with it, else the whole path
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes

    @property
    def range(self) -> str | None:
        """The ``Range`` header, if any."""
        return self.headers.get("range")


@dataclass(frozen=True)
class Answer:
    """One scripted answer; every field is a way to misbehave."""

    status: int = 200
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()  # sent verbatim, in this order
    length: int | str | None = AUTO  # Content-Length: AUTO = len(body) unless chunked, None = none
    encoding: str | None = None  # Content-Encoding (the body is sent as given, never encoded)
    content_type: str | None = "video/mp4"
    chunked: bool = False  # Transfer-Encoding: chunked framing
    chunk_size: int = 64 * 1024
    cut_after: int | None = None  # close the connection after this many body bytes
    hold_after: int | None = None  # after this many body bytes wait for ``gate`` (or stop)
    gate: threading.Event | None = None
    drip: float = 0.0  # seconds to wait before each chunk
    reason: str | None = None
    connection_close: bool = True
    raw: bytes | None = None  # written instead of everything above

    @classmethod
    def json(cls, payload: Any, status: int = 200, **fields: Any) -> Answer:
        """A JSON answer (``payload`` dumped as Python would, NaN included)."""
        return cls.json_text(json.dumps(payload), status, **fields)

    @classmethod
    def json_text(cls, text: str, status: int = 200, **fields: Any) -> Answer:
        """A JSON answer from literal text, for bodies ``json.dumps`` cannot write."""
        return cls(status, text.encode(), content_type="application/json", **fields)

    @classmethod
    def error(cls, status: int, message: str = "nope", **fields: Any) -> Answer:
        """An upstream error envelope."""
        envelope = {"error": {"code": status, "message": message, "metadata": None}}
        return cls.json(envelope, status, **fields)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Answer:
        """A redirect to ``location`` (relative or absolute)."""
        return cls(status, headers=[("Location", location)], content_type=None)

    def head(self) -> bytes:
        """Status line and headers, as they go on the wire."""
        reason = self.reason if self.reason is not None else _reason(self.status)
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        if self.content_type is not None:
            lines.append(f"Content-Type: {self.content_type}")
        if self.encoding is not None:
            lines.append(f"Content-Encoding: {self.encoding}")
        if self.length == AUTO:
            if not self.chunked:
                lines.append(f"Content-Length: {len(self.body)}")
        elif self.length is not None:
            lines.append(f"Content-Length: {self.length}")
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
        if self.connection_close:
            lines.append("Connection: close")
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


Script = Answer | Callable[[Seen], Answer]


def ranged_file(data: bytes, **fields: Any) -> Callable[[Seen], Answer]:
    """A well-behaved server of ``data``: 200, or 206/416 for ``Range: bytes=a-[b]``.

    ``fields`` override the answer it would give (for example ``cut_after=100`` cuts
    every answer short), so one misbehaviour can be added to an otherwise good server.
    """
    total = len(data)

    def answer(seen: Seen) -> Answer:
        spec = (seen.range or "").strip()
        if not spec.startswith("bytes=") or "," in spec:
            return replace(Answer(200, data), **fields)
        first, _, last = spec.removeprefix("bytes=").partition("-")
        if not first.isdigit() or not (last.isdigit() or last == ""):
            return replace(Answer(200, data), **fields)  # a range this server ignores
        start = int(first)
        if start >= total:
            return Answer(416, headers=[("Content-Range", f"bytes */{total}")], content_type=None)
        stop = min(int(last) + 1, total) if last else total
        content_range = ("Content-Range", f"bytes {start}-{stop - 1}/{total}")
        return replace(Answer(206, data[start:stop], headers=[content_range]), **fields)

    return answer


class HostileUpstream:
    """A threaded HTTP server on 127.0.0.1 answering from a script; use it as a context."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._routes: list[tuple[str, str, list[Script]]] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def base_url(self) -> str:
        """The API base to give a ModelGates client."""
        return self.origin + API_PREFIX

    def on(self, method: str, path: str, *answers: Script) -> HostileUpstream:
        """Answer ``method path`` with ``answers`` in turn (the last one repeats)."""
        if not answers:
            raise ValueError("give at least one answer")
        with self._lock:
            self._routes.insert(0, (method.upper(), path, list(answers)))
        return self

    def reset(self) -> None:
        """Forget every route and every request (for example between hypothesis examples)."""
        with self._lock:
            self._routes.clear()
            self.requests.clear()

    def seen(self, method: str, path: str) -> list[Seen]:
        """The requests received so far for ``method path`` (pattern as in ``on``)."""
        with self._lock:
            return [
                s
                for s in self.requests
                if s.method == method.upper() and fnmatch.fnmatchcase(s.path, path)
            ]

    def start(self) -> HostileUpstream:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release held bodies, stop serving and close the socket."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> HostileUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, seen: Seen) -> Answer:
        with self._lock:
            self.requests.append(seen)
            for method, pattern, answers in self._routes:
                if method == seen.method and fnmatch.fnmatchcase(seen.path, pattern):
                    script = answers.pop(0) if len(answers) > 1 else answers[0]
                    break
            else:
                return Answer.error(404, f"no scripted answer for {seen.method} {seen.path}")
        return script(seen) if callable(script) else script


@pytest.fixture(name="hostile_upstream")
def hostile_upstream_fixture() -> Iterator[HostileUpstream]:
    """A started :class:`HostileUpstream`, stopped after the test."""
    with HostileUpstream() as upstream:
        yield upstream


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    upstream: HostileUpstream


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read the request log instead

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def _serve(self) -> None:
        upstream = self.server.upstream
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith(API_PREFIX):
            path = path[len(API_PREFIX) :] or "/"
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        length = int(headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, path, dict(parse_qsl(parts.query)), headers, body)
        answer = upstream._answer(seen)
        self.close_connection = True
        try:
            self._write(answer, upstream.stopping)
        except OSError:
            pass  # the client went away: that is its business

    def _write(self, answer: Answer, stopping: threading.Event) -> None:
        if answer.raw is not None:
            self.wfile.write(answer.raw)
            self.wfile.flush()
            return
        self.wfile.write(answer.head())
        body = answer.body if answer.cut_after is None else answer.body[: answer.cut_after]
        held = False
        for begin, end in _slices(len(body), answer.chunk_size, answer.hold_after):
            if begin == answer.hold_after:
                held = self._hold(answer.gate, stopping)
            if answer.drip:
                self.wfile.flush()
                stopping.wait(answer.drip)
            piece = body[begin:end]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if answer.chunked else piece)
        if answer.hold_after is not None and not held:
            self._hold(answer.gate, stopping)  # hold_after at or past the end of the body
        if answer.cut_after is not None and answer.cut_after < len(answer.body):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if answer.chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _hold(self, gate: threading.Event | None, stopping: threading.Event) -> bool:
        self.wfile.flush()
        gate = gate or threading.Event()
        while not (gate.wait(0.05) or stopping.is_set()):
            pass
        return True


def _slices(total: int, size: int, split_at: int | None) -> list[tuple[int, int]]:
    """``[begin, end)`` pieces of a body of ``total`` bytes, one beginning at ``split_at``."""
    marks = set(range(0, total, max(size, 1))) | {total}
    if split_at is not None and 0 < split_at < total:
        marks.add(split_at)
    ordered = sorted(marks)
    return list(zip(ordered, ordered[1:], strict=False))


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Whatever"
