"""Outputs as objects in an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, Backblaze B2).

Selected by ``MEDIA_STORAGE=s3://<bucket>[/<prefix>]``; output ``index`` of job
``job_id`` is the object ``<prefix>/<job_id>/<index>.mp4``.  Credentials, region and
endpoint come from the standard variables: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``), ``AWS_REGION`` or
``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for a store
that is not AWS.  With an endpoint set, requests use path-style addressing
(``<endpoint>/<bucket>/<key>``), which MinIO needs and R2 and B2 accept.  Checksums are
only sent when an operation requires them: many S3-compatible stores reject the CRC
headers recent SDKs add by default.

A download streams into a multipart upload, 8 MiB parts, one sent from a second
thread while the next one arrives (two parts in memory at most), hashed with
SHA-256 on the way (S3 has no whole-object SHA-256 of its own for multipart
objects).  The object exists under its key only once
``CompleteMultipartUpload`` (or, below one part, a single ``PutObject``) succeeds: a
reader never sees half a video.

A worker killed mid-download leaves an incomplete multipart upload: invisible, but
its parts are stored (and billed).  The next claim on that output aborts it
(`S3Media.remove_stale`); for outputs never claimed again, give the bucket a
lifecycle rule that aborts incomplete multipart uploads after one day::

    {"Rules": [{"ID": "abort-incomplete-uploads", "Status": "Enabled",
                "Filter": {"Prefix": ""},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}

(``aws s3api put-bucket-lifecycle-configuration --bucket B --lifecycle-configuration
file://rule.json``; R2 and B2 offer the same rule in their dashboards.)

Clients get a video through a pre-signed GET URL valid for `PRESIGN_SECONDS`; it
needs no credentials and the bucket honours ``Range`` on it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from .base import MediaMissing, MediaStorage, MediaUnavailable, PartialObject, Served, relative_name
from .handoff import Handoff

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
"""Bytes per uploaded part; S3 wants at least 5 MiB for every part but the last."""
PRESIGN_SECONDS = 600
"""Lifetime of a pre-signed GET URL (the contract allows up to 15 minutes)."""
CONTENT_TYPE = "video/mp4"
MISSING = {"404", "NoSuchKey", "NotFound"}


def parse_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket[/prefix]`` into the bucket and a prefix ending in ``/`` (or "")."""
    if not url.startswith("s3://"):
        raise ValueError(f"MEDIA_STORAGE must look like s3://bucket[/prefix], got {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"MEDIA_STORAGE names no bucket: {url!r}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def client_from_environ(environ: Mapping[str, str] | None = None) -> Any:
    """Build an S3 client from the standard AWS variables in ``environ`` (default: os.environ).

    Variables missing from ``environ`` fall back to boto3's own lookup (profiles,
    instance roles), so a mapping without credentials still works on AWS.
    """
    env = os.environ if environ is None else environ

    def get(*names: str) -> str | None:
        for name in names:
            value = env.get(name, "").strip()
            if value:
                return value
        return None

    endpoint = get("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=16,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=get("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
        aws_access_key_id=get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=get("AWS_SESSION_TOKEN"),
        config=config,
    )


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Media(MediaStorage):
    """Outputs as objects under ``prefix`` in ``bucket``."""

    def __init__(
        self, bucket: str, prefix: str = "", environ: Mapping[str, str] | None = None
    ) -> None:
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self._environ = None if environ is None else dict(environ)
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The S3 client, built on first use (so after a server forks its workers)."""
        with self._lock:
            if self._client is None:
                try:
                    self._client = client_from_environ(self._environ)
                except BotoCoreError as error:
                    raise MediaUnavailable(f"{self.describe()}: {error}") from None
            return self._client

    def key(self, job_id: str, index: int) -> str:
        """The object key of output ``index`` of ``job_id``."""
        return self.prefix + relative_name(job_id, index)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn the SDK's errors into `MediaUnavailable` with one readable line."""
        try:
            yield
        except NoCredentialsError:
            raise MediaUnavailable(
                f"{self.describe()}: no credentials (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY)"
            ) from None
        except EndpointConnectionError as error:
            raise MediaUnavailable(f"{self.describe()}: cannot {action}: {error}") from None
        except ClientError as error:
            code = _error_code(error)
            reason = {
                "404": "the bucket does not exist",
                "NoSuchBucket": "the bucket does not exist",
                "403": "access denied (check the AWS credentials)",
                "AccessDenied": "access denied (check the AWS credentials)",
            }.get(code, str(error))
            raise MediaUnavailable(f"{self.describe()}: cannot {action}: {reason}") from None
        except BotoCoreError as error:
            raise MediaUnavailable(f"{self.describe()}: cannot {action}: {error}") from None

    def check(self) -> None:
        with self.errors("reach the bucket"):
            self.client.head_bucket(Bucket=self.bucket)

    def open_partial(self, job_id: str, index: int, fence: int) -> S3Partial:
        return S3Partial(self, self.key(job_id, index), fence)

    def remove_stale(self, job_id: str, index: int) -> None:
        """Abort every incomplete multipart upload of this output's key."""
        key = self.key(job_id, index)
        with self.errors("list incomplete uploads"):
            pages = self.client.get_paginator("list_multipart_uploads")
            stale = [
                upload["UploadId"]
                for page in pages.paginate(Bucket=self.bucket, Prefix=key)
                for upload in page.get("Uploads", [])
                if upload["Key"] == key
            ]
        for upload_id in stale:
            self.abort(key, upload_id)

    def abort(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload (already gone is fine)."""
        try:
            with self.errors("abort an incomplete upload"):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except MediaUnavailable:
            if not self._upload_gone(key, upload_id):
                raise

    def _upload_gone(self, key: str, upload_id: str) -> bool:
        try:
            self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as error:
            return _error_code(error) == "NoSuchUpload"
        except BotoCoreError:
            return False
        return False

    def exists(self, job_id: str, index: int) -> bool:
        with self.errors("read the bucket"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.key(job_id, index))
            except ClientError as error:
                if _error_code(error) in MISSING:
                    return False
                raise
        return True

    def open(self, job_id: str, index: int) -> IO[bytes]:
        with self.errors("read the bucket"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self.key(job_id, index))
            except ClientError as error:
                if _error_code(error) in MISSING:
                    raise MediaMissing(f"video {index} of {job_id} is not in the bucket") from None
                raise
        body: IO[bytes] = answer["Body"]
        return body

    def serve(self, job_id: str, index: int) -> Served:
        """A pre-signed GET URL; signing is local, so this never contacts the bucket."""
        with self.errors("sign a URL"):
            url = self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self.key(job_id, index),
                    "ResponseContentType": CONTENT_TYPE,
                    "ResponseCacheControl": f"private, max-age={PRESIGN_SECONDS}",
                },
                ExpiresIn=PRESIGN_SECONDS,
            )
        return Served(url=url)


class PartBody(io.RawIOBase):
    """A seekable reader over part of the part buffer, so a part is sent without a copy."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        self._position = max(0, base[whence] + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        piece = self._view[self._position : self._position + len(buffer)]
        buffer[: len(piece)] = piece
        self._position += len(piece)
        return len(piece)

    def __len__(self) -> int:
        return len(self._view)


class S3Partial(PartialObject):
    """An output streaming into a multipart upload, at most two parts in memory.

    Bytes are hashed and copied once, into a part-sized buffer, and sent from there.
    A full part is sent from a second thread (`Handoff`) while the next one fills
    the other buffer; a part is handed over only once the one before it is stored,
    so one part at most is in flight and receiving stops only when the bucket is the
    slower of the two.  The upload starts when the first part is full (from the
    caller's thread, so it is listed at once): an output smaller than one part is
    sent with a single ``PutObject`` at commit.
    """

    def __init__(self, media: S3Media, key: str, fence: int) -> None:
        self.media = media
        self.key = key
        self.fence = int(fence)
        self._buffer: bytearray | None = None  # the part being filled
        self._filled = 0
        self._in_flight: bytearray | None = None  # the part handed to the sending thread
        self._sending = Handoff(f"upload {key}")
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []  # appended by the sending thread
        self._hash = hashlib.sha256()
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        view = memoryview(chunk)
        while view:
            if self._buffer is None:
                self._buffer = bytearray(PART_SIZE)
            taken = min(len(view), PART_SIZE - self._filled)
            self._buffer[self._filled : self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._filled == PART_SIZE:
                self._hand_over()

    def _body(self) -> PartBody:
        buffer = self._buffer if self._buffer is not None else bytearray()
        return PartBody(memoryview(buffer)[: self._filled])

    def _hand_over(self) -> None:
        """Send the buffered part from the sending thread and free the buffer to fill."""
        self._sending.wait()  # the part before is stored (or its error raised here)
        if self._upload_id is None:
            with self.media.errors("start an upload"):
                answer = self.media.client.create_multipart_upload(
                    Bucket=self.media.bucket,
                    Key=self.key,
                    ContentType=CONTENT_TYPE,
                    Metadata={"fence": str(self.fence)},
                )
            self._upload_id = str(answer["UploadId"])
        upload_id, number, body = self._upload_id, len(self._parts) + 1, self._body()
        self._sending.submit(lambda: self._send_part(upload_id, number, body))
        # The buffer whose part was stored is filled next.
        self._buffer, self._in_flight, self._filled = self._in_flight, self._buffer, 0

    def _send_part(self, upload_id: str, number: int, body: PartBody) -> None:
        with self.media.errors("upload a part"):
            answer = self.media.client.upload_part(
                Bucket=self.media.bucket,
                Key=self.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=len(body),
            )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def restart(self) -> None:
        self._drop()
        self._hash = hashlib.sha256()
        self.size = 0

    def commit(self) -> None:
        client, bucket = self.media.client, self.media.bucket
        if self._upload_id is None:
            with self.media.errors("store the video"):
                client.put_object(
                    Bucket=bucket,
                    Key=self.key,
                    Body=self._body(),
                    ContentLength=self._filled,
                    ContentType=CONTENT_TYPE,
                    Metadata={"fence": str(self.fence)},
                )
        else:
            if self._filled:
                self._hand_over()
            self._sending.wait()
            with self.media.errors("complete the upload"):
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        self._buffer = self._in_flight = None
        self._filled = 0
        self._upload_id, self._parts = None, []

    def discard(self) -> None:
        try:
            self._drop()
        except MediaUnavailable as error:
            # The next claim's remove_stale, or the bucket's lifecycle rule, cleans up.
            log.warning("cannot abort the upload of %s: %s", self.key, error)

    def _drop(self) -> None:
        self._sending.cancel()  # the part in flight ends before its upload is aborted
        self._buffer = self._in_flight = None
        self._filled = 0
        upload_id, self._upload_id, self._parts = self._upload_id, None, []
        if upload_id is not None:
            self.media.abort(self.key, upload_id)
