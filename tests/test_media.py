"""Media storage: every guarantee proved on both engines (files, and S3 on loopback)."""

from __future__ import annotations

import functools
import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from s3server import S3Server

from webhook_service.media import (
    LocalMedia,
    MediaMissing,
    MediaStorage,
    MediaUnavailable,
    open_media,
    relative_name,
    send_video,
)
from webhook_service.media.handoff import Handoff
from webhook_service.media.s3 import PART_SIZE, S3Media, parse_url

JOB = "vj_0123456789abcdef01234567"


@dataclass
class Engine:
    """A storage under test and a way to see everything it left behind."""

    storage: MediaStorage
    server: S3Server | None = None
    bucket: str = ""
    root: Path | None = None

    def leftovers(self) -> list[str]:
        """Temporary files or incomplete uploads: anything that is not a whole output."""
        if self.server is not None:
            return self.server.uploads(self.bucket)
        assert self.root is not None
        return [str(path) for path in self.root.glob("**/*.part-*")]

    def stored(self) -> list[str]:
        """Names of every whole object the storage holds."""
        if self.server is not None:
            return self.server.objects(self.bucket)
        assert self.root is not None
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob("**/*.mp4"))


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "local":
        root = tmp_path / "videos"
        return Engine(open_media(media_dir=root), root=root)
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.create_bucket()
    storage = open_media(media_storage=f"s3://{bucket}/media", environ=server.environ())
    return Engine(storage, server=server, bucket=bucket)


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def write_in_chunks(target: object, data: bytes) -> None:
    """Write ``data`` in irregular chunks, as a network body arrives."""
    sizes = random.Random(len(data)).choices([1, 1000, 65536, 1 << 20, 3 << 20], k=len(data) + 1)
    position = 0
    for size in sizes:
        if position >= len(data):
            break
        target.write(data[position : position + size])  # type: ignore[attr-defined]
        position += size


def read_back(storage: MediaStorage, index: int = 0) -> bytes:
    with storage.open(JOB, index) as stream:
        return stream.read()


@pytest.mark.parametrize("size", [0, 1000, PART_SIZE, 2 * PART_SIZE + 12345])
def test_a_committed_output_reads_back_whole_with_its_sha256(engine: Engine, size: int) -> None:
    data = payload(size)
    target = engine.storage.open_partial(JOB, 0, fence=1)
    write_in_chunks(target, data)
    assert (target.size, target.sha256) == (size, hashlib.sha256(data).hexdigest())
    target.commit()
    assert engine.storage.exists(JOB, 0)
    assert read_back(engine.storage) == data
    assert engine.leftovers() == []
    assert engine.storage.name(JOB, 0) == f"{JOB}/0.mp4"


def test_nothing_appears_under_the_final_name_before_commit(engine: Engine) -> None:
    data = payload(PART_SIZE + 5)
    target = engine.storage.open_partial(JOB, 0, fence=1)
    target.write(data)  # more than one part: an upload is under way
    assert engine.leftovers() != []
    assert not engine.storage.exists(JOB, 0)
    assert engine.stored() == []
    with pytest.raises(MediaMissing):
        engine.storage.open(JOB, 0)
    target.commit()
    assert engine.storage.exists(JOB, 0)
    assert len(engine.stored()) == 1
    assert engine.leftovers() == []


def test_restart_drops_everything_written_before(engine: Engine) -> None:
    first, second = payload(PART_SIZE + 7, seed=1), payload(3000, seed=2)
    target = engine.storage.open_partial(JOB, 0, fence=1)
    target.write(first)
    target.restart()
    assert (target.size, target.sha256) == (0, hashlib.sha256(b"").hexdigest())
    target.write(second)
    target.commit()
    assert read_back(engine.storage) == second
    assert target.sha256 == hashlib.sha256(second).hexdigest()
    assert engine.leftovers() == []


