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

Large uploads are the one case where a thread waits on a client, so they get a
bulkhead: at most ``threads - 1`` threads of a worker read large bodies at once.
Further large requests wait in the main loop, no longer read (their deadline
still running), until one of those threads is free; small requests and
``/healthz`` always find the last thread.

Everything gunicorn itself answers (a header block too large, a malformed request
line, a chunked body that breaks its framing) carries the service's JSON error
body, and any answer given before the request body was read says
``Connection: close``, since the connection is then closed rather than reused.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.http.body import Body, ChunkedReader, EOFReader, LengthReader
from gunicorn.http.errors import NoMoreData, ParseException
from gunicorn.http.wsgi import Response
from gunicorn.workers.gthread import TConn, ThreadWorker
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, RequestTimeout

HOLD_LIMIT = 1024 * 1024
RECV_SIZE = 64 * 1024
HEX_DIGITS = b"0123456789abcdefABCDEF"
# Unread body a kept-alive connection may still carry: gunicorn drains up to 64 KiB
# of it before the next request and closes the connection beyond that.
DRAIN_LIMIT = 32 * 1024
# How long, and how much, a closing connection's late request bytes are read and discarded.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024

# What gunicorn's own refusals say, by status (the status itself is gunicorn's):
# reason phrase, error code, message.
ANSWERS = {
    400: ("Bad Request", "bad_request", "The request is not well-formed HTTP."),
    403: ("Forbidden", "forbidden", "The request is forbidden."),
    408: ("Request Timeout", "request_timeout", "The request was not received in time."),
    414: ("URI Too Long", "uri_too_long", "The request target is too long."),
    417: ("Expectation Failed", "expectation_failed", "The request's expectation cannot be met."),
    431: (
        "Request Header Fields Too Large",
        "request_header_fields_too_large",
        "The request's header fields are too large.",
    ),
    500: ("Internal Server Error", "internal_error", "The service failed to handle the request."),
    501: (
        "Not Implemented",
        "not_implemented",
        "The request uses a transfer coding this service does not support.",
    ),
}


def error_answer(status: int) -> bytes:
    """A complete HTTP/1.1 answer with the service's JSON error body, closing the connection."""
    try:
        reason, code, message = ANSWERS[status]
    except KeyError:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        code = re.sub(r"[^a-z]+", "_", reason.lower()).strip("_") or "error"
        message = f"{reason}."
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


TIMEOUT_RESPONSE = error_answer(408)
BAD_REQUEST_RESPONSE = error_answer(400)


class RequestBuffer:
    """Bytes of one HTTP/1.x request as they arrive, and whether it is all here.

    It only has to tell "wait" from "ready"; it never rejects.  Anything it cannot
    make sense of is "ready", so gunicorn's parser answers it as it always does.
    """

    def __init__(self, data: bytes = b"", limit: int = HOLD_LIMIT) -> None:
        self.data = bytearray(data)
        self.limit = limit
        self.wants_continue = False
        self.junk = False  # not an HTTP request: answered 400 without a thread
        self._body_start = -1
        self._length: int | None = None
        self._chunked = False
        self._chunk_pos = 0
        self._done = False

    def feed(self, data: bytes) -> None:
        """Add bytes read from the socket."""
        self.data += data

    def ready(self) -> bool:
        """Whether the request can go to a thread: all here, or the hold limit reached."""
        return self.complete() or len(self.data) >= self.limit

    def complete(self) -> bool:
        """Whether the thread will not wait on the client: all here, or for the parser now."""
        if self._done:
            return True
        if self._body_start < 0 and not self._parse_head():
            return self._done
        if self._chunked:
            self._done = self._chunks_complete()
        else:
            self._done = len(self.data) - self._body_start >= (self._length or 0)
        return self._done

    def large(self) -> bool:
        """Whether a thread would have to read the rest of the body from the client."""
        return len(self.data) >= self.limit and not self.complete() and self._body_start >= 0

    def _parse_head(self) -> bool:
        start = 0
        while self.data.startswith(b"\r\n", start):
            start += 2
        if len(self.data) > start and not (65 <= self.data[start] <= 90):
            # No method starts so (gunicorn refuses it), but its parser would wait
            # for a line end first: a TLS handshake, for one, never sends one.
            self._done = self.junk = True
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
            if not size_text or size_text.strip(HEX_DIGITS):
                return True  # not a chunk size: let the parser answer it
            size = int(size_text, 16)
            if size == 0:
                trailer = line_end + 2
                return data.startswith(b"\r\n", trailer) or data.find(b"\r\n\r\n", trailer) >= 0
            next_pos = line_end + 2 + size + 2
            if next_pos > len(data):
                return False
            if data[next_pos - 2 : next_pos] != b"\r\n":
                return True  # a chunk without its CRLF: let the parser answer it
            self._chunk_pos = next_pos


