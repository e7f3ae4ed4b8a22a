"""One delivery attempt of a notification: a POST to the client's URL, vetted and pinned.

`deliver` never raises for anything the receiver or the network does; it returns an `Attempt`
that says what happened. Its guarantees, each a defence against a hostile or broken receiver:

- the URL is vetted again (`addresses.vet_notify_url`) right before the attempt, and the
  connection goes to one of the addresses just vetted: the host name is never resolved a second
  time, so DNS rebinding between the check and the connection gets nowhere. The request still
  names the host (``Host`` header, TLS SNI) and TLS verifies the certificate against it;
- redirects are never followed (a 3xx is a failed attempt), and no proxy from the environment
  is used, since a proxy would make its own, unvetted, connection;
- the whole attempt, name lookup to last byte, ends by one deadline (``timeout``): every
  socket operation waits only for what is left of it, so a receiver that trickles one byte a second
  cannot hold a worker any longer than one that never answers;
- at most `MAX_ANSWER_BYTES` of the answer are read, only to quote them in the error.

Exceptions inside, for reference (all caught here)::

    NotifyURLError (addresses)         refused or unresolvable URL → Attempt(error=...)
    httpx.TimeoutException             the deadline passed → Attempt(error="timed out ...")
    httpx.TransportError               refused, reset, closed, TLS failure → Attempt(error=...)
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from ..addresses import NotifyURLError, Resolver, vet_notify_url
from ..retry_after import parse_retry_after

DEFAULT_TIMEOUT_SECONDS = 15.0
MAX_ANSWER_BYTES = 1024
USER_AGENT = "webhook-service-notifications/1"


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt came to.

    ``status_code`` is None when no answer arrived (``error`` says why). ``gone`` (a 410)
    means stop retrying for good. ``retry_after`` is the receiver's ``Retry-After`` in seconds.
    """

    status_code: int | None
    error: str | None
    retry_after: float | None
    gone: bool

    @property
    def delivered(self) -> bool:
        """True when the receiver answered 2xx: the notification is done."""
        return self.status_code is not None and 200 <= self.status_code < 300


def deliver(
    url: str,
    headers: dict[str, str],
    body: bytes,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    allow_private: bool,
    allow_http: bool,
    resolve: Resolver = socket.getaddrinfo,
    ssl_context: ssl.SSLContext | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> Attempt:
    """POST ``body`` with ``headers`` (the signature's) to ``url``: one attempt, never raising."""
    deadline = clock() + timeout
    try:
        vetted = vet_notify_url(
            url,
            allow_http=allow_http,
            allow_private=allow_private,
            resolve=_within(resolve, deadline, clock),
        )
    except NotifyURLError as exc:
        if clock() >= deadline:
            return Attempt(None, f"timed out after {timeout:g} s resolving the host", None, False)
        return Attempt(None, f"refused: {exc}", None, gone=False)
    backend = _PinnedBackend(vetted.host, vetted.addresses, deadline, clock)
    transport = _PinnedTransport(backend, ssl_context or httpx.create_ssl_context())
    sent = {
        **headers,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Accept-Encoding": "identity",
    }
    try:
        with (
            httpx.Client(
                transport=transport, follow_redirects=False, timeout=timeout, trust_env=False
            ) as client,
            client.stream("POST", vetted.url, content=body, headers=sent) as response,
        ):
            excerpt = _read_some(response)
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("Retry-After"), wall_clock())
    except httpx.TimeoutException:
        return Attempt(None, f"timed out after {timeout:g} s", None, gone=False)
    except httpx.HTTPError as exc:
        detail = f"{_kind(exc)}: {exc}" if str(exc) else _kind(exc)
        return Attempt(None, detail[:500], None, gone=False)
    if 200 <= status < 300:
        return Attempt(status, None, None, gone=False)
    error = f"answered {status}"
    if 300 <= status < 400:
        error += " (redirects are not followed)"
    if excerpt:
        error += f": {excerpt}"
    return Attempt(status, error, retry_after, gone=status == 410)


