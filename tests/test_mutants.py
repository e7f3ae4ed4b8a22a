"""Decisions that changing the code once left every other test passing.

Each test pins one such decision: when a failed download is given up (and the
job's notification queued), when an output gone upstream is failed for good, how
far the next attempt is pushed back, when a submit never answered is failed, and
that a body running past its announced end is never written past it.  The worker
runs against a real loopback upstream with an injected clock.
"""

from __future__ import annotations

import pytest
from hostile_upstream import Answer, hostile_upstream_fixture  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

from webhook_service import create_app
from webhook_service.config import load_settings
from webhook_service.downloads import BodyMismatch, UnprovenDownload, fetch
from webhook_service.media import PartialFile
from webhook_service.modelgates import ModelGatesClient
from webhook_service.store import open_store
from webhook_service.worker import DOWNLOAD_CAP_SECONDS, Worker, download_delay

T0 = 1_000_000.0
GIVE_UP = 3600.0
CONTENT = "/videos/job-1/content"
JOB = "/videos/job-1"


@pytest.fixture
def settings(base_env, hostile_upstream):
    env = {
        **base_env,
        "MODELGATES_BASE_URL": hostile_upstream.base_url,
        "DOWNLOAD_GIVE_UP_SECONDS": str(GIVE_UP),
    }
    create_app({**env, "TESTING": True})
    return load_settings(env)


@pytest.fixture
def store(settings):
    opened = open_store(settings)
    yield opened
    opened.close()


def worker_at(settings, now: float) -> Worker:
    client = ModelGatesClient(settings.modelgates_base_url, "key", timeout=10, sleep=lambda s: 0)
    return Worker(settings, client, clock=lambda: now, rand=lambda: 0.5, owner="w")


def add_completed_job(store, *, attempts=0, failing_since=None):
    """A completed job with one output due now, asking to be notified when settled."""
    with store.transaction():
        store.insert_job(
            {
                "id": "vj_1",
                "upstream_id": "job-1",
                "callback_token": "token-1",
                "client": "client",
                "request_hash": "x",
                "status": "completed",
                "submit_outcome": "accepted",
                "model": "google/veo-3.1",
                "params": {"model": "google/veo-3.1"},
                "created_at": T0 - 100,
                "updated_at": T0 - 100,
                "outputs_known": 1,
                "notify_url": "http://127.0.0.1:9/hook",
            }
        )
        store.create_outputs("vj_1", 1, T0)
        store.update_output("vj_1", 0, {"attempts": attempts, "failing_since": failing_since})


def one_round(settings, store, now=T0):
    worker_at(settings, now).run_once(now)
    output = store.output("vj_1", 0)
    assert output["lease_owner"] is None and output["lease_expires_at"] is None
    return output


def assert_retried_later(output, now=T0, attempts=1):
    assert output["status"] == "pending" and output["bytes"] is None
    assert output["attempts"] == attempts
    assert now < output["next_attempt_at"] <= now + DOWNLOAD_CAP_SECONDS


def test_an_output_upstream_says_expired_is_failed_at_once_and_the_job_notified(
    settings, store, hostile_upstream
):
    hostile_upstream.on("GET", CONTENT, Answer.error(410, "gone"))
    hostile_upstream.on("GET", JOB, Answer.json({"id": "job-1", "status": "expired"}))
    add_completed_job(store)
    output = one_round(settings, store)
    assert output["status"] == "failed" and output["next_attempt_at"] is None
    assert output["error"].startswith("the job expired upstream:")
    assert output["attempts"] == 1 and output["failing_since"] == T0
    assert store.notifications(["vj_1"])["vj_1"]["event_type"] == "job.completed"


@pytest.mark.parametrize(
    "content, job",
    [
        (Answer.error(404), Answer.json({"id": "job-1", "status": "completed"})),
        (Answer.error(410), Answer.error(500, "down")),  # cannot tell: never a reason to give up
        (Answer.error(404), Answer.json({"id": "job-1", "state": "expired"})),
        (Answer.error(410), Answer.json({"id": "job-1", "status": "EXPIRED"})),
        (Answer.error(500), Answer.json({"id": "job-1", "status": "expired"})),  # not a 404/410
    ],
    ids=["still-completed", "lookup-fails", "no-status", "other-spelling", "server-error"],
)
def test_an_output_not_proven_gone_is_retried_later(
    settings, store, hostile_upstream, content, job
):
    hostile_upstream.on("GET", CONTENT, content)
    hostile_upstream.on("GET", JOB, job)
    add_completed_job(store)
    output = one_round(settings, store)
    assert_retried_later(output)
    assert output["error"] and output["failing_since"] == T0
    assert store.notifications(["vj_1"]) == {}  # the job is not settled yet


def test_a_download_failing_for_exactly_the_give_up_time_is_failed_and_notified(
    settings, store, hostile_upstream
):
    hostile_upstream.on("GET", CONTENT, Answer.error(500, "down"))
    add_completed_job(store, attempts=7, failing_since=T0 - GIVE_UP)
    output = one_round(settings, store)
    assert output["status"] == "failed" and output["next_attempt_at"] is None
    assert output["error"].startswith("gave up after DOWNLOAD_GIVE_UP_SECONDS:")
    assert output["attempts"] == 8 and output["failing_since"] == T0 - GIVE_UP
    assert output["updated_at"] == T0
    assert store.notifications(["vj_1"])["vj_1"]["event_type"] == "job.completed"


def test_a_download_failing_for_less_than_the_give_up_time_is_retried(
    settings, store, hostile_upstream
):
    hostile_upstream.on("GET", CONTENT, Answer.error(500, "down"))
    add_completed_job(store, attempts=7, failing_since=T0 - GIVE_UP + 1)
    output = one_round(settings, store)
    assert_retried_later(output, attempts=8)
    assert output["failing_since"] == T0 - GIVE_UP + 1
    assert store.notifications(["vj_1"]) == {}


