"""A real S3-compatible server (moto's server mode) on 127.0.0.1, for tests and benchmarks.

``S3Server()`` runs it in a thread of this process; ``S3Server(separate_process=True)``
runs it in a child process (moto keeps every object in memory, in the process that
serves it), which ends when this process closes the child's stdin.  Either way
clients reach it over a real loopback socket, as they would reach a bucket.

Run as a script, it serves until stdin closes and prints its port first.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import boto3
from botocore.config import Config

REGION = "us-east-1"


class S3Server:
    """An S3-compatible endpoint on a free loopback port."""

    def __init__(self, separate_process: bool = False) -> None:
        self.separate_process = separate_process
        self.port = 0
        self._thread_server: Any = None
        self._child: subprocess.Popen[str] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        if self.separate_process:
            self._child = subprocess.Popen(
                [sys.executable, __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert self._child.stdout is not None
            line = self._child.stdout.readline()  # blocks until the server listens
            if not line.strip().isdigit():
                self._child.kill()
                raise RuntimeError("the S3 server did not start")
            self.port = int(line)
        else:
            from moto.server import ThreadedMotoServer

            self._thread_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._thread_server.start()
            self.port = self._thread_server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        if self._child is not None:
            assert self._child.stdin is not None
            self._child.stdin.close()
            try:
                self._child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
            self._child = None
        if self._thread_server is not None:
            self._thread_server.stop()
            self._thread_server = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def environ(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test-access-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret-key",
            "AWS_REGION": REGION,
        }

    def client(self) -> Any:
        """A plain client, for setting up and inspecting buckets from a test."""
        env = self.environ()
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (by default with a fresh name) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def uploads(self, bucket: str) -> list[str]:
        """Keys with an incomplete multipart upload in ``bucket``."""
        answer = self.client().list_multipart_uploads(Bucket=bucket)
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    def objects(self, bucket: str) -> list[str]:
        """Keys of the objects in ``bucket``."""
        answer = self.client().list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in answer.get("Contents", [])]


def _serve_until_stdin_closes() -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    _serve_until_stdin_closes()