def _within(resolve: Resolver, deadline: float, clock: Callable[[], float]) -> Resolver:
    """``resolve`` that gives up at ``deadline``: a name lookup cannot block without end.

    The lookup runs in a daemon thread; one that outlives the deadline is abandoned and ends
    when the system resolver's own timeout does.
    """

    def bounded(*args: Any, **kwargs: Any) -> Sequence[tuple[Any, ...]]:
        answer: Future[Sequence[tuple[Any, ...]]] = Future()

        def run() -> None:
            try:
                answer.set_result(resolve(*args, **kwargs))
            except BaseException as exc:  # handed to the waiting caller
                answer.set_exception(exc)

        threading.Thread(target=run, name="notify-resolve", daemon=True).start()
        try:
            return answer.result(timeout=max(0.0, deadline - clock()))
        except TimeoutError:  # concurrent.futures' is the builtin one since 3.11
            raise TimeoutError("name lookup timed out") from None

    return bounded


def _read_some(response: httpx.Response) -> str:
    """Up to MAX_ANSWER_BYTES of the answer, as text; a failure after the status is ignored."""
    data = b""
    with contextlib.suppress(httpx.HTTPError):
        for chunk in response.iter_raw():
            data += chunk
            if len(data) >= MAX_ANSWER_BYTES:
                break
    text = data[:MAX_ANSWER_BYTES].decode("utf-8", "replace")
    return " ".join(text.split())[:200]


def _kind(exc: Exception) -> str:
    """A short name for a transport failure."""
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed without a valid answer"
    return "request failed"


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects only to the vetted addresses of the one host, within the attempt's deadline."""

    def __init__(
        self, host: str, addresses: tuple[str, ...], deadline: float, clock: Callable[[], float]
    ) -> None:
        self._host, self._addresses = host, addresses
        self._deadline, self._clock = deadline, clock
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if host.lower().strip("[]") != self._host:
            raise httpcore.ConnectError(f"refusing to connect to unvetted host {host}")
        failure: Exception = httpcore.ConnectError("no address to connect to")
        for address in self._addresses:
            left = _left(self._deadline, self._clock, httpcore.ConnectTimeout)
            try:
                stream = self._inner.connect_tcp(
                    address, port, timeout=left, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self._deadline, self._clock)
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("notifications never use a unix socket")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    """A stream whose every operation waits at most for what is left of the deadline."""

    def __init__(
        self, inner: httpcore.NetworkStream, deadline: float, clock: Callable[[], float]
    ) -> None:
        self._inner, self._deadline, self._clock = inner, deadline, clock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(self._deadline, self._clock, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(self._deadline, self._clock, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(self._deadline, self._clock, httpcore.ConnectTimeout)
        inner = self._inner.start_tls(ssl_context, server_hostname, left)
        return _DeadlineStream(inner, self._deadline, self._clock)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _left(deadline: float, clock: Callable[[], float], timeout: type[Exception]) -> float:
    """Seconds until ``deadline``; raise ``timeout`` when it has passed."""
    left = deadline - clock()
    if left <= 0:
        raise timeout("the attempt's deadline passed")
    return left


# httpcore's exceptions and the httpx ones callers catch, most specific first.
_MAPPED: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.NetworkError, httpx.NetworkError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """Re-raise httpcore's exceptions as the matching httpx ones."""
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise _translate(exc) from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise _translate(exc) from exc


def _translate(exc: Exception) -> httpx.HTTPError:
    for source, target in _MAPPED:
        if isinstance(exc, source):
            return target(str(exc))
    return httpx.TransportError(str(exc))


class _PinnedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool that uses `_PinnedBackend` for every socket."""

    def __init__(self, backend: httpcore.NetworkBackend, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, network_backend=backend, max_connections=1, retries=0
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]
            extensions=request.extensions,
        )
        with _httpx_errors():
            core_response = self._pool.handle_request(core_request)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_AnswerStream(core_response),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class _AnswerStream(httpx.SyncByteStream):
    """The answer's body, with httpcore's exceptions turned into httpx's."""

    def __init__(self, response: httpcore.Response) -> None:
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._response.iter_stream()

    def close(self) -> None:
        with _httpx_errors():
            self._response.close()
