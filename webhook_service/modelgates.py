"""ModelGates video API client (httpx), its exceptions and its retry policy.

Exceptions, by what a caller can conclude::

    ModelGatesError
     ├── TransportError          no HTTP answer came back
     │     .sent = False         the request never left (connection refused…): safe to retry
     │     .sent = True          it may have arrived (timeout, reset): a POST is ambiguous
     └── APIError                upstream answered with an error envelope; .status, .message,
           │                     .metadata, .retry_after
           ├── RequestRefused    4xx: upstream will not do it (nothing was created)
           │     └── RateLimited 429
           └── ServerError       5xx: upstream failed (a POST may have created the job)

GETs retry on transport errors, 429 and 5xx (`retry_delay`, with backoff, jitter and
`Retry-After`); `POST /videos` is never retried: upstream has no idempotency key, so
a retry of a request that may have arrived can charge twice.

JSON answers are read up to ``MAX_JSON_BYTES`` and parsed as signed callbacks are
(``strict_json.loads(strict=False)``): a body that is not JSON, not an object, nested
too deeply or too large is a ``ServerError`` (502).  Numbers come through as Python
reads them (``NaN``, ``1e999``, ``10**400``) and are clamped where read
(``jobs.Observation``): refusing the whole answer for one odd number would lose the
job id of an accepted submit, or keep a finished job from ever completing by poll.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
from httpcore._sync import http11

from . import strict_json
from .config import Settings
from .retry_after import parse_retry_after

# httpcore reads sockets 64 KiB at a time.  Outputs are gigabytes: bigger reads made a
# 1 GiB download about twice as fast here (benchmarks/download.py).  256 KiB is as fast
# as 1 MiB and keeps the worker's peak RSS 6 MiB lower.  httpcore has no public setting
# for it; should the attribute ever go away this line changes nothing.
http11.HTTP11Connection.READ_NUM_BYTES = 256 * 1024

DEFAULT_TIMEOUT_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 5.0
MAX_RETRIES = 2
MAX_INLINE_WAIT = 5.0  # longer Retry-After values go back to the caller to reschedule
MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_JSON_BYTES = 4 * 1024 * 1024  # a job answer is a few KiB; a bigger one is not ours
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 1000
MAX_RETRY_AFTER = 86400.0


class ModelGatesError(Exception):
    """Anything that went wrong talking to ModelGates."""


class TransportError(ModelGatesError):
    """No HTTP answer; ``sent`` tells whether the request may have reached upstream."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class APIError(ModelGatesError):
    """Upstream answered with an error status."""

    def __init__(
        self,
        status: int,
        message: str,
        metadata: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"ModelGates answered {status}: {message}")
        self.status = status
        self.message = message
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after


class RequestRefused(APIError):
    """A 4xx answer: upstream refused the request and created nothing."""


class RateLimited(RequestRefused):
    """A 429 answer."""


class ServerError(APIError):
    """A 5xx answer."""


def retry_delay(
    method: str,
    attempt: int,
    error: ModelGatesError,
    rand: Callable[[], float] = random.random,
    base: float = 0.5,
    cap: float = 30.0,
) -> float | None:
    """Return seconds to wait before retry ``attempt`` (1-based), or None to give up.

    Only GETs are retried: on transport errors, 429 and 5xx, honouring
    ``Retry-After``, else with exponential backoff and jitter (``rand`` is
    injectable so tests can pin it).  A POST is never retried.
    """
    if attempt > MAX_RETRIES or method.upper() != "GET":
        return None
    if isinstance(error, APIError):
        if not (error.status == 429 or error.status >= 500):
            return None
        if error.retry_after is not None:
            return error.retry_after
    elif not isinstance(error, TransportError):
        return None
    return backoff(attempt, rand, base, cap)


