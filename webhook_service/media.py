"""Downloaded videos on disk, under MEDIA_DIR, named only from our own ids."""

from __future__ import annotations

from pathlib import Path


def output_path(media_dir: Path, job_id: str, index: int) -> Path:
    """Return where output ``index`` of our job ``job_id`` lives once complete."""
    return media_dir / job_id / f"{int(index)}.mp4"
