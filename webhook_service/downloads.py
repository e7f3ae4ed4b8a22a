"""Fetch one output from ModelGates into a PartialFile, verified and resumable.

The URL is built from our own record (upstream id + index), never taken from an
event.  A cut connection resumes with ``Range`` when upstream answers 206 with a
matching ``Content-Range``; a 200 to a range request starts over.  A body shorter
or longer than announced is never accepted.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from .media import PartialFile
from .modelgates import ModelGatesClient, ModelGatesError, ServerError, TransportError

RESUMES_PER_ATTEMPT = 3
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadAborted(Exception):
    """The worker is shutting down or lost its claim; nothing is recorded."""


class BodyMismatch(ServerError):
    """The body did not match what its headers announced."""

    def __init__(self, message: str) -> None:
        super().__init__(502, message)


def fetch(
    client: ModelGatesClient,
    upstream_id: str,
    index: int,
    target: PartialFile,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """Download the whole output into ``target`` or raise; resumes inside one attempt."""
    expected_total: int | None = None
    for resume in range(RESUMES_PER_ATTEMPT + 1):
        start = target.size
        try:
            with client.stream_content(upstream_id, index, start=start) as response:
                expected_total = _position(response, target, start, expected_total)
                # Chunks as they arrive: a re-chunking buffer would lose its tail on a cut.
                for chunk in response.iter_raw():
                    if not keep_going():
                        raise DownloadAborted("download abandoned")
                    target.write(chunk)
                    if expected_total is not None and target.size > expected_total:
                        raise BodyMismatch("body is longer than its Content-Length")
        except (TransportError, httpx.TransportError) as error:
            # Cut short: resume from what we have, but only if this round made progress.
            if resume == RESUMES_PER_ATTEMPT or target.size == start:
                raise _as_model_error(error) from error
            continue
        except BodyMismatch:
            target.restart()
            raise
        if expected_total is not None and target.size != expected_total:
            if resume == RESUMES_PER_ATTEMPT:
                raise BodyMismatch(f"body ended at {target.size} of {expected_total} bytes")
            continue
        return


def _position(
    response: httpx.Response, target: PartialFile, start: int, total: int | None
) -> int | None:
    """Check a (partial) answer against what we hold; return the full size if known."""
    length = response.headers.get("Content-Length")
    if response.status_code == 206 and start:
        match = CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != start:
            raise BodyMismatch("206 answer with a Content-Range that does not match")
        full = None if match.group(3) == "*" else int(match.group(3))
        if total is not None and full is not None and full != total:
            raise BodyMismatch("the file changed size between requests")
        return full if full is not None else total  # "/*" must not forget a known size
    if start:
        target.restart()  # a 200 to a range request: start over
    return int(length) if length is not None and length.isdigit() else None


def _as_model_error(error: Exception) -> ModelGatesError:
    if isinstance(error, ModelGatesError):
        return error
    return TransportError(f"{type(error).__name__}: {error}", sent=True)