class BufferingWorker(ThreadWorker):
    """gthread, but a request reaches a thread only once it has all arrived.

    A large request (`HOLD_LIMIT` gathered, more to come) takes one of
    ``large_slots`` (``threads - 1``); without a free slot it waits in `waiting`,
    unread, until a large request finishes or its deadline passes.
    """

    read_timeout = 30.0
    wsgi: Callable[..., Iterable[bytes]]

    def init_process(self) -> None:
        """Read the deadline from the configuration, then run as gthread does."""
        from .config import load_settings

        self.read_timeout = load_settings().request_read_timeout_seconds
        self.gathering: dict[TConn, tuple[RequestBuffer, float]] = {}
        self.large_slots = max(1, self.cfg.threads - 1)
        self.large_busy = 0
        self.waiting: deque[TConn] = deque()
        self.lingering: dict[TConn, float] = {}
        super().init_process()

    def load_wsgi(self) -> None:
        """Load the app, wrapped so that an answer given before the body was read closes."""
        super().load_wsgi()
        self.wsgi = CloseUnlessDrained(self.wsgi)

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
                        self._drop(conn, answer=None)
                        return
                    buffer.feed(data)
            except BlockingIOError:
                pass
            except OSError:
                self._drop(conn, answer=None)
                return
        if buffer.ready():
            if buffer.junk:
                self._drop(conn, answer=BAD_REQUEST_RESPONSE)
            elif not buffer.large():
                self._dispatch(conn, registered)
            elif self.large_busy < self.large_slots:
                self._dispatch(conn, registered, large=True)
            else:
                # Every slot is reading a large body: stop reading this one for now.
                if registered:
                    self.poller.unregister(conn.sock)
                self.waiting.append(conn)
            return
        if buffer.wants_continue:
            buffer.wants_continue = False
            self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        if not registered:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _dispatch(self, conn: TConn, registered: bool, large: bool = False) -> None:
        buffer, _ = self.gathering.pop(conn)
        if registered:
            self.poller.unregister(conn.sock)
        if large:
            self.large_busy += 1
            conn.large = True
        conn.prefetched = bytes(buffer.data)
        conn.gathered = True
        conn.data_ready = True
        self.enqueue_req(conn)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        """As gthread does, but closing without blocking the main loop.

        A large request's slot goes to the next one waiting.
        """
        large = conn.__dict__.pop("large", False)  # before its next request may be gathered
        try:
            if fs.cancelled() or fs.exception() is not None or not fs.result():
                self._linger(conn)
            else:
                super().finish_request(conn, fs)
        finally:
            if large:
                self.large_busy -= 1
                while self.waiting and self.large_busy < self.large_slots:
                    self._dispatch(self.waiting.popleft(), registered=False, large=True)

    def handle(self, conn: TConn) -> Any:
        """Run the request in a thread, starting from the bytes already gathered."""
        prefetched = conn.__dict__.pop("prefetched", b"")
        if prefetched:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(prefetched)
        return super().handle(conn)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer as gunicorn would (status, logs), but with the service's JSON error body."""
        answer = _CapturedAnswer()
        super().handle_error(req, answer, addr, exc)
        try:
            util.write_nonblock(client, error_answer(answer.status()))
        except (OSError, ValueError):
            self.log.debug("Failed to send error message.")

    def murder_pending(self) -> None:
        """Also answer 408 to requests past their deadline (all of them when stopping).

        Connections that were answered and are closing are closed for good once
        their linger is over.
        """
        super().murder_pending()
        now = time.monotonic()
        for conn, (buffer, deadline) in list(self.gathering.items()):
            if deadline <= now or not self.alive:
                answered = bool(buffer.data.strip()) and self.alive
                self._drop(conn, answer=TIMEOUT_RESPONSE if answered else None)
        for conn, until in list(self.lingering.items()):
            if until <= now:
                self._close(conn)

    def _drop(self, conn: TConn, answer: bytes | None) -> None:
        """Stop gathering; send ``answer`` if any, then close."""
        self.gathering.pop(conn, None)
        if conn in self.waiting:
            self.waiting.remove(conn)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        if answer is None:
            self._close(conn)
            return
        self._send(conn, answer)
        self._linger(conn)

    def _linger(self, conn: TConn) -> None:
        """Close after an answer, on the main loop and without waiting on the client.

        Closing a socket with request bytes still unread makes the kernel reset the
        connection, and the client may lose the answer.  So the write side is shut
        first, and what the client still sends is read and discarded until it
        closes, for `LINGER_SECONDS` or `LINGER_BYTES` at most (gunicorn does the
        same, but blocking).
        """
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_linger, conn))
        except (OSError, ValueError, KeyError):
            self._close(conn)
            return
        conn.drained = 0
        self.lingering[conn] = time.monotonic() + LINGER_SECONDS

    def _on_linger(self, conn: TConn, _sock: object) -> None:
        try:
            while conn.drained < LINGER_BYTES:
                data = conn.sock.recv(RECV_SIZE)
                if not data:
                    break
                conn.drained += len(data)
            else:
                self._close(conn)
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._close(conn)

    def _close(self, conn: TConn) -> None:
        if self.lingering.pop(conn, None) is not None:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
        self.nr_conns -= 1
        conn.close()

    @staticmethod
    def _send(conn: TConn, data: bytes) -> None:
        try:
            conn.sock.send(data)  # small enough for an empty socket buffer
        except OSError:
            pass


