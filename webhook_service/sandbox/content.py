"""Deterministic output bytes of sandbox jobs.

An output is a *pattern* repeated up to its size: the sample MP4 itself (size 0 in
the settings), or a 1 MiB pseudo-random block derived from the job id and output
index (``shake_256``).  Streaming slices views of that block, so serving a GiB
allocates nothing, and the SHA-256 of a whole output is computed once and cached.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

BLOCK_SIZE = 1 << 20
SAMPLE_NAME = "sample.mp4"


@functools.cache
def sample_video() -> bytes:
    """Return the bundled 2-second 160x90 H.264 MP4."""
    return resources.files(__package__).joinpath(SAMPLE_NAME).read_bytes()


@functools.lru_cache(maxsize=16)
def _block(job_id: str, index: int) -> bytes:
    return hashlib.shake_256(f"sandbox-content:{job_id}:{index}".encode()).digest(BLOCK_SIZE)


@dataclass(frozen=True)
class Output:
    """One output of a job: ``content_size`` 0 means the sample MP4."""

    job_id: str
    index: int
    content_size: int

    @property
    def size(self) -> int:
        """Return the output's length in bytes."""
        return self.content_size or len(sample_video())

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[memoryview]:
        """Yield the bytes in ``[start, stop)`` as views of at most one pattern each."""
        source = _block(self.job_id, self.index) if self.content_size else sample_video()
        pattern = memoryview(source)
        end = self.size if stop is None else min(stop, self.size)
        position = start
        while position < end:
            offset = position % len(pattern)
            length = min(len(pattern) - offset, end - position)
            yield pattern[offset : offset + length]
            position += length

    def sha256(self) -> str:
        """Return the hex SHA-256 of the whole output (cached)."""
        return _sha256(self.job_id, self.index, self.content_size)


@functools.lru_cache(maxsize=4096)
def _sha256(job_id: str, index: int, content_size: int) -> str:
    digest = hashlib.sha256()
    for chunk in Output(job_id, index, content_size).chunks():
        digest.update(chunk)
    return digest.hexdigest()
