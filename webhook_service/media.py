"""Downloaded videos on disk, under MEDIA_DIR, named only from our own ids.

A download is written to ``<job>/<index>.mp4.part-<fence>``, hashed as the bytes
arrive, fsynced, then renamed into place: a file under its final name is always
whole.  The fence in the temporary name keeps a stalled worker and the worker
that took its claim over from ever writing the same file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def output_path(media_dir: Path, job_id: str, index: int) -> Path:
    """Return where output ``index`` of our job ``job_id`` lives once complete."""
    return media_dir / job_id / f"{int(index)}.mp4"


class PartialFile:
    """A video being written: append, hash, then commit atomically into place."""

    def __init__(self, final: Path, fence: int) -> None:
        self.final = final
        self.path = final.with_name(f"{final.name}.part-{fence}")
        final.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by commit/discard
        self._hash = hashlib.sha256()
        self.size = 0

    def restart(self) -> None:
        """Drop what was written; the next bytes start the file again."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append bytes, hashing them on the way."""
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        """The hex digest of what was written so far."""
        return self._hash.hexdigest()

    def commit(self) -> None:
        """Flush to disk and rename into the final name (then sync the folder)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.path, self.final)
        folder = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def discard(self) -> None:
        """Close and delete the temporary file."""
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


def remove_stale_parts(final: Path) -> None:
    """Delete temporary files earlier claims left for this output."""
    if final.parent.is_dir():
        for stale in final.parent.glob(f"{final.name}.part-*"):
            stale.unlink(missing_ok=True)
