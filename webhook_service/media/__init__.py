"""Where downloaded videos live: one interface, one module per engine.

`open_media` picks the engine once, from the configuration: files under
``MEDIA_DIR`` (`local`) by default, or objects in an S3-compatible bucket (`s3`) with
``MEDIA_STORAGE=s3://bucket[/prefix]``.  The rest of the service only uses
`MediaStorage` (``open_partial``, ``remove_stale``, ``exists``, ``open``) and
`send_video`, and never builds a path, a key or a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import jsonify, send_file
from werkzeug.wrappers import Response

from .base import (
    MediaError,
    MediaMissing,
    MediaStorage,
    MediaUnavailable,
    PartialObject,
    Served,
    relative_name,
)
from .local import LocalMedia, PartialFile, output_path, remove_stale_parts

__all__ = [
    "LocalMedia",
    "MediaError",
    "MediaMissing",
    "MediaStorage",
    "MediaUnavailable",
    "PartialFile",
    "PartialObject",
    "Served",
    "open_media",
    "output_path",
    "relative_name",
    "remove_stale_parts",
    "send_video",
]

FILE_CACHE_CONTROL = "private, max-age=3600"
"""An output never changes once stored; only the client's own cache may keep it."""
REDIRECT_CACHE_CONTROL = "private, no-store"
"""A pre-signed URL expires: the redirect to it must not be reused."""


def open_media(
    settings: Any = None,
    *,
    media_dir: Path | str | None = None,
    media_storage: Any = None,
    environ: Mapping[str, str] | None = None,
) -> MediaStorage:
    """Return the configured storage; nothing is contacted (call ``check()`` at start).

    ``media_storage`` (default: ``settings.media_storage`` if that exists) is either
    ``None`` for files under ``media_dir`` (default: ``settings.media_dir``), an
    ``s3://bucket[/prefix]`` string, a ``(bucket, prefix)`` pair, or an object with
    ``bucket`` and ``prefix`` attributes.  ``environ`` holds the AWS variables
    (default: the process environment).
    """
    if media_storage is None:
        media_storage = getattr(settings, "media_storage", None)
    if media_storage is not None:
        from .s3 import S3Media, parse_url

        if isinstance(media_storage, str):
            bucket, prefix = parse_url(media_storage)
        elif isinstance(media_storage, tuple):
            bucket, prefix = media_storage
        else:
            bucket, prefix = media_storage.bucket, getattr(media_storage, "prefix", "") or ""
        return S3Media(bucket, prefix, environ=environ)
    if media_dir is None:
        media_dir = getattr(settings, "media_dir", None)
    if media_dir is None:
        raise ValueError("open_media needs media_dir (or settings.media_dir)")
    return LocalMedia(Path(media_dir))


def send_video(
    storage: MediaStorage, job_id: str, index: int, *, etag: str | None = None
) -> Response:
    """Answer a request for a stored output: the file with Range support, or a redirect.

    Raises `MediaMissing` if a local file is not there (a bucket answers 404 itself
    at the pre-signed URL).  ``etag`` (the output's sha256) makes a local answer
    conditional.
    """
    served = storage.serve(job_id, index)
    if served.url is not None:
        response = jsonify({"url": served.url})  # JSON like every answer, for who reads it
        response.status_code = 307
        response.headers["Location"] = served.url
        response.headers["Cache-Control"] = REDIRECT_CACHE_CONTROL
        return response
    assert served.path is not None
    response = send_file(served.path, mimetype="video/mp4", conditional=True, etag=etag or True)
    response.headers["Cache-Control"] = FILE_CACHE_CONTROL
    response.headers["Accept-Ranges"] = "bytes"
    return response