@pytest.mark.parametrize("size", [10, PART_SIZE + 10])
def test_discard_leaves_nothing_behind(engine: Engine, size: int) -> None:
    target = engine.storage.open_partial(JOB, 0, fence=1)
    target.write(payload(size))
    target.discard()
    target.discard()  # twice is harmless
    assert not engine.storage.exists(JOB, 0)
    assert engine.stored() == []
    assert engine.leftovers() == []


def test_remove_stale_clears_what_a_dead_claim_left_and_only_for_that_output(
    engine: Engine,
) -> None:
    dead = engine.storage.open_partial(JOB, 1, fence=1)
    dead.write(payload(PART_SIZE + 1))  # the worker is killed here: no discard
    neighbour = engine.storage.open_partial(JOB, 10, fence=1)
    neighbour.write(payload(PART_SIZE + 1))
    assert len(engine.leftovers()) == 2

    engine.storage.remove_stale(JOB, 1)
    assert len(engine.leftovers()) == 1  # output 10's upload is not output 1's
    engine.storage.remove_stale(JOB, 1)  # nothing left to remove: fine

    data = payload(2000, seed=3)
    again = engine.storage.open_partial(JOB, 1, fence=2)
    again.write(data)
    again.commit()
    assert read_back(engine.storage, 1) == data
    neighbour.discard()
    assert engine.leftovers() == []


