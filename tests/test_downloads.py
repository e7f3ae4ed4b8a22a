"""A download is kept only when upstream's answers prove the exact, whole, unencoded file.

Every case runs against a misbehaving upstream on a real loopback socket and is driven
the way the worker drives ``fetch``: commit when it returns, discard when it raises.
A refusal must raise *and* leave no file behind.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from hostile_upstream import Answer, HostileUpstream, hostile_upstream_fixture  # noqa: F401
from hostile_upstream import ranged_file as ranged
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook_service.downloads import (
    BodyMismatch,
    DownloadAborted,
    UnprovenDownload,
    fetch,
)
from webhook_service.media import PartialFile
from webhook_service.modelgates import (
    ModelGatesClient,
    ModelGatesError,
    RequestRefused,
    ServerError,
    TransportError,
)

VIDEO = bytes(range(256)) * 40  # 10 240 bytes
TOTAL = len(VIDEO)
CONTENT = "/videos/job-1/content"


def client_for(upstream: HostileUpstream, timeout: float = 10.0) -> ModelGatesClient:
    return ModelGatesClient(upstream.base_url, "sk-key", timeout=timeout)


def download(
    upstream: HostileUpstream, folder: Path, timeout: float = 10.0, keep_going=lambda: True
) -> ModelGatesError | DownloadAborted | None:
    """Fetch output 0 of job-1 as the worker does; return the error, if any.

    A kept file's recorded size and sha256 must be those of exactly the bytes stored.
    """
    target = PartialFile(folder / "0.mp4", fence=1)
    with client_for(upstream, timeout) as client:
        try:
            fetch(client, "job-1", 0, target, keep_going)
        except (ModelGatesError, DownloadAborted) as error:
            target.discard()
            return error
    target.commit()
    stored = (folder / "0.mp4").read_bytes()
    assert (target.size, target.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    return None


def assert_nothing_kept(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == []


def assert_whole_video(folder: Path) -> None:
    assert (folder / "0.mp4").read_bytes() == VIDEO
    assert [p.name for p in folder.iterdir()] == ["0.mp4"]


def refused(upstream: HostileUpstream, folder: Path, kind: type[Exception], match: str = ""):
    error = download(upstream, folder)
    assert isinstance(error, kind), error
    assert match in str(error)
    assert_nothing_kept(folder)
    return error


def cut_then(*answers: Answer) -> tuple[Answer, ...]:
    """A whole-file 200 cut after 4000 bytes, then ``answers`` to the resume."""
    return (Answer(200, VIDEO, cut_after=4000), *answers)


def content_range(spec: str, body: bytes = VIDEO[4000:], **fields) -> Answer:
    return Answer(206, body, headers=[("Content-Range", spec)], **fields)


# What a good upstream gets -----------------------------------------------------


def test_the_request_asks_for_identity_and_the_bytes_are_stored_as_sent(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, ranged(VIDEO))
    assert download(hostile_upstream, tmp_path) is None
    assert_whole_video(tmp_path)
    (request,) = hostile_upstream.requests
    assert request.headers["accept-encoding"] == "identity"
    assert request.range is None and request.query == {"index": "0"}
    assert request.headers["authorization"] == "Bearer sk-key"


def test_a_cut_download_resumes_with_a_range_and_keeps_the_whole_file(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, cut_after=4000), ranged(VIDEO))
    assert download(hostile_upstream, tmp_path) is None
    assert_whole_video(tmp_path)
    assert [r.range for r in hostile_upstream.requests] == [None, "bytes=4000-"]
    assert {r.headers["accept-encoding"] for r in hostile_upstream.requests} == {"identity"}


def test_a_200_to_a_resume_starts_the_file_over(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, cut_after=3000), Answer(200, VIDEO))
    assert download(hostile_upstream, tmp_path) is None
    assert_whole_video(tmp_path)
    assert [r.range for r in hostile_upstream.requests] == [None, "bytes=3000-"]


def test_a_200_to_a_resume_that_is_cut_again_still_counts_as_progress(hostile_upstream, tmp_path):
    hostile_upstream.on(
        "GET",
        CONTENT,
        Answer(200, VIDEO, cut_after=5000),
        Answer(200, VIDEO, cut_after=4000),
        ranged(VIDEO),
    )
    assert download(hostile_upstream, tmp_path) is None
    assert_whole_video(tmp_path)
    assert [r.range for r in hostile_upstream.requests] == [None, "bytes=5000-", "bytes=4000-"]


def test_a_large_download_started_over_then_resumed_keeps_exactly_the_file(
    hostile_upstream, tmp_path
):
    # Past WRITEBACK_BYTES, with hashing on its own thread: the restart drops it all.
    big = hashlib.shake_256(b"big").digest(20 << 20)
    hostile_upstream.on(
        "GET",
        CONTENT,
        Answer(200, big, cut_after=9 << 20),
        Answer(200, big, cut_after=17 << 20),  # a 200 to the resume: the file starts over
        ranged(big),
    )
    assert download(hostile_upstream, tmp_path) is None
    assert (tmp_path / "0.mp4").read_bytes() == big
    assert [r.range for r in hostile_upstream.requests] == [
        None,
        f"bytes={9 << 20}-",
        f"bytes={17 << 20}-",
    ]


def test_a_length_less_200_is_asked_again_with_a_range_to_learn_the_total(
    hostile_upstream, tmp_path
):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, chunked=True), ranged(VIDEO))
    assert download(hostile_upstream, tmp_path) is None
    assert_whole_video(tmp_path)
    assert [r.range for r in hostile_upstream.requests] == [None, "bytes=0-"]


def test_a_chunked_206_is_enough_when_its_content_range_holds_the_total(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, *cut_then(ranged(VIDEO, chunked=True, length=None)))
    assert download(hostile_upstream, tmp_path) is None
    assert_whole_video(tmp_path)


def test_a_same_origin_redirect_is_followed_with_the_same_headers(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, cut_after=4000))
    hostile_upstream.on("GET", "/blobs/1", ranged(VIDEO))
    hostile_upstream.on(
        "GET", CONTENT, Answer(200, VIDEO, cut_after=4000), Answer.redirect("/api/v1/blobs/1")
    )
    assert download(hostile_upstream, tmp_path) is None
    assert_whole_video(tmp_path)
    followed = hostile_upstream.seen("GET", "/blobs/1")[0]
    assert followed.range == "bytes=4000-" and followed.headers["accept-encoding"] == "identity"


# Encodings and documents ---------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-gzip", "identity, gzip", "zstd"])
def test_an_encoded_answer_is_never_stored(hostile_upstream, tmp_path, encoding):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, encoding=encoding))
    refused(hostile_upstream, tmp_path, UnprovenDownload, "encoded")


def test_an_encoded_resume_is_never_appended(hostile_upstream, tmp_path):
    rest = ranged(VIDEO, encoding="gzip")
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, cut_after=4000), rest)
    refused(hostile_upstream, tmp_path, UnprovenDownload, "encoded")


@pytest.mark.parametrize(
    "content_type",
    ["text/html; charset=utf-8", "application/json", "application/problem+json", "text/plain"],
)
def test_an_error_page_sent_with_200_is_never_stored(hostile_upstream, tmp_path, content_type):
    page = b"<html><body>Service Unavailable</body></html>"
    hostile_upstream.on("GET", CONTENT, Answer(200, page, content_type=content_type))
    refused(hostile_upstream, tmp_path, UnprovenDownload, "document")


def test_an_empty_200_is_not_a_video(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, Answer(200, b""))
    refused(hostile_upstream, tmp_path, UnprovenDownload, "empty")


# Lengths -------------------------------------------------------------------------


def test_a_body_longer_than_its_content_length_is_never_stored(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, length=TOTAL - 40))
    refused(hostile_upstream, tmp_path, BodyMismatch, "more bytes")


def test_a_body_shorter_than_its_content_length_is_never_stored(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO[:5000], length=TOTAL))
    refused(hostile_upstream, tmp_path, TransportError)


def test_a_chunked_body_that_ends_short_of_its_content_length_is_never_stored(
    hostile_upstream, tmp_path
):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO[:5000], chunked=True, length=TOTAL))
    refused(hostile_upstream, tmp_path, BodyMismatch, "ended at")


def test_a_length_less_200_from_a_server_that_ignores_ranges_is_never_stored(
    hostile_upstream, tmp_path
):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, chunked=True))
    refused(hostile_upstream, tmp_path, UnprovenDownload, "cannot prove")
    assert [r.range for r in hostile_upstream.requests] == [None, "bytes=0-"]


def test_a_close_delimited_answer_cut_short_is_never_stored(hostile_upstream, tmp_path):
    cut = Answer(raw=b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + VIDEO[:3000])
    hostile_upstream.on("GET", CONTENT, cut)
    refused(hostile_upstream, tmp_path, UnprovenDownload, "cannot prove")


def test_a_close_delimited_resume_must_reach_the_known_total(hostile_upstream, tmp_path):
    short = Answer(raw=b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + VIDEO[:3000])
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, cut_after=4000), short)
    refused(hostile_upstream, tmp_path, BodyMismatch, "ended at 3000 of 10240")


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "9" * 30)],
        [("Content-Length", "9" * 5000)],
        [("Content-Length", "ten thousand")],
        [("Content-Length", "-1")],
        [("Content-Length", f"{TOTAL}"), ("Content-Length", "5")],
        [("X-Padding", "a" * 200_000)],
        [("Transfer-Encoding", "gzip, chunked")],
    ],
    ids=["30-digits", "5000-digits", "words", "negative", "two-lengths", "huge", "te-gzip"],
)
def test_malformed_or_huge_headers_are_a_transport_error_and_nothing_is_kept(
    hostile_upstream, tmp_path, headers
):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, length=None, headers=headers))
    refused(hostile_upstream, tmp_path, TransportError)


# Statuses and Content-Range --------------------------------------------------------


@pytest.mark.parametrize("status", [201, 202, 203, 204, 205, 207, 226, 300, 304])
def test_a_status_that_does_not_carry_the_file_is_never_stored(hostile_upstream, tmp_path, status):
    hostile_upstream.on("GET", CONTENT, Answer(status, VIDEO))
    refused(hostile_upstream, tmp_path, UnprovenDownload, f"answer {status}")


def test_a_206_nobody_asked_for_is_never_stored_even_when_it_looks_whole(
    hostile_upstream, tmp_path
):
    hostile_upstream.on("GET", CONTENT, content_range(f"bytes 0-{TOTAL - 1}/{TOTAL}", VIDEO))
    refused(hostile_upstream, tmp_path, UnprovenDownload, "asked for no range")


@pytest.mark.parametrize(
    "answer, match",
    [
        (content_range(f"bytes 0-{TOTAL - 1}/{TOTAL}", VIDEO), "does not match"),
        (content_range(f"bytes 3999-{TOTAL - 1}/{TOTAL}", VIDEO[3999:]), "does not match"),
        (content_range(f"bytes 4000-{TOTAL - 2}/{TOTAL}", VIDEO[4000:-1]), "does not match"),
        (content_range(f"bytes 4000-{TOTAL}/{TOTAL + 1}"), "changed size"),
        (content_range(f"bytes 4000-{TOTAL - 2}/{TOTAL - 1}"), "changed size"),
        (content_range("bytes 4000-4999/*", VIDEO[4000:5000]), "does not match"),
        (content_range(f"bytes 4000-{TOTAL - 1}/{TOTAL}", length=TOTAL), "Content-Length"),
        (content_range(f"bytes {TOTAL - 1}-4000/{TOTAL}"), "does not match"),
        (content_range(f"bytes=4000-{TOTAL - 1}/{TOTAL}"), "bad Content-Range"),
        (content_range(f"bytes 4000-{TOTAL - 1}/{'9' * 400}"), "bad Content-Range"),
        (content_range(f"bytes 4000-{TOTAL - 1}/{TOTAL}, bytes 0-1/{TOTAL}"), "bad Content-Range"),
        (Answer(206, VIDEO[4000:]), "bad Content-Range"),
        (
            content_range(f"bytes 4000-{TOTAL - 1}/{TOTAL}", content_type="multipart/byteranges"),
            "document",
        ),
    ],
    ids=[
        "from-0",
        "early-start",
        "short-end",
        "bigger-total",
        "smaller-total",
        "part-of-unknown",
        "length-disagrees",
        "backwards",
        "not-bytes-unit",
        "huge-total",
        "two-ranges",
        "missing",
        "multipart",
    ],
)
def test_a_resume_whose_content_range_does_not_prove_the_rest_is_never_appended(
    hostile_upstream, tmp_path, answer, match
):
    hostile_upstream.on("GET", CONTENT, *cut_then(answer))
    refused(hostile_upstream, tmp_path, UnprovenDownload, match)


def test_a_hidden_total_is_refused_when_no_earlier_answer_gave_one(hostile_upstream, tmp_path):
    chunked_cut = Answer(200, VIDEO, chunked=True, cut_after=4000)
    hostile_upstream.on("GET", CONTENT, chunked_cut, content_range(f"bytes 0-{TOTAL - 1}/*", VIDEO))
    refused(hostile_upstream, tmp_path, UnprovenDownload, "hides the total")


def test_a_hidden_total_is_accepted_when_an_earlier_answer_gave_it(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, *cut_then(content_range(f"bytes 4000-{TOTAL - 1}/*")))
    assert download(hostile_upstream, tmp_path) is None
    assert_whole_video(tmp_path)


def test_a_416_to_a_resume_is_refused_and_nothing_is_kept(hostile_upstream, tmp_path):
    unsatisfiable = Answer(416, headers=[("Content-Range", f"bytes */{TOTAL}")])
    hostile_upstream.on("GET", CONTENT, *cut_then(unsatisfiable))
    assert refused(hostile_upstream, tmp_path, RequestRefused).status == 416


# Redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_origin_is_not_followed(hostile_upstream, tmp_path, status):
    with HostileUpstream() as elsewhere:
        elsewhere.on("GET", "*", ranged(VIDEO))
        hostile_upstream.on("GET", CONTENT, Answer.redirect(f"{elsewhere.base_url}/v.mp4", status))
        refused(hostile_upstream, tmp_path, ServerError, "another origin")
        assert elsewhere.requests == []


@pytest.mark.parametrize(
    "location",
    ["http://[::1", "file:///etc/passwd", "http://user@{host}/api/v1/blobs/1", "//{other}/x"],
)
def test_a_redirect_to_a_bad_or_foreign_url_is_refused(hostile_upstream, tmp_path, location):
    host = hostile_upstream.origin.removeprefix("http://")
    location = location.format(host=host, other="127.0.0.1:9")
    hostile_upstream.on("GET", "*", ranged(VIDEO))
    hostile_upstream.on("GET", CONTENT, Answer.redirect(location))
    refused(hostile_upstream, tmp_path, ModelGatesError)
    assert len(hostile_upstream.requests) == 1


def test_a_redirect_loop_gives_up(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, Answer.redirect("/api/v1" + CONTENT + "?index=0"))
    refused(hostile_upstream, tmp_path, ServerError, "too many redirects")


def test_a_redirect_without_a_location_is_refused(hostile_upstream, tmp_path):
    hostile_upstream.on("GET", CONTENT, Answer(302, VIDEO))
    refused(hostile_upstream, tmp_path, UnprovenDownload, "answer 302")


# Stalls --------------------------------------------------------------------------------


def test_a_body_that_stalls_every_time_is_a_transport_error_and_nothing_is_kept(
    hostile_upstream, tmp_path
):
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, hold_after=1000), ranged(VIDEO))
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, hold_after=0))
    error = download(hostile_upstream, tmp_path, timeout=0.3)
    assert isinstance(error, TransportError) and "Timeout" in str(error)
    assert_nothing_kept(tmp_path)


def test_a_paused_stream_abandoned_by_the_worker_keeps_nothing(hostile_upstream, tmp_path):
    gate, claim_lost, asked = threading.Event(), threading.Event(), threading.Event()
    hostile_upstream.on("GET", CONTENT, Answer(200, VIDEO, hold_after=2000, gate=gate))

    def keep_going() -> bool:
        asked.set()
        return not claim_lost.is_set()

    outcome: list[object] = []
    fetcher = threading.Thread(
        target=lambda: outcome.append(download(hostile_upstream, tmp_path, 10, keep_going))
    )
    fetcher.start()
    assert asked.wait(10)  # the first bytes arrived; the stream is now paused
    claim_lost.set()
    gate.set()  # the next bytes arrive after the claim was lost
    fetcher.join(10)
    assert isinstance(outcome[0], DownloadAborted)
    assert_nothing_kept(tmp_path)


# Any answer at all ------------------------------------------------------------------

ENCODINGS = st.sampled_from([None, "identity", "", "gzip", "br", "deflate", "identity, br"])
TYPES = st.sampled_from(["video/mp4", None, "application/octet-stream", "text/html", "app/json"])
LENGTHS = st.sampled_from(["auto", None, TOTAL - 1, TOTAL + 1, 0, "x"])
RANGES = st.sampled_from(
    [
        None,
        "bytes {start}-{end}/{total}",
        "bytes {start}-{end}/*",
        "bytes 0-{end}/{total}",
        "bytes {start}-{end}/{bigger}",
        "bytes {start}-{shorter}/{total}",
    ]
)
STATUSES = st.sampled_from([200, 200, 206, 206, 203, 204, 416])


@st.composite
def answers(draw):
    """A server that answers a request (ranged or not) with a random mix of headers."""
    status, spec = draw(STATUSES), draw(RANGES)
    fields = {
        "encoding": draw(ENCODINGS),
        "content_type": draw(TYPES),
        "length": draw(LENGTHS),
        "chunked": draw(st.booleans()),
        "cut_after": draw(st.sampled_from([None, None, 0, 1, 4000])),
        "connection_close": draw(st.booleans()),
    }

    def answer(seen):
        start = int((seen.range or "bytes=0-").removeprefix("bytes=").rstrip("-") or 0)
        values = dict(start=start, end=TOTAL - 1, total=TOTAL, bigger=TOTAL + 1)
        headers = [("Content-Range", spec.format(shorter=TOTAL - 2, **values))] if spec else []
        return Answer(status, VIDEO[start:], headers=headers, **fields)

    return answer


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scripts=st.lists(answers(), min_size=1, max_size=4))
def test_whatever_upstream_answers_only_the_exact_file_is_ever_kept(
    hostile_upstream, tmp_path_factory, scripts
):
    folder = tmp_path_factory.mktemp("out")
    hostile_upstream.reset()
    hostile_upstream.on("GET", CONTENT, *scripts)
    error = download(hostile_upstream, folder, timeout=5)
    if error is None:
        assert (folder / "0.mp4").read_bytes() == VIDEO
        assert [p.name for p in folder.iterdir()] == ["0.mp4"]
    else:
        assert isinstance(error, ModelGatesError)
        assert_nothing_kept(folder)