@given(attempts=st.integers(0, 100), rand=st.floats(0.0, 1.0))
def test_download_delay_doubles_to_its_cap_with_at_most_half_off(attempts, rand):
    full = min(DOWNLOAD_CAP_SECONDS, 2.0**attempts)
    delay = download_delay(attempts, lambda: rand)
    assert full / 2 <= delay <= full
    assert delay <= download_delay(attempts + 1, lambda: rand)
    assert download_delay(attempts, lambda: rand, retry_after=full + 1) == full + 1


def test_download_delay_at_its_edges():
    assert download_delay(0, lambda: 0.0) == 0.5  # no Retry-After: nothing added
    assert download_delay(0, lambda: 1.0) == 1.0
    assert download_delay(3, lambda: 1.0) == 8.0
    assert download_delay(3, lambda: 0.5) == 6.0
    assert download_delay(40, lambda: 1.0) == DOWNLOAD_CAP_SECONDS


def add_submitting_job(store, created_at):
    """A job whose submit answer was never recorded, due for the worker's look."""
    with store.transaction():
        store.insert_job(
            {
                "id": "vj_1",
                "upstream_id": None,
                "callback_token": "token-1",
                "client": "client",
                "request_hash": "x",
                "status": "submitting",
                "model": "google/veo-3.1",
                "params": {"model": "google/veo-3.1"},
                "created_at": created_at,
                "updated_at": created_at,
                "next_poll_at": created_at,
            }
        )


@pytest.mark.parametrize(
    "age, status, outcome, next_poll",
    [
        (1.0, "submitting", None, 660.0),  # in flight: look again once it must have died
        (660.0, "submitting", "ambiguous", 3600.0),  # died: wait for a callback until the end
        (3599.0, "submitting", "ambiguous", 3600.0),  # a second early: not failed yet
        (3600.0, "submit_failed", None, None),  # SUBMIT_TIMEOUT_SECONDS: failed, not resubmitted
    ],
)
def test_a_submit_never_answered_is_failed_exactly_at_its_timeout(
    settings, store, age, status, outcome, next_poll
):
    assert (settings.submit_timeout_seconds, settings.upstream_timeout_seconds) == (3600, 60)
    add_submitting_job(store, T0)
    worker_at(settings, T0 + age).run_once(T0 + age)
    job = store.job("vj_1")
    assert (job["status"], job["submit_outcome"]) == (status, outcome)
    assert job["next_poll_at"] == (None if next_poll is None else T0 + next_poll)
    assert job["upstream_id"] is None and job["lease_owner"] is None
    if status == "submit_failed":
        assert "not resubmitted" in job["error"] and job["finished_at"] == T0 + age


class HighWater:
    """A partial file that remembers the most bytes it ever held."""

    def __init__(self, path) -> None:
        self.file = PartialFile(path, fence=1)
        self.most = 0

    @property
    def size(self) -> int:
        return self.file.size

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.most = max(self.most, self.file.size)

    def restart(self) -> None:
        self.file.restart()


def test_a_body_running_past_its_announced_end_is_never_written_past_it(hostile_upstream, tmp_path):
    video = bytes(range(256)) * 40
    hostile_upstream.on(
        "GET",
        CONTENT,
        Answer(200, video, length=None),  # no length: asked again with a range
        Answer(  # close-delimited, announcing the whole file, then going on and on
            206,
            video + b"x" * (1024 * 1024),
            length=None,
            headers=[("Content-Range", f"bytes 0-{len(video) - 1}/{len(video)}")],
        ),
    )
    target = HighWater(tmp_path / "0.mp4")
    with ModelGatesClient(hostile_upstream.base_url, "key", timeout=10) as client:
        with pytest.raises(BodyMismatch, match="longer"):
            fetch(client, "job-1", 0, target)
    assert target.most <= len(video) and target.size == 0
    target.file.discard()


def fetched(upstream, folder) -> bytes:
    """Fetch output 0 of job-1 as the worker does; the committed bytes, or raise."""
    target = PartialFile(folder / "0.mp4", fence=1)
    with ModelGatesClient(upstream.base_url, "key", timeout=10) as client:
        try:
            fetch(client, "job-1", 0, target)
        except Exception:
            target.discard()
            raise
    target.commit()
    return (folder / "0.mp4").read_bytes()


def test_an_answer_declared_identity_encoded_is_the_file(hostile_upstream, tmp_path):
    video = bytes(range(256)) * 40
    hostile_upstream.on("GET", CONTENT, Answer(200, video, encoding="identity"))
    assert fetched(hostile_upstream, tmp_path) == video


def test_a_resume_announcing_another_total_than_an_earlier_206_is_refused(
    hostile_upstream, tmp_path
):
    video = bytes(range(256)) * 40
    other = bytes(reversed(video)) + b"z" * 100  # another file, longer
    total = len(video)
    hostile_upstream.on(
        "GET",
        CONTENT,
        Answer(200, video, length=None),  # no length: asked again with a range
        Answer(  # the total comes from this 206, cut short
            206, video, headers=[("Content-Range", f"bytes 0-{total - 1}/{total}")], cut_after=4000
        ),
        Answer(  # the resume: the rest of another file
            206,
            other[4000:],
            headers=[("Content-Range", f"bytes 4000-{len(other) - 1}/{len(other)}")],
        ),
    )
    with pytest.raises(UnprovenDownload, match="changed size"):
        fetched(hostile_upstream, tmp_path)
    assert list(tmp_path.iterdir()) == []