def test_serving_an_output_honours_range(engine: Engine) -> None:
    data = payload(100_000)
    target = engine.storage.open_partial(JOB, 0, fence=1)
    target.write(data)
    target.commit()
    served = engine.storage.serve(JOB, 0)
    if engine.server is None:
        assert served.url is None and served.path is not None
        assert served.path.read_bytes() == data
        return
    assert served.path is None and served.url is not None
    url = urlsplit(served.url)
    assert url.hostname == "127.0.0.1"
    assert 0 < int(parse_qs(url.query)["X-Amz-Expires"][0]) <= 15 * 60
    # No credentials: the URL alone gives the bytes, and Range works there.
    whole = httpx.get(served.url)
    assert whole.status_code == 200 and whole.content == data
    part = httpx.get(served.url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.content == data[1000:2000]
    assert part.headers["Content-Type"] == "video/mp4"


def test_send_video_builds_the_whole_answer_for_a_view(engine: Engine) -> None:
    data = payload(50_000)
    target = engine.storage.open_partial(JOB, 0, fence=1)
    target.write(data)
    target.commit()
    app = Flask(__name__)

    @app.get("/video")
    def video():  # type: ignore[no-untyped-def]
        return send_video(engine.storage, JOB, 0, etag=target.sha256)

    answer = app.test_client().get("/video", headers={"Range": "bytes=10-19"})
    assert answer.headers["Cache-Control"].startswith("private")
    if engine.server is None:
        assert answer.status_code == 206
        assert answer.data == data[10:20]
        assert answer.headers["Content-Type"] == "video/mp4"
        return
    assert answer.status_code == 307
    assert "no-store" in answer.headers["Cache-Control"]
    assert answer.get_json() == {"url": answer.headers["Location"]}  # JSON, like every answer
    followed = httpx.get(answer.headers["Location"], headers={"Range": "bytes=10-19"})
    assert followed.status_code == 206 and followed.content == data[10:20]


def test_a_missing_output_is_reported_as_missing(engine: Engine) -> None:
    assert not engine.storage.exists(JOB, 3)
    with pytest.raises(MediaMissing):
        engine.storage.open(JOB, 3)
    if engine.server is None:
        with pytest.raises(MediaMissing):
            engine.storage.serve(JOB, 3)
    else:
        # S3 answers 403 rather than 404 when the signer may not list the bucket.
        assert httpx.get(engine.storage.serve(JOB, 3).url or "").status_code in (403, 404)


def test_a_reachable_storage_passes_its_start_check(engine: Engine) -> None:
    engine.storage.check()


def test_a_bucket_that_does_not_exist_fails_the_start_check_in_one_line(
    s3_server: S3Server,
) -> None:
    storage = open_media(media_storage="s3://no-such-bucket-here", environ=s3_server.environ())
    with pytest.raises(MediaUnavailable) as caught:
        storage.check()
    message = str(caught.value)
    assert "\n" not in message
    assert "s3://no-such-bucket-here/" in message and "does not exist" in message


def test_an_endpoint_nobody_listens_on_fails_the_start_check_in_one_line(
    s3_server: S3Server,
) -> None:
    env = {**s3_server.environ(), "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
    storage = open_media(media_storage="s3://some-bucket", environ=env)
    with pytest.raises(MediaUnavailable) as caught:
        storage.check()
    assert "\n" not in str(caught.value)
    assert "127.0.0.1:9" in str(caught.value)


def test_an_unusable_media_dir_fails_the_start_check(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the folder should be")
    with pytest.raises(MediaUnavailable, match="cannot be created"):
        LocalMedia(tmp_path / "taken" / "videos").check()


def test_a_bucket_gone_while_writing_is_an_os_error_and_discard_still_returns(
    s3_server: S3Server,
) -> None:
    bucket = s3_server.create_bucket()
    storage = open_media(media_storage=f"s3://{bucket}", environ=s3_server.environ())
    target = storage.open_partial(JOB, 0, fence=1)
    target.write(payload(PART_SIZE + 1))
    target.discard()
    s3_server.client().delete_bucket(Bucket=bucket)
    target = storage.open_partial(JOB, 0, fence=2)
    target.write(b"x" * 100)
    with pytest.raises(OSError, match="does not exist"):
        target.commit()
    target.discard()
    with pytest.raises(MediaUnavailable):
        storage.remove_stale(JOB, 0)


def test_the_factory_picks_the_engine_from_the_settings(tmp_path: Path) -> None:
    local = open_media(SimpleNamespace(media_dir=tmp_path, media_storage=None))
    assert isinstance(local, LocalMedia) and local.describe() == str(tmp_path)
    assert isinstance(open_media(SimpleNamespace(media_dir=tmp_path)), LocalMedia)
    s3 = open_media(SimpleNamespace(media_dir=tmp_path, media_storage="s3://bkt/a/b/"))
    assert isinstance(s3, S3Media) and (s3.bucket, s3.prefix) == ("bkt", "a/b/")
    assert s3.key(JOB, 2) == f"a/b/{JOB}/2.mp4"
    parsed = SimpleNamespace(bucket="bkt", prefix="")
    assert open_media(SimpleNamespace(media_storage=parsed)).describe() == "s3://bkt/"
    assert parse_url("s3://bkt") == ("bkt", "")
    for bad in ("bkt", "s3://", "https://bkt/x"):
        with pytest.raises(ValueError):
            parse_url(bad)
    with pytest.raises(ValueError):
        open_media()


def test_the_endpoint_comes_from_the_standard_variables(s3_server: S3Server) -> None:
    generic = {**s3_server.environ()}
    generic["AWS_ENDPOINT_URL"] = generic.pop("AWS_ENDPOINT_URL_S3")
    assert S3Media("b", environ=generic).client.meta.endpoint_url == s3_server.endpoint
    both = {**generic, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:1"}
    assert S3Media("b", environ=both).client.meta.endpoint_url == "http://127.0.0.1:1"
    url = S3Media("bkt", environ=generic).serve(JOB, 0).url or ""
    assert url.startswith(f"{s3_server.endpoint}/bkt/")  # path style with an endpoint


@given(st.text(max_size=30), st.integers(min_value=0, max_value=2**63 - 1))
def test_a_name_is_built_only_from_one_of_our_ids(job_id: str, index: int) -> None:
    try:
        name = relative_name(job_id, index)
    except ValueError:
        return
    folder, file = name.split("/")
    assert folder == job_id and file == f"{index}.mp4"
    assert folder not in {".", ".."} and os.sep not in folder


def test_old_names_stay_importable(tmp_path: Path) -> None:
    from webhook_service.media import PartialFile, output_path, remove_stale_parts

    final = output_path(tmp_path, JOB, 0)
    part = PartialFile(final, fence=4)
    part.write(b"abc")
    remove_stale_parts(final)
    assert not part.path.exists()
    part.discard()


def test_a_claim_whose_leftovers_were_removed_cannot_commit(engine: Engine) -> None:
    stalled = engine.storage.open_partial(JOB, 0, fence=1)
    stalled.write(payload(PART_SIZE + 3, seed=4))  # under way when its claim is taken over
    engine.storage.remove_stale(JOB, 0)
    data = payload(PART_SIZE + 9, seed=5)
    taken_over = engine.storage.open_partial(JOB, 0, fence=2)
    taken_over.write(data)
    taken_over.commit()
    stalled.write(b"more")
    with pytest.raises(OSError):
        stalled.commit()
    stalled.discard()
    assert read_back(engine.storage) == data
    assert engine.leftovers() == []


def test_the_server_can_run_in_its_own_process() -> None:
    with S3Server(separate_process=True) as server:
        bucket = server.create_bucket()
        storage = open_media(media_storage=f"s3://{bucket}", environ=server.environ())
        target = storage.open_partial(JOB, 0, fence=1)
        target.write(b"bytes in another process")
        target.commit()
        assert read_back(storage) == b"bytes in another process"
    with pytest.raises(MediaUnavailable):
        storage.check()


# Work handed to a second thread -------------------------------------------------------


def test_a_handoff_runs_its_tasks_in_order_and_waits_for_them() -> None:
    done: list[int] = []
    handoff = Handoff("test", backlog=2)
    for n in range(50):
        handoff.submit(functools.partial(done.append, n))
    handoff.wait()
    assert done == list(range(50))


def test_a_handoff_holds_no_more_than_its_backlog() -> None:
    gate, started = threading.Event(), threading.Event()
    handoff = Handoff("test", backlog=1)
    handoff.submit(lambda: (started.set(), gate.wait(10)))
    assert started.wait(10)
    handoff.submit(lambda: None)  # the backlog is full now
    third = threading.Thread(target=handoff.submit, args=(lambda: None,))
    third.start()
    third.join(0.2)
    assert third.is_alive()  # it waits for room
    gate.set()
    third.join(10)
    assert not third.is_alive()
    handoff.wait()


def test_a_task_error_is_raised_to_the_caller_and_what_follows_is_dropped() -> None:
    done: list[int] = []
    gate = threading.Event()
    handoff = Handoff("test", backlog=3)

    def fail() -> None:
        gate.wait(10)
        raise OSError(28, "No space left on device")

    handoff.submit(fail)
    handoff.submit(functools.partial(done.append, 1))
    gate.set()
    with pytest.raises(OSError, match="No space"):
        handoff.wait()
    with pytest.raises(OSError, match="No space"):
        handoff.submit(functools.partial(done.append, 2))
    assert done == []
    handoff.cancel()  # forgets the error
    handoff.submit(functools.partial(done.append, 3))
    handoff.wait()
    assert done == [3]


def test_a_handoff_left_idle_ends_its_thread() -> None:
    handoff = Handoff("idle-handoff-under-test")
    handoff.submit(lambda: None)
    handoff.wait()
    deadline = time.monotonic() + 10
    while any(t.name == handoff.name for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the idle thread did not end"
        time.sleep(0.05)
    handoff.submit(lambda: None)  # and a new one starts when work comes again
    handoff.wait()


def test_a_part_the_bucket_refuses_is_an_os_error_from_a_later_write(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    storage = open_media(media_storage=f"s3://{bucket}", environ=s3_server.environ())
    target = storage.open_partial(JOB, 0, fence=1)
    target.write(payload(PART_SIZE))  # part 1 is sent from the second thread
    storage.remove_stale(JOB, 0)  # the upload is aborted under it
    with pytest.raises(OSError, match="upload a part"):
        for seed in range(2, 5):  # part 2 is refused; handing over part 3 raises that
            target.write(payload(PART_SIZE, seed=seed))
    target.discard()
    assert s3_server.objects(bucket) == [] and s3_server.uploads(bucket) == []
