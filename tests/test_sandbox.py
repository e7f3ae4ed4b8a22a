"""The sandbox upstream behaves like ModelGates, checked over real loopback sockets."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from webhook_service.sandbox import SandboxServer, SandboxSettings
from webhook_service.signatures import verify

AUTH = {"Authorization": "Bearer sandbox-key"}
TINY = {"model": "sandbox/tiny", "prompt": "a fox", "duration": 2}


@pytest.fixture
def upstream():
    server = SandboxServer(settings=SandboxSettings(pending_seconds=5, in_progress_seconds=5))
    with server:
        yield server


def submit(upstream, body=TINY, **parameters):
    if parameters:
        body = {**body, "provider": {"options": {"sandbox": {"parameters": parameters}}}}
    return httpx.post(f"{upstream.base_url}/videos", json=body, headers=AUTH)


def wait_until(check, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_every_endpoint_needs_the_bearer_key(upstream):
    for path in ("/videos/models", "/videos/job-x", "/videos/job-x/content"):
        response = httpx.get(upstream.base_url + path, headers={"Authorization": "Bearer no"})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == 401


def test_models_list_every_documented_field(upstream):
    models = httpx.get(f"{upstream.base_url}/videos/models", headers=AUTH).json()["data"]
    fields = {
        "id",
        "canonical_slug",
        "name",
        "description",
        "created",
        "supported_resolutions",
        "supported_aspect_ratios",
        "supported_sizes",
        "supported_durations",
        "supported_frame_images",
        "generate_audio",
        "seed",
        "pricing_skus",
        "allowed_passthrough_parameters",
    }
    assert all(fields <= set(model) for model in models)
    assert {"google/veo-3.1", "sandbox/tiny", "sandbox/upscaler"} == {m["id"] for m in models}


def test_submit_answers_202_and_status_follows_the_clock(upstream):
    answer = submit(upstream)
    assert answer.status_code == 202
    job = answer.json()
    assert job["status"] == "pending" and job["polling_url"] == f"/api/v1/videos/{job['id']}"
    poll = lambda: httpx.get(f"{upstream.base_url}/videos/{job['id']}", headers=AUTH).json()  # noqa: E731
    assert poll()["status"] == "pending"
    upstream.advance(6)
    assert poll()["status"] == "in_progress"
    upstream.advance(5)
    done = poll()
    assert done["status"] == "completed" and done["usage"]["cost"] == 0.5
    assert done["unsigned_urls"] == [f"{upstream.base_url}/videos/{job['id']}/content?index=0"]


@pytest.mark.parametrize(
    "change, status",
    [
        ({"duration": 11}, 400),
        ({"resolution": "4K"}, 400),
        ({"aspect_ratio": "21:9"}, 400),
        ({"model": "google/veo-3.1", "duration": 8, "size": "640x480"}, 400),
        (
            {
                "frame_images": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x/a.png"},
                        "frame_type": "last_frame",
                    }
                ]
            },
            400,
        ),
        ({"generate_audio": True}, 400),
        ({"seed": 3}, 400),
        ({"model": "acme/none"}, 404),
        ({"prompt": None}, 400),
    ],
)
def test_values_outside_the_models_capabilities_are_refused(upstream, change, status):
    body = {k: v for k, v in {**TINY, **change}.items() if v is not None}
    response = submit(upstream, body)
    assert response.status_code == status
    assert response.json()["error"]["message"]
    assert upstream.stats()["submits"] == 1 and upstream.jobs() == []


def test_content_is_404_before_completion_then_whole_and_ranged(upstream):
    upstream.settings.content_size = 3_000_000
    job = submit(upstream, outputs=2).json()
    url = f"{upstream.base_url}/videos/{job['id']}/content"
    assert httpx.get(url, headers=AUTH).status_code == 404
    upstream.advance(20)
    assert httpx.get(f"{url}?index=2", headers=AUTH).status_code == 400
    whole = httpx.get(f"{url}?index=1", headers=AUTH)
    assert whole.status_code == 200 and len(whole.content) == 3_000_000
    assert hashlib.sha256(whole.content).hexdigest() == upstream.expected_sha256(job["id"], 1)
    assert upstream.expected_sha256(job["id"], 0) != upstream.expected_sha256(job["id"], 1)
    part = httpx.get(f"{url}?index=1", headers={**AUTH, "Range": "bytes=1000-"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == "bytes 1000-2999999/3000000"
    assert part.content == whole.content[1000:]
    upstream.settings.range_support = "ignore"
    assert httpx.get(f"{url}?index=1", headers={**AUTH, "Range": "bytes=5-"}).status_code == 200


def test_the_default_content_is_a_real_mp4(upstream):
    job = submit(upstream).json()
    upstream.advance(20)
    video = httpx.get(f"{upstream.base_url}/videos/{job['id']}/content", headers=AUTH)
    assert video.headers["Content-Type"] == "video/mp4" and video.content[4:8] == b"ftyp"


class Receiver:
    """A tiny loopback HTTP server that records what it is sent."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def test_signed_callbacks_reach_the_callback_url(upstream, receiver):
    job = submit(upstream, {**TINY, "callback_url": receiver.url}).json()
    upstream.advance(20)
    wait_until(lambda: receiver.received)
    headers, body = receiver.received[0]
    assert verify(body, headers, ["sandbox-secret"], time.time())
    assert headers["X-OpenRouter-Idempotency-Key"] == f"{job['id']}-completed"
    event = json.loads(body)
    assert event["type"] == "video.generation.completed" and event["data"]["id"] == job["id"]


