"""Fetch one output from ModelGates into a partial file, only when it is provably whole.

The URL is built from our own record (upstream id + index), never taken from an
event.  The request asks for ``Accept-Encoding: identity`` and the body is stored raw.
``fetch`` returns only when the bytes written are the exact, whole file, proved by
the answers' headers; otherwise it raises and the caller discards the target.

What proves a file (``_judge``):

- every answer: ``Content-Encoding`` absent or ``identity``; a ``Content-Type`` that is
  not a document (text, HTML, JSON, XML, multipart: an error page sent with 200);
- **200**: the body is the whole file.  Its length is ``Content-Length``, else the
  total an earlier answer announced.  With neither (chunked or close-delimited, no
  length) a lost tail would look like an end, so the answer is dropped unread and
  asked again with ``Range: bytes=0-``, whose 206 ``Content-Range`` carries the total;
- **206**: only to a request that asked for a range, with ``Content-Range: bytes
  S-E/T`` where S is the offset asked for, E = T - 1, T known (``*`` only when an
  earlier answer gave the total) and equal to any total announced before, and a
  ``Content-Length``, if sent, of E - S + 1;
- any other status (204, 3xx not followed, 416…), a body shorter or longer than
  proved, or an empty file: never accepted.

A cut connection resumes with ``Range`` from the bytes held, inside one attempt, as
long as each try makes progress.  Refusals are ``ServerError`` (502), so the worker
retries the download later with a fresh file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from .modelgates import ModelGatesClient, ModelGatesError, ServerError, TransportError

RESUMES_PER_ATTEMPT = 3
# Nineteen digits hold any real size; int() of a header thousands of digits long would raise.
CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)")
CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")
DOCUMENT_TYPES = re.compile(r"^\s*(text/|multipart/|[^;]*(html|json|xml)\b)", re.IGNORECASE)


class Target(Protocol):
    """Where the bytes go: a partial file that is committed or discarded by the caller."""

    @property
    def size(self) -> int: ...
    def write(self, chunk: bytes) -> None: ...
    def restart(self) -> None: ...


class DownloadAborted(Exception):
    """The worker is shutting down or lost its claim; nothing is recorded."""


class UnprovenDownload(ServerError):
    """The answer does not prove that it carries the exact, whole, unencoded file."""

    def __init__(self, message: str) -> None:
        super().__init__(502, message)


class BodyMismatch(UnprovenDownload):
    """The body did not match what its headers announced."""


@dataclass(frozen=True)
class _Verdict:
    """What one answer promises: ``end`` bytes held once its body is read."""

    end: int | None  # None: no proof yet, ask again with a range
    total: int | None


def fetch(
    client: ModelGatesClient,
    upstream_id: str,
    index: int,
    target: Target,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """Download the whole output into ``target`` or raise; resumes inside one attempt."""
    try:
        _fetch(client, upstream_id, index, target, keep_going)
    except UnprovenDownload:
        target.restart()  # never leave unproven bytes behind, whatever the caller does
        raise


def _fetch(
    client: ModelGatesClient,
    upstream_id: str,
    index: int,
    target: Target,
    keep_going: Callable[[], bool],
) -> None:
    total: int | None = None  # the file size, once an answer announced it
    ask_range = False
    for attempt in range(RESUMES_PER_ATTEMPT + 1):
        last = attempt == RESUMES_PER_ATTEMPT
        start = copied_from = target.size
        ranged = ask_range or start > 0
        try:
            with client.stream_content(upstream_id, index, start=start, ranged=ranged) as answer:
                verdict = _judge(answer, start, ranged, total, ask_range)
                total = verdict.total
                if verdict.end is None:
                    ask_range = True  # a length-less 200: ask for bytes=0- to learn the total
                    continue
                if answer.status_code == 200 and start:
                    target.restart()  # a 200 to a range request: the whole file again
                    copied_from = 0
                _copy(answer, target, verdict.end, keep_going)
        except (TransportError, httpx.TransportError) as error:
            # Cut short: resume from what we hold, but only if this try made progress.
            if last or target.size <= copied_from:
                raise _as_model_error(error) from error
            continue
        except httpx.HTTPError as error:
            raise UnprovenDownload(f"unreadable answer: {type(error).__name__}") from None
        if target.size == verdict.end:
            return
        if last:
            raise BodyMismatch(f"body ended at {target.size} of {verdict.end} bytes")
    raise UnprovenDownload("no answer proved the whole file")


def _copy(answer: httpx.Response, target: Target, end: int, keep_going: Callable[[], bool]) -> None:
    # Chunks as they arrive (a re-chunking buffer would lose its tail on a cut), raw.
    for chunk in answer.iter_raw():
        if not keep_going():
            raise DownloadAborted("download abandoned")
        if target.size + len(chunk) > end:
            raise BodyMismatch("body is longer than its headers announced")
        target.write(chunk)
    if _sent_past_the_body(answer):
        raise BodyMismatch("upstream sent more bytes than its Content-Length announced")


def _sent_past_the_body(answer: httpx.Response) -> bool:
    """Whether bytes already arrived after the body's announced end (best effort).

    HTTP framing stops a body at its ``Content-Length``; the client would take what
    follows for the next answer and drop it unseen.  A server that sends more than it
    announced does not know the file's length, so nothing it said proves the file.
    Only bytes already received are seen (the parser's buffer, not the socket).
    """
    layer: object = answer.stream
    for _ in range(8):  # httpx and httpcore wrap the HTTP/1.1 body stream a few times
        parser = getattr(getattr(layer, "_connection", None), "_h11_state", None)
        if parser is not None:
            trailing = getattr(parser, "trailing_data", None)
            return isinstance(trailing, tuple) and bool(trailing[0])
        layer = getattr(layer, "_stream", None) or getattr(layer, "_httpcore_stream", None)
    return False


def _judge(
    answer: httpx.Response, start: int, ranged: bool, total: int | None, probed: bool
) -> _Verdict:
    """Decide what ``answer`` proves, or raise ``UnprovenDownload``."""
    headers = answer.headers
    encodings = [e.strip().lower() for e in headers.get_list("Content-Encoding", split_commas=True)]
    if any(e not in ("", "identity") for e in encodings):
        raise UnprovenDownload(f"answer is encoded ({', '.join(encodings)}); asked for identity")
    content_type = headers.get("Content-Type", "")
    if DOCUMENT_TYPES.match(content_type):
        raise UnprovenDownload(f"answer is a document ({content_type[:80]}), not a video")
    length = _length(headers.get("Content-Length"))
    status = answer.status_code
    if status == 200:
        if length is None and total is None:
            if probed:
                raise UnprovenDownload("no Content-Length nor total: cannot prove a whole file")
            return _Verdict(None, None)
        size = length if length is not None else total
        assert size is not None
        _same_total(total, size)
        return _Verdict(_nonempty(size), size)
    if status == 206:
        if not ranged:
            raise UnprovenDownload("206 answer to a request that asked for no range")
        first, last, full = _content_range(headers.get("Content-Range"))
        if full is None:
            full = total
        if full is None:
            raise UnprovenDownload("206 answer whose Content-Range hides the total")
        _same_total(total, full)
        if first != start or last != full - 1:
            raise UnprovenDownload(
                f"206 answer with a Content-Range that does not match: "
                f"bytes {first}-{last}/{full} for bytes={start}-"
            )
        if length is not None and length != last - first + 1:
            raise UnprovenDownload("206 answer whose Content-Length disagrees with its range")
        return _Verdict(_nonempty(full), full)
    raise UnprovenDownload(f"answer {status} does not carry the file")


def _length(value: str | None) -> int | None:
    if value is None:
        return None
    if not CONTENT_LENGTH.fullmatch(value.strip()):
        raise UnprovenDownload(f"bad Content-Length: {value[:40]!r}")
    return int(value)


def _content_range(value: str | None) -> tuple[int, int, int | None]:
    match = CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        raise UnprovenDownload(f"206 answer with a bad Content-Range: {(value or '')[:80]!r}")
    first, last, full = match.groups()
    return int(first), int(last), None if full == "*" else int(full)


def _same_total(known: int | None, announced: int) -> None:
    if known is not None and known != announced:
        raise UnprovenDownload(f"the file changed size between answers: {known} then {announced}")


def _nonempty(size: int) -> int:
    if size == 0:
        raise UnprovenDownload("answer announces an empty file")
    return size


def _as_model_error(error: Exception) -> ModelGatesError:
    if isinstance(error, ModelGatesError):
        return error
    return TransportError(f"{type(error).__name__}: {error}", sent=True)
