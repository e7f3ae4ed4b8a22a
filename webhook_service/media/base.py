"""The media interface every engine implements, and its errors.

Modelled on Django's ``Storage``: callers name an output by our own job id and
output index and never see a path, a key or a client.  A download goes through a
`PartialObject` that appears under its final name only when whole.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class MediaError(OSError):
    """Base of the media errors; an OSError so a failed write is handled like a disk error."""


class MediaUnavailable(MediaError):
    """The storage cannot be reached or used; the message is one readable line."""


class MediaMissing(MediaError):
    """The output is not in the storage."""


def relative_name(job_id: str, index: int) -> str:
    """Return the name of output ``index`` of ``job_id`` inside any storage."""
    if not JOB_ID.match(job_id):
        raise ValueError(f"not one of our job ids: {job_id!r}")
    return f"{job_id}/{int(index)}.mp4"


@dataclass(frozen=True)
class Served:
    """How to hand an output to a client: exactly one of the two is set."""

    path: Path | None = None
    """A whole file on this machine, to send with Range support."""
    url: str | None = None
    """A short-lived URL that needs no credentials and honours Range, to redirect to."""


class PartialObject(ABC):
    """An output being written: append and hash, then commit atomically or discard."""

    size: int
    """Bytes written so far."""

    @property
    @abstractmethod
    def sha256(self) -> str:
        """The hex digest of what was written so far."""

    @abstractmethod
    def write(self, chunk: bytes) -> None:
        """Append bytes, hashing them on the way (another thread may read ``chunk`` later)."""

    @abstractmethod
    def restart(self) -> None:
        """Drop everything written; the next bytes start the object again."""

    @abstractmethod
    def commit(self) -> None:
        """Make the object appear under its final name, whole, in one step."""

    @abstractmethod
    def discard(self) -> None:
        """Remove everything this object wrote; never raises, safe to call twice."""


class MediaStorage(ABC):
    """Where downloaded outputs live."""

    @abstractmethod
    def describe(self) -> str:
        """A short description for log lines (never a secret)."""

    @abstractmethod
    def check(self) -> None:
        """Raise `MediaUnavailable` with one readable line if the storage cannot be used."""

    def name(self, job_id: str, index: int) -> str:
        """The output's name relative to the storage, for the record."""
        return relative_name(job_id, index)

    @abstractmethod
    def open_partial(self, job_id: str, index: int, fence: int) -> PartialObject:
        """Start writing output ``index`` of ``job_id`` for the claim holding ``fence``."""

    @abstractmethod
    def remove_stale(self, job_id: str, index: int) -> None:
        """Remove what earlier claims on this output left half-written."""

    @abstractmethod
    def exists(self, job_id: str, index: int) -> bool:
        """Whether the whole output is stored."""

    @abstractmethod
    def open(self, job_id: str, index: int) -> IO[bytes]:
        """Open the stored output for reading; `MediaMissing` if it is not there."""

    @abstractmethod
    def serve(self, job_id: str, index: int) -> Served:
        """Say how a client gets the output's bytes (see `send_video`)."""
