"""The web process's gunicorn worker: slow or stalled clients never hold a thread.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as its first
byte arrives; the thread then blocks reading headers and body, with no deadline.
Sixteen clients that send headers and one body byte stall every thread, and
``/healthz`` stops answering.

`BufferingWorker` keeps the threads but changes when a request reaches one: the
main loop (one ``select`` over every connection) gathers the request first, and
dispatches it only once its headers and whole body are here, or once it holds
`HOLD_LIMIT` bytes (a large upload; the rest is read by the thread under a socket
timeout, see `ReadDeadline`).  A request not gathered within
``REQUEST_READ_TIMEOUT_SECONDS`` gets ``408`` with the service's error body and
its connection is closed.  Stalled connections then cost a file descriptor each
(up to gunicorn's ``worker_connections`` per worker), never a thread.
"""

from __future__ import annotations

import json
import selectors
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker
from werkzeug.exceptions import RequestTimeout

HOLD_LIMIT = 1024 * 1024
RECV_SIZE = 64 * 1024

TIMEOUT_BODY = json.dumps(
    {
        "error": {
            "code": "request_timeout",
            "message": "The request was not received in time.",
            "details": {},
        }
    }
).encode()
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(TIMEOUT_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + TIMEOUT_BODY
)


class RequestBuffer:
    """Bytes of one HTTP/1.x request as they arrive, and whether it is all here.

    It only has to tell "wait" from "ready"; it never rejects.  Anything it cannot
    make sense of is "ready", so gunicorn's parser answers it as it always does.
    """

    def __init__(self, data: bytes = b"", limit: int = HOLD_LIMIT) -> None:
        self.data = bytearray(data)
        self.limit = limit
        self.wants_continue = False
        self._body_start = -1
        self._length: int | None = None
        self._chunked = False
        self._chunk_pos = 0
        self._done = False

    def feed(self, data: bytes) -> None:
        """Add bytes read from the socket."""
        self.data += data

    def ready(self) -> bool:
        """Whether the request can go to a thread without the thread waiting on the client."""
        if self._done or len(self.data) >= self.limit:
            return True
        if self._body_start < 0 and not self._parse_head():
            return self._done
        if self._chunked:
            self._done = self._chunks_complete()
        else:
            self._done = len(self.data) - self._body_start >= (self._length or 0)
        return self._done

    def _parse_head(self) -> bool:
        start = 0
        while self.data.startswith(b"\r\n", start):
            start += 2
        if len(self.data) > start and not (65 <= self.data[start] <= 90):
            self._done = True  # not a request line: let the parser answer it
            return False
        end = self.data.find(b"\r\n\r\n", start)
        if end < 0:
            return False
        self._body_start = end + 4
        lengths, codings = set(), []
        for line in bytes(self.data[start:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                lengths.add(value)
            elif name == b"transfer-encoding":
                codings += [c.strip() for c in value.split(b",")]
            elif name == b"expect" and value == b"100-continue":
                self.wants_continue = True
        if codings:
            self._chunked = codings[-1] == b"chunked"
            self._done = not self._chunked
            self._chunk_pos = self._body_start
        elif lengths:
            value = lengths.pop()
            if lengths or not value.isdigit():
                self._done = True
            else:
                self._length = int(value)
        return True

    def _chunks_complete(self) -> bool:
        data = self.data
        while True:
            line_end = data.find(b"\r\n", self._chunk_pos)
            if line_end < 0:
                return False
            size_text = bytes(data[self._chunk_pos : line_end]).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                return True
            if size == 0:
                trailer = line_end + 2
                return data.startswith(b"\r\n", trailer) or data.find(b"\r\n\r\n", trailer) >= 0
            next_pos = line_end + 2 + size + 2
            if next_pos > len(data):
                return False
            self._chunk_pos = next_pos


class BufferingWorker(ThreadWorker):
    """gthread, but a request reaches a thread only once it has all arrived."""

    read_timeout = 30.0

    def init_process(self) -> None:
        """Read the deadline from the configuration, then run as gthread does."""
        from .config import load_settings

        self.read_timeout = load_settings().request_read_timeout_seconds
        self.gathering: dict[TConn, tuple[RequestBuffer, float]] = {}
        super().init_process()

    def enqueue_req(self, conn: TConn) -> None:
        """Gather the request on the main loop; hand it to a thread once it is here."""
        if getattr(conn, "gathered", False):
            conn.gathered = False
            super().enqueue_req(conn)
            return
        leftover = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.sock.setblocking(False)
        self.gathering[conn] = (RequestBuffer(leftover), time.monotonic() + self.read_timeout)
        # A kept-alive connection comes back from the poller readable: try at once.
        self._gather(conn, registered=False)

    def _on_readable(self, conn: TConn, _sock: object) -> None:
        self._gather(conn, registered=True)

    def _gather(self, conn: TConn, registered: bool) -> None:
        buffer, _ = self.gathering[conn]
        if not buffer.ready():
            try:
                while len(buffer.data) < buffer.limit:
                    data = conn.sock.recv(RECV_SIZE)
                    if not data:
                        self._drop(conn, answer=False)
                        return
                    buffer.feed(data)
            except BlockingIOError:
                pass
            except OSError:
                self._drop(conn, answer=False)
                return
        if buffer.ready():
            self._dispatch(conn, registered)
            return
        if buffer.wants_continue:
            buffer.wants_continue = False
            self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        if not registered:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _dispatch(self, conn: TConn, registered: bool) -> None:
        buffer, _ = self.gathering.pop(conn)
        if registered:
            self.poller.unregister(conn.sock)
        conn.prefetched = bytes(buffer.data)
        conn.gathered = True
        conn.data_ready = True
        self.enqueue_req(conn)

    def handle(self, conn: TConn) -> Any:
        """Run the request in a thread, starting from the bytes already gathered."""
        prefetched = conn.__dict__.pop("prefetched", b"")
        if prefetched:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(prefetched)
        return super().handle(conn)

    def murder_pending(self) -> None:
        """Also answer 408 to requests past their deadline (all of them when stopping)."""
        super().murder_pending()
        now = time.monotonic()
        for conn, (buffer, deadline) in list(self.gathering.items()):
            if deadline <= now or not self.alive:
                self._drop(conn, answer=bool(buffer.data.strip()) and self.alive)

    def _drop(self, conn: TConn, answer: bool) -> None:
        self.gathering.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        if answer:
            self._send(conn, TIMEOUT_RESPONSE)
        self.nr_conns -= 1
        conn.close()

    @staticmethod
    def _send(conn: TConn, data: bytes) -> None:
        try:
            conn.sock.send(data)  # small enough for an empty socket buffer
        except OSError:
            pass


class _TimedInput:
    """``wsgi.input`` whose socket timeout becomes a 408 instead of a 500."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        try:
            return method(*args)
        except TimeoutError:
            raise RequestTimeout("The request body stopped arriving.") from None

    def read(self, *args: Any) -> bytes:
        return self._call(self._stream.read, *args)  # type: ignore[no-any-return]

    def readline(self, *args: Any) -> bytes:
        return self._call(self._stream.readline, *args)  # type: ignore[no-any-return]

    def readlines(self, *args: Any) -> list[bytes]:
        return self._call(self._stream.readlines, *args)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class ReadDeadline:
    """WSGI middleware: under gunicorn, every socket read and write has a deadline.

    A body larger than `HOLD_LIMIT` is read by the thread; if it stops arriving the
    read times out and the request is answered 408 instead of holding the thread.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Set the socket timeout, wrap the body, call the app."""
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(self.seconds)
            environ["wsgi.input"] = _TimedInput(environ["wsgi.input"])
        return self.app(environ, start_response)
