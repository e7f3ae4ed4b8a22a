"""Fetching one output into a PartialFile: length checks and resume rules (MockTransport)."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from webhook_service.downloads import BodyMismatch, fetch
from webhook_service.media import PartialFile
from webhook_service.modelgates import ModelGatesClient

VIDEO = bytes(range(256)) * 40  # 10 240 bytes


def client_for(handler):
    return ModelGatesClient(
        "https://upstream.test/api/v1", "k", transport=httpx.MockTransport(handler)
    )


class Stream(httpx.SyncByteStream):
    """A body that may lie about its length or break off."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data, self.fail_after = data, fail_after

    def __iter__(self):
        if self.fail_after is None:
            yield self.data
            return
        yield self.data[: self.fail_after]
        raise httpx.RemoteProtocolError("peer closed connection")


def test_a_body_longer_than_its_content_length_is_refused_and_nothing_kept(tmp_path):
    client = client_for(
        lambda request: httpx.Response(200, headers={"Content-Length": "100"}, stream=Stream(VIDEO))
    )
    target = PartialFile(tmp_path / "0.mp4", fence=1)
    with pytest.raises(BodyMismatch, match="longer"):
        fetch(client, "job-1", 0, target)
    assert target.size == 0
    target.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_body_shorter_than_its_content_length_is_never_accepted(tmp_path):
    client = client_for(
        lambda request: httpx.Response(
            200, headers={"Content-Length": str(len(VIDEO))}, stream=Stream(VIDEO[:500])
        )
    )
    target = PartialFile(tmp_path / "0.mp4", fence=1)
    with pytest.raises(BodyMismatch, match="ended at"):
        fetch(client, "job-1", 0, target)
    target.discard()
    assert not (tmp_path / "0.mp4").exists()


def test_a_cut_download_resumes_from_where_it_stopped_when_upstream_answers_206(tmp_path):
    ranges = []

    def handler(request):
        ranges.append(request.headers.get("Range"))
        if len(ranges) == 1:
            return httpx.Response(
                200,
                headers={"Content-Length": str(len(VIDEO))},
                stream=Stream(VIDEO, fail_after=4000),
            )
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        return httpx.Response(
            206,
            stream=Stream(VIDEO[start:]),
            headers={"Content-Range": f"bytes {start}-{len(VIDEO) - 1}/{len(VIDEO)}"},
        )

    target = PartialFile(tmp_path / "0.mp4", fence=1)
    fetch(client_for(handler), "job-1", 0, target)
    target.commit()
    assert ranges == [None, "bytes=4000-"]
    assert (tmp_path / "0.mp4").read_bytes() == VIDEO
    assert target.sha256 == hashlib.sha256(VIDEO).hexdigest()


def test_a_206_with_a_mismatched_content_range_is_refused(tmp_path):
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(
                200,
                headers={"Content-Length": str(len(VIDEO))},
                stream=Stream(VIDEO, fail_after=4000),
            )
        return httpx.Response(
            206, content=VIDEO, headers={"Content-Range": f"bytes 0-{len(VIDEO) - 1}/{len(VIDEO)}"}
        )

    target = PartialFile(tmp_path / "0.mp4", fence=1)
    with pytest.raises(BodyMismatch, match="Content-Range"):
        fetch(client_for(handler), "job-1", 0, target)
    target.discard()


def test_a_200_to_a_range_request_starts_the_file_over(tmp_path):
    calls = []

    def handler(request):
        calls.append(request.headers.get("Range"))
        fail = 3000 if len(calls) == 1 else None
        return httpx.Response(
            200, headers={"Content-Length": str(len(VIDEO))}, stream=Stream(VIDEO, fail_after=fail)
        )

    target = PartialFile(tmp_path / "0.mp4", fence=1)
    fetch(client_for(handler), "job-1", 0, target)
    target.commit()
    assert calls == [None, "bytes=3000-"]
    assert (tmp_path / "0.mp4").read_bytes() == VIDEO


def test_the_part_file_name_carries_the_claims_fence(tmp_path):
    first, second = PartialFile(tmp_path / "0.mp4", 1), PartialFile(tmp_path / "0.mp4", 2)
    assert first.path != second.path and first.path.name == "0.mp4.part-1"
    first.discard()
    second.discard()


def test_a_resume_answering_an_unknown_total_still_has_to_reach_the_first_length(tmp_path):
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(
                200, headers={"Content-Length": str(len(VIDEO))}, stream=Stream(VIDEO, 100)
            )
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        return httpx.Response(
            206,
            stream=Stream(VIDEO[start : start + 100]),
            headers={"Content-Range": f"bytes {start}-{start + 99}/*"},
        )

    target = PartialFile(tmp_path / "0.mp4", fence=1)
    with pytest.raises(BodyMismatch, match="ended at"):
        fetch(client_for(handler), "job-1", 0, target)
    target.discard()
    assert not (tmp_path / "0.mp4").exists()