def test_drop_and_duplicate_knobs(upstream, receiver):
    dropped = submit(upstream, {**TINY, "callback_url": receiver.url}, callback="drop").json()
    doubled = submit(upstream, {**TINY, "callback_url": receiver.url}, callback="duplicate").json()
    upstream.advance(20)
    wait_until(lambda: len(receiver.received) == 2)
    time.sleep(0.2)
    ids = [json.loads(body)["data"]["id"] for _, body in receiver.received]
    assert ids == [doubled["id"], doubled["id"]] and dropped["id"] not in ids
    assert upstream.stats()["callbacks_dropped"] == 1


def test_callbacks_are_only_sent_to_loopback(upstream):
    job = submit(upstream, {**TINY, "callback_url": "https://videos.example.com/hook"}).json()
    upstream.advance(20)
    wait_until(lambda: upstream.job(job["id"])["callback_attempts"])
    assert "loopback" in upstream.job(job["id"])["callback_attempts"][0]["error"]


def test_fault_queue_scripts_answers(upstream):
    upstream.add_fault("submit", 429, retry_after=7)
    limited = submit(upstream)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert limited.json()["error"]["metadata"]["error_type"] == "rate_limit_exceeded"
    upstream.add_fault("submit", 500, after_create=True)
    assert submit(upstream).status_code == 500
    assert len(upstream.jobs()) == 1  # created even though the answer said 500
    upstream.settings.content_size = 2_000_000
    job = submit(upstream).json()
    upstream.advance(20)
    upstream.add_fault("content", 200, truncate_at=1000)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{upstream.base_url}/videos/{job['id']}/content", headers=AUTH)


def test_the_official_openrouter_sdk_parses_every_answer(upstream):
    openrouter = pytest.importorskip("openrouter")
    with openrouter.OpenRouter(api_key="sandbox-key", server_url=upstream.base_url) as client:
        models = client.video_generation.list_videos_models()
        assert {m.id for m in models.data} >= {"google/veo-3.1", "sandbox/tiny"}
        created = client.video_generation.generate(
            model="google/veo-3.1",
            prompt="a lighthouse",
            duration=8,
            resolution="720p",
            aspect_ratio="16:9",
        )
        assert created.status == "pending"
        upstream.advance(20)
        job = client.video_generation.get_generation(job_id=created.id)
        assert job.status == "completed" and len(job.unsigned_urls) == 1
        content = client.video_generation.get_video_content(job_id=created.id, index=0)
        assert content.read()[4:8] == b"ftyp"
        with pytest.raises(Exception) as refused:
            client.video_generation.generate(model="google/veo-3.1", prompt="x", duration=5)
        assert "400" in str(refused.value) or "duration" in str(refused.value)