class _CapturedAnswer:
    """Stands in for the client socket while gunicorn writes its HTML error answer."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data

    def status(self) -> int:
        """The captured answer's status (500 if there is none)."""
        parts = self.data.partition(b"\r\n")[0].split(b" ")
        if len(parts) > 1 and parts[1].isdigit() and len(parts[1]) == 3:
            return int(parts[1])
        return 500


class CloseUnlessDrained:
    """WSGI wrapper: an answer given before the request body was read says it closes.

    gunicorn drains a little unread body to reuse the connection and closes it
    otherwise; the answer must say so (``Connection: close``) rather than promise
    a keep-alive it will not keep.  Every 413 closes, whatever was read.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Call the app, closing the connection when its answer leaves body unread."""
        body = environ.get("wsgi.input")
        response = getattr(start_response, "__self__", None)
        if not isinstance(body, Body) or not isinstance(response, Response):
            return self.app(environ, start_response)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if status.startswith("413") or not _drainable(body):
                response.force_close()
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def _drainable(body: Body) -> bool:
    """Whether what is left of ``body`` is known and small enough for gunicorn to drain."""
    if body.failed:
        return False
    left = body.buf.tell()
    reader = body.reader
    if isinstance(reader, LengthReader):
        return left + reader.length <= DRAIN_LIMIT
    if isinstance(reader, ChunkedReader):
        return reader.parser is None and left + reader.buf.tell() <= DRAIN_LIMIT
    if isinstance(reader, EOFReader):
        return reader.finished and left + reader.buf.tell() <= DRAIN_LIMIT
    return False


class _TimedInput:
    """``wsgi.input`` whose failures are the client's 4xx, never a 500.

    A socket timeout is a 408; a body that breaks its chunked framing or ends
    early is a 400.  A body without ``Content-Length`` (chunked) that goes on past
    ``limit`` is a 413: werkzeug stops reading at its limit and would hand the app
    a body cut short.
    """

    def __init__(self, stream: Any, limit: int | None = None) -> None:
        self._stream = stream
        self._left = limit

    def _call(self, method: Callable[..., bytes], *args: Any) -> bytes:
        try:
            data = method(*args)
        except TimeoutError:
            raise RequestTimeout("The request body stopped arriving.") from None
        except NoMoreData:
            raise BadRequest("The request body ended before its end.") from None
        except ParseException:
            raise BadRequest("The request body's chunked framing is malformed.") from None
        if self._left is not None:
            self._left -= len(data)
            if self._left < 0 or (self._left == 0 and self._more()):
                raise RequestEntityTooLarge()
        return data

    def _more(self) -> bool:
        left, self._left = self._left, None
        more = bool(self._call(self._stream.read, 1))
        self._left = left
        return more

    def read(self, *args: Any) -> bytes:
        return self._call(self._stream.read, *args)

    def readline(self, *args: Any) -> bytes:
        return self._call(self._stream.readline, *args)

    def readlines(self, *args: Any) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class ReadDeadline:
    """WSGI middleware: under gunicorn, every socket read and write has a deadline.

    A body larger than `HOLD_LIMIT` is read by the thread; if it stops arriving the
    read times out and the request is answered 408 instead of holding the thread.
    A body without ``Content-Length`` is limited to ``max_body`` bytes (413 beyond).
    """

    def __init__(
        self, app: Callable[..., Iterable[bytes]], seconds: float, max_body: int | None = None
    ) -> None:
        self.app = app
        self.seconds = seconds
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Set the socket timeout, wrap the body, call the app."""
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(self.seconds)
            limit = None if environ.get("CONTENT_LENGTH") else self.max_body
            environ["wsgi.input"] = _TimedInput(environ["wsgi.input"], limit)
        return self.app(environ, start_response)