def backoff(attempt: int, rand: Callable[[], float], base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + rand() * delay / 2


def error_from_response(response: httpx.Response, body: bytes | None = None) -> APIError:
    """Turn an error answer (envelope or not) into the matching exception.

    ``body`` is the (possibly cut short) body when the response was streamed.
    """
    message, metadata = response.reason_phrase or "error", None
    try:
        envelope = strict_json.loads(response.content if body is None else body, strict=False)
    except ValueError:
        envelope = None
    if isinstance(envelope, dict) and isinstance(envelope.get("error"), dict):
        found = envelope["error"].get("message")
        if isinstance(found, str) and found:
            message = found[:MAX_MESSAGE_CHARS]
        if isinstance(envelope["error"].get("metadata"), dict):
            metadata = envelope["error"]["metadata"]
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
    if retry_after is not None:
        retry_after = min(retry_after, MAX_RETRY_AFTER)
    kind: type[APIError] = ServerError
    if status == 429:
        kind = RateLimited
    elif status < 500:
        kind = RequestRefused
    return kind(status, message, metadata, retry_after)


class ModelGatesClient:
    """A thin client for the four video endpoints."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        referer: str | None = None,
        title: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        max_inline_wait: float = MAX_INLINE_WAIT,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}", "X-OpenRouter-Categories": "video-gen"}
        if referer:
            headers["HTTP-Referer"] = referer
        if title:
            headers["X-OpenRouter-Title"] = title
            headers["X-ModelGates-Title"] = title
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_SECONDS)),
            transport=transport,
            follow_redirects=False,
        )
        self._sleep = sleep
        self._max_inline_wait = max_inline_wait

    def __repr__(self) -> str:
        return f"<ModelGatesClient {self.base_url}>"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ModelGatesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /videos; never retried once it may have been sent."""
        return self._json("POST", "/videos", json=dict(body))

    def get_job(self, upstream_id: str) -> dict[str, Any]:
        """GET /videos/{id}: the job object."""
        return self._json("GET", f"/videos/{_segment(upstream_id)}")

    def list_models(self) -> list[dict[str, Any]]:
        """GET /videos/models: the ``data`` list."""
        data = self._json("GET", "/videos/models").get("data")
        if not isinstance(data, list):
            raise ServerError(502, "model list has no data array")
        return data

    @contextmanager
    def stream_content(
        self, upstream_id: str, index: int, start: int = 0, *, ranged: bool = False
    ) -> Iterator[httpx.Response]:
        """Open GET /videos/{id}/content?index=N as a stream of the bytes as stored.

        Asks for ``Accept-Encoding: identity`` (what we store is what we hash, so a
        body is never decoded), and for ``Range: bytes=<start>-`` when ``start`` is
        not 0 or ``ranged`` is set.  Yields any answer below 400 that is not a
        redirect: judging whether it proves the whole file is the caller's job.
        Error answers raise.  Redirects are followed only to the same origin, so the
        key never travels elsewhere; anything else about them is a ``ServerError``.
        """
        url = f"{self.base_url}/videos/{_segment(upstream_id)}/content?index={int(index)}"
        headers = {"Accept-Encoding": "identity"}
        if start or ranged:
            headers["Range"] = f"bytes={int(start)}-"
        for _ in range(MAX_REDIRECTS + 1):
            try:
                request = self._http.build_request("GET", url, headers=headers)
            except (httpx.InvalidURL, ValueError) as exc:
                raise ServerError(502, f"content download redirected to a bad URL: {exc}") from None
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise _transport_error(exc) from exc
            try:
                location = response.headers.get("Location")
                if response.status_code in REDIRECTS and location is not None:
                    url = self._same_origin(url, location)
                    continue
                if response.status_code >= 400:
                    raise error_from_response(response, _read_some(response))
                yield response
                return
            finally:
                response.close()
        raise ServerError(502, "too many redirects on content download")

    def _same_origin(self, current: str, location: str) -> str:
        try:
            target = urljoin(current, location)
            same = _origin(target) == _origin(self.base_url)
        except ValueError:
            raise ServerError(502, "content download redirected to a bad URL") from None
        if not same:
            raise ServerError(502, "content download redirected to another origin; not followed")
        return target

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(method, path, **kwargs)
            except ModelGatesError as error:
                delay = retry_delay(method, attempt, error)
                if delay is None or delay > self._max_inline_wait:
                    raise
                self._sleep(delay)

    def _once(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        request = self._http.build_request(method, self.base_url + path, **kwargs)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _transport_error(exc) from exc
        try:
            if response.status_code >= 400 or response.is_redirect:
                raise error_from_response(response, _read_some(response))
            raw = _read_some(response, MAX_JSON_BYTES + 1)
        finally:
            response.close()
        if len(raw) > MAX_JSON_BYTES:
            raise ServerError(502, f"answer is larger than {MAX_JSON_BYTES} bytes")
        try:
            payload = strict_json.loads(raw, strict=False)
        except strict_json.JSONRefused as refused:
            raise ServerError(502, f"answer refused: {refused.message}") from None
        if not isinstance(payload, dict):
            raise ServerError(502, "answer is not a JSON object")
        return payload


def _transport_error(exc: httpx.TransportError) -> TransportError:
    # Only a failure to connect proves the request never left this machine.
    sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return TransportError(f"{type(exc).__name__}: {exc}", sent=sent)


def _read_some(response: httpx.Response, limit: int = MAX_ERROR_BODY_BYTES) -> bytes:
    """Read at most about ``limit`` bytes of a streamed body (decoded as sent)."""
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= limit:
                break
    except httpx.TransportError as exc:
        raise _transport_error(exc) from exc
    except httpx.DecodingError:
        raise ServerError(502, "answer body cannot be decoded") from None
    return bytes(body)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _segment(value: str) -> str:
    """Quote an upstream id for use as one path segment."""
    return quote(value, safe="")


def client_for(settings: Settings) -> ModelGatesClient:
    """The upstream client the configuration describes (the API key must be set)."""
    assert settings.modelgates_api_key is not None
    return ModelGatesClient(
        settings.modelgates_base_url,
        settings.modelgates_api_key,
        referer=settings.public_base_url,
        title=settings.app_title,
        timeout=settings.upstream_timeout_seconds,
    )
