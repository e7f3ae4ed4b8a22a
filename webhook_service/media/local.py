"""Downloaded videos on this machine's disk, under MEDIA_DIR, named only from our own ids.

A download is written to ``<job>/<index>.mp4.part-<fence>``, hashed as the bytes
arrive, fsynced, then renamed into place: a file under its final name is always
whole.  The fence in the temporary name keeps a stalled worker and the worker
that took its claim over from ever writing the same file.

The bytes are written by the thread that receives them and hashed on a second
thread (`Handoff`), a batch of reads at a time, so on two cores the hashing
overlaps receiving and writing.  Every `WRITEBACK_BYTES` the kernel is told to
start writing what arrived to the disk, so the fsync at commit finds little left
to do instead of a whole video.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import IO

from .base import MediaMissing, MediaStorage, MediaUnavailable, PartialObject, Served, relative_name
from .handoff import Handoff

log = logging.getLogger(__name__)

WRITEBACK_BYTES = 8 * 1024 * 1024
"""How many written bytes wait in the page cache before their writeback is started."""
HASH_BATCH_BYTES = 256 * 1024
"""Bytes handed to the hashing thread at once (a TLS read gives 16 KiB at most)."""


def output_path(media_dir: Path, job_id: str, index: int) -> Path:
    """Return where output ``index`` of our job ``job_id`` lives once complete."""
    return media_dir / job_id / f"{int(index)}.mp4"


class PartialFile(PartialObject):
    """A video being written: append, hash, then commit atomically into place."""

    def __init__(self, final: Path, fence: int) -> None:
        self.final = final
        self.path = final.with_name(f"{final.name}.part-{int(fence)}")
        final.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by commit/discard
        self._hash = hashlib.sha256()
        self._hashing = Handoff(f"sha256 {final.name}")
        self._unhashed: list[bytes] = []  # written, not yet handed to the hashing thread
        self._unhashed_bytes = 0
        self.size = 0
        self._written_back = 0  # bytes whose writeback was started
        self._hint_writeback = hasattr(os, "posix_fadvise")

    def restart(self) -> None:
        """Drop what was written; the next bytes start the file again."""
        self._hashing.cancel()
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.sha256()
        self._unhashed, self._unhashed_bytes = [], 0
        self.size = self._written_back = 0

    def write(self, chunk: bytes) -> None:
        """Append bytes; they are hashed on the hashing thread (``chunk`` must not change)."""
        self._file.write(chunk)
        self._unhashed.append(chunk)
        self._unhashed_bytes += len(chunk)
        self.size += len(chunk)
        if self._unhashed_bytes >= HASH_BATCH_BYTES:
            self._hand_over_unhashed()
        if self.size - self._written_back >= WRITEBACK_BYTES:
            self._start_writeback()

    def _hand_over_unhashed(self) -> None:
        if self._unhashed:
            chunks, self._unhashed, self._unhashed_bytes = self._unhashed, [], 0
            self._hashing.submit(functools.partial(_update, self._hash, chunks))

    def _start_writeback(self) -> None:
        # On Linux, POSIX_FADV_DONTNEED starts writing the range's dirty pages back
        # without waiting for them (it drops only pages already clean, and these are
        # not yet): the disk works while the rest arrives.  Only a hint: the fsync at
        # commit proves the bytes, so a file system that refuses it changes nothing.
        start, self._written_back = self._written_back, self.size
        if self._hint_writeback:
            self._file.flush()
            length = self.size - start
            try:
                os.posix_fadvise(self._file.fileno(), start, length, os.POSIX_FADV_DONTNEED)
            except OSError:
                self._hint_writeback = False

    @property
    def sha256(self) -> str:
        """The hex digest of what was written so far."""
        self._hand_over_unhashed()
        self._hashing.wait()
        return self._hash.hexdigest()

    def commit(self) -> None:
        """Flush to disk and rename into the final name (then sync the folder)."""
        self._hand_over_unhashed()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._hashing.wait()  # the digest recorded is of exactly these bytes
        self._file.close()
        os.replace(self.path, self.final)
        folder = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def discard(self) -> None:
        """Close and delete the temporary file."""
        self._hashing.cancel()
        self._unhashed, self._unhashed_bytes = [], 0
        try:
            if not self._file.closed:
                self._file.close()
            self.path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("cannot remove %s: %s", self.path, error)


def _update(digest: hashlib._Hash, chunks: list[bytes]) -> None:
    # One call per batch: hashlib lets go of the GIL for the whole of it.
    digest.update(chunks[0] if len(chunks) == 1 else b"".join(chunks))


def remove_stale_parts(final: Path) -> None:
    """Delete temporary files earlier claims left for this output."""
    if final.parent.is_dir():
        for stale in final.parent.glob(f"{final.name}.part-*"):
            stale.unlink(missing_ok=True)


class LocalMedia(MediaStorage):
    """Outputs as files under one folder; served by the web process itself."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def _path(self, job_id: str, index: int) -> Path:
        return self.root / relative_name(job_id, index)

    def describe(self) -> str:
        return str(self.root)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MediaUnavailable(f"MEDIA_DIR {self.root} cannot be created: {error}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise MediaUnavailable(f"MEDIA_DIR {self.root} is not writable")

    def open_partial(self, job_id: str, index: int, fence: int) -> PartialFile:
        return PartialFile(self._path(job_id, index), fence)

    def remove_stale(self, job_id: str, index: int) -> None:
        remove_stale_parts(self._path(job_id, index))

    def exists(self, job_id: str, index: int) -> bool:
        return self._path(job_id, index).is_file()

    def open(self, job_id: str, index: int) -> IO[bytes]:
        try:
            return open(self._path(job_id, index), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise MediaMissing(f"video {index} of {job_id} is not in MEDIA_DIR") from None

    def serve(self, job_id: str, index: int) -> Served:
        path = self._path(job_id, index)
        if not path.is_file():
            raise MediaMissing(f"video {index} of {job_id} is not in MEDIA_DIR")
        return Served(path=path)
