"""The sandbox upstream behaves like ModelGates, checked over real loopback sockets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from webhook_service.sandbox import SandboxServer, SandboxSettings
from webhook_service.sandbox.cli import sandbox_command
from webhook_service.sandbox.content import sample_video
from webhook_service.signatures import verify

REPO = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": "Bearer sandbox-key"}
TINY = {"model": "sandbox/tiny", "prompt": "a fox", "duration": 2}
VEO = {"model": "google/veo-3.1", "prompt": "a lighthouse", "duration": 8, "resolution": "720p"}
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def upstream() -> Iterator[SandboxServer]:
    with SandboxServer(
        settings=SandboxSettings(pending_seconds=5, in_progress_seconds=5)
    ) as server:
        yield server


@pytest.fixture
def api(upstream: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.base_url, headers=AUTH, timeout=10) as client:
        yield client


def with_sandbox(body: dict[str, Any], **parameters: Any) -> dict[str, Any]:
    return {**body, "provider": {"options": {"sandbox": {"parameters": parameters}}}}


def wait_until(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


class Receiver:
    """A loopback HTTP server that records callbacks and answers from a script (then 204)."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received, script = self.received, list(answers or [])

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(script.pop(0) if script else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        serve = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        serve.start()

    def ids(self) -> list[str]:
        return [json.loads(body)["data"]["id"] for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


# The API -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/videos/models"),
        ("POST", "/videos"),
        ("GET", "/videos/job-x"),
        ("GET", "/videos/job-x/content"),
    ],
)
def test_every_api_endpoint_needs_the_bearer_key(upstream, method, path):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "sandbox-key"}):
        response = httpx.request(method, upstream.base_url + path, headers=headers, json=TINY)
        assert response.status_code == 401
        assert response.json() == {
            "error": {
                "code": 401,
                "message": "missing or invalid API key",
                "metadata": {"error_type": "unauthorized"},
            },
            "user_id": None,
        }
    assert upstream.stats()["unauthorized"] == 3 and upstream.jobs() == []


def test_models_list_the_documented_fields_and_capabilities(api):
    models = {m["id"]: m for m in api.get("/videos/models").json()["data"]}
    documented = {
        "id", "canonical_slug", "name", "description", "created", "supported_resolutions",
        "supported_aspect_ratios", "supported_sizes", "supported_durations",
        "supported_frame_images", "generate_audio", "seed", "pricing_skus",
        "allowed_passthrough_parameters", "upscale_factor", "creativity",
    }  # fmt: skip
    assert set(models) == {"google/veo-3.1", "sandbox/tiny", "sandbox/upscaler"}
    assert all(set(model) == documented for model in models.values())
    veo, tiny, upscaler = (
        models["google/veo-3.1"],
        models["sandbox/tiny"],
        models["sandbox/upscaler"],
    )
    assert veo["supported_durations"] == [4, 6, 8] and veo["generate_audio"] is True
    assert veo["supported_sizes"] == ["1280x720", "720x1280", "1920x1080", "1080x1920"]
    assert veo["supported_frame_images"] == ["first_frame", "last_frame"] and veo["seed"] is True
    assert tiny["supported_durations"] == list(range(1, 11)) and tiny["supported_sizes"] is None
    assert tiny["supported_aspect_ratios"] == ["16:9", "9:16", "1:1"] and tiny["seed"] is None
    assert tiny["generate_audio"] is False and tiny["supported_frame_images"] == ["first_frame"]
    capability_keys = [k for k in documented if k.startswith("supported_")]
    assert all(upscaler[k] is None for k in [*capability_keys, "generate_audio", "seed"])
    assert upscaler["upscale_factor"] and upscaler["creativity"]


def test_submit_answers_202_and_the_status_follows_the_sandbox_clock(upstream, api):
    answer = api.post("/videos", json=TINY)
    assert answer.status_code == 202
    job = answer.json()
    assert set(job) == {"id", "polling_url", "status", "generation_id"}
    assert job["id"].startswith("job-") and job["generation_id"].startswith("gen-")
    assert job["status"] == "pending" and job["polling_url"] == f"/api/v1/videos/{job['id']}"
    assert upstream.job(job["id"])["params"] == TINY
    assert api.get(job["polling_url"].removeprefix("/api/v1")).json()["status"] == "pending"
    upstream.advance(5)
    assert api.get(f"/videos/{job['id']}").json()["status"] == "in_progress"
    upstream.advance(5)
    done = api.get(f"/videos/{job['id']}").json()
    assert done["status"] == "completed" and done["usage"] == {"cost": 0.5, "is_byok": False}
    assert done["unsigned_urls"] == [f"{upstream.base_url}/videos/{job['id']}/content?index=0"]
    assert done["expires_at"] > time.time()
    missing = api.get("/videos/job-unknown")
    assert missing.status_code == 404 and "job-unknown" in missing.json()["error"]["message"]
    assert upstream.stats()["submits"] == 1 and upstream.stats()["polls"] == 4


@pytest.mark.parametrize(
    "change, field",
    [
        ({"duration": 11}, "duration"),
        ({"duration": "4"}, "duration"),
        ({"resolution": "1080p"}, "resolution"),
        ({"aspect_ratio": "21:9"}, "aspect_ratio"),
        ({**VEO, "size": "640x480"}, "size"),
        ({"generate_audio": True}, "generate_audio"),
        ({"seed": 3}, "seed"),
        ({**VEO, "seed": "3"}, "seed"),
        ({"model": "sandbox/upscaler", "seed": 1, "duration": None}, "seed"),
        ({**VEO, "upscale_factor": 2}, "upscale_factor"),
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"callback_url": "not a url"}, "callback_url"),
        (
            {"frame_images": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
            "frame_type",
        ),
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
            "frame_type",
        ),
        (
            {"input_references": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]},
            "input_references[0].image_url.url",
        ),
        (with_sandbox(TINY, outcome="exploded"), "outcome"),
        (with_sandbox(TINY, outputs=0), "outputs"),
    ],
)
def test_values_outside_the_models_capabilities_are_400_naming_the_field(
    upstream, api, change, field
):
    body = {k: v for k, v in {**TINY, **change}.items() if v is not None}
    response = api.post("/videos", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and field in error["message"]
    assert error["metadata"] == {"error_type": "invalid_request"}
    assert upstream.jobs() == []


def test_an_unknown_model_is_404_naming_it(api):
    response = api.post("/videos", json={**TINY, "model": "acme/none"})
    assert response.status_code == 404 and "acme/none" in response.json()["error"]["message"]


def test_bodies_using_every_field_are_accepted(upstream, api):
    frame = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    full = {
        **VEO,
        "aspect_ratio": "9:16",
        "size": "720x1280",
        "generate_audio": True,
        "seed": 42,
        "frame_images": [
            {**frame, "frame_type": "first_frame"},
            {**frame, "frame_type": "last_frame"},
        ],
        "input_references": [{"type": "video_url", "video_url": {"url": "https://x/v.mp4"}}],
        "callback_url": "https://127.0.0.1:1/hook",
        "provider": {"options": {"google-vertex": {"parameters": {"negative_prompt": "rain"}}}},
        "something_new": {"ignored": True},
    }
    frames_only = {
        "model": "sandbox/tiny",
        "frame_images": [{**frame, "frame_type": "first_frame"}],
    }
    upscale = {"model": "sandbox/upscaler", "prompt": "sharper", "upscale_factor": 2.5}
    for body in (full, frames_only, {**upscale, "creativity": 3}):
        assert api.post("/videos", json=body).status_code == 202, body
    assert len(upstream.jobs()) == 3


def test_require_https_callbacks_refuses_plain_http(upstream, api):
    upstream.settings.require_https_callbacks = True
    refused = api.post("/videos", json={**TINY, "callback_url": "http://127.0.0.1/hook"})
    assert refused.status_code == 400 and "https" in refused.json()["error"]["message"]
    assert (
        api.post("/videos", json={**TINY, "callback_url": "https://127.0.0.1/h"}).status_code == 202
    )


def test_a_body_over_50_mib_is_413_without_reading_it(upstream):
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/videos HTTP/1.1\r\nHost: sandbox\r\n"
            b"Authorization: Bearer sandbox-key\r\nContent-Type: application/json\r\n"
            b"Content-Length: 52428801\r\n\r\n{"
        )
        answer = b""
        while chunk := sock.recv(65536):  # the sandbox closes: it never reads the body
            answer += chunk
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413") and json.loads(body)["error"]["code"] == 413


# Content ---------------------------------------------------------------------------------


def test_content_is_404_before_completion_then_served_with_the_expected_sha256(upstream, api):
    upstream.settings.content_size = 3_000_000
    job = api.post("/videos", json=with_sandbox(TINY, outputs=2)).json()
    url = f"/videos/{job['id']}/content"
    early = api.get(url)
    assert early.status_code == 404 and "not ready" in early.json()["error"]["message"]
    upstream.advance(10)
    assert api.get(f"{url}?index=2").status_code == 400
    assert api.get(f"{url}?index=x").status_code == 400
    whole = api.get(f"{url}?index=1")
    assert whole.status_code == 200 and whole.headers["Content-Type"] == "video/mp4"
    assert whole.headers["Content-Length"] == "3000000" and len(whole.content) == 3_000_000
    digest = hashlib.sha256(whole.content).hexdigest()
    assert digest == upstream.expected_sha256(job["id"], 1)
    assert upstream.expected_sha256(job["id"], 0) != digest
    served = upstream.job(job["id"])
    assert [o["sha256"] for o in served["outputs"]] == [
        upstream.expected_sha256(job["id"], 0),
        digest,
    ]
    counted = {"0": 1, "1": 1, "2": 1}  # every request naming an integer index counts
    assert served["content_requests"] == counted
    assert upstream.stats()["content_requests_by_output"] == {job["id"]: counted}


def test_ranges_are_206_or_ignored_as_configured(upstream, api):
    upstream.settings.content_size = 2_000_000
    job = api.post("/videos", json=TINY).json()
    upstream.advance(10)
    url = f"/videos/{job['id']}/content"
    whole = api.get(url).content
    for header, start, stop in (
        ("bytes=1000-", 1000, 2_000_000),
        ("bytes=10-19", 10, 20),
        ("bytes=-100", 1_999_900, 2_000_000),
    ):
        part = api.get(url, headers={"Range": header})
        assert part.status_code == 206 and part.content == whole[start:stop]
        assert part.headers["Content-Range"] == f"bytes {start}-{stop - 1}/2000000"
    beyond = api.get(url, headers={"Range": "bytes=2000000-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == "bytes */2000000"
    upstream.settings.range_support = "ignore"
    ignored = api.get(url, headers={"Range": "bytes=5-"})
    assert ignored.status_code == 200 and ignored.content == whole


def test_the_default_content_is_the_bundled_real_mp4(upstream, api):
    video = sample_video()
    assert video[4:8] == b"ftyp" and len(video) < 30_000
    assert b"avc1" in video and video.index(b"moov") < video.index(b"mdat")  # faststart
    job = api.post("/videos", json=TINY).json()
    upstream.advance(10)
    served = api.get(f"/videos/{job['id']}/content")
    assert served.content == video
    assert upstream.expected_sha256(job["id"], 0) == hashlib.sha256(video).hexdigest()


@pytest.mark.parametrize("outcome", ["failed", "cancelled", "expired"])
def test_unsuccessful_outcomes_carry_an_error_and_no_content(upstream, api, outcome):
    job = api.post("/videos", json=with_sandbox(TINY, outcome=outcome)).json()
    upstream.advance(10)
    polled = api.get(f"/videos/{job['id']}").json()
    assert polled["status"] == outcome and polled["error"] and "unsigned_urls" not in polled
    assert api.get(f"/videos/{job['id']}/content").status_code == 404


# Callbacks -------------------------------------------------------------------------------


def test_a_signed_callback_reaches_a_loopback_receiver(upstream, api, receiver):
    job = api.post("/videos", json={**TINY, "callback_url": receiver.url}).json()
    upstream.advance(10)
    wait_until(lambda: upstream.job(job["id"])["callback_state"] == "delivered")
    [(headers, body)] = receiver.received
    assert verify(body, headers, ["sandbox-secret"], time.time())
    assert headers["X-OpenRouter-Idempotency-Key"] == f"{job['id']}-completed"
    assert headers["Content-Type"] == "application/json"
    event = json.loads(body)
    assert event["type"] == "video.generation.completed" and ISO_MS.match(event["created_at"])
    assert event["data"] == {
        "id": job["id"],
        "status": "completed",
        "generation_id": job["generation_id"],
        "model": "sandbox/tiny",
        "unsigned_urls": [f"{upstream.base_url}/videos/{job['id']}/content?index=0"],
        "usage": {"cost": 0.5, "is_byok": False},
    }
    [attempt] = upstream.job(job["id"])["callback_attempts"]
    assert attempt["status"] == 204 and attempt["error"] is None
    assert upstream.stats()["callbacks_sent"] == 1


def test_a_failed_job_is_called_back_with_its_error(upstream, api, receiver):
    body = with_sandbox({**TINY, "callback_url": receiver.url}, outcome="failed")
    job = api.post("/videos", json=body).json()
    upstream.advance(10)
    wait_until(lambda: receiver.received)
    event = json.loads(receiver.received[0][1])
    assert event["type"] == "video.generation.failed" and event["data"]["error"]
    assert "unsigned_urls" not in event["data"]
    assert receiver.received[0][0]["X-OpenRouter-Idempotency-Key"] == f"{job['id']}-failed"


def test_a_callback_answered_500_is_retried():
    flaky = Receiver(answers=[500, 503])
    with SandboxServer(settings=SandboxSettings(pending_seconds=0, in_progress_seconds=0)) as up:
        job = httpx.post(
            f"{up.base_url}/videos", json={**TINY, "callback_url": flaky.url}, headers=AUTH
        )
        wait_until(lambda: up.job(job.json()["id"])["callback_state"] == "delivered")
        attempts = up.job(job.json()["id"])["callback_attempts"]
    flaky.close()
    assert [a["status"] for a in attempts] == [500, 503, 204] and len(flaky.received) == 3


def test_callbacks_go_to_loopback_hosts_only(upstream, api):
    job = api.post("/videos", json={**TINY, "callback_url": "https://videos.example.com/h"}).json()
    upstream.advance(10)
    wait_until(lambda: upstream.job(job["id"])["callback_state"] == "failed")
    [attempt] = upstream.job(job["id"])["callback_attempts"]
    assert "loopback" in attempt["error"] and attempt["status"] is None
    assert upstream.stats()["callbacks_failed"] == 1


def test_drop_and_duplicate_per_job_and_by_share(upstream, api, receiver):
    hook = {**TINY, "callback_url": receiver.url}
    dropped = api.post("/videos", json=with_sandbox(hook, callback="drop")).json()
    doubled = api.post("/videos", json=with_sandbox(hook, callback="duplicate")).json()
    upstream.settings.drop_callbacks = 1.0
    shared_drop = api.post("/videos", json=hook).json()
    upstream.settings.drop_callbacks, upstream.settings.duplicate_callbacks = 0.0, 1.0
    shared_double = api.post("/videos", json=hook).json()
    upstream.advance(10)
    wait_until(lambda: len(receiver.received) == 4)
    assert sorted(receiver.ids()) == sorted([doubled["id"]] * 2 + [shared_double["id"]] * 2)
    keys = {headers["X-OpenRouter-Idempotency-Key"] for headers, _ in receiver.received}
    assert keys == {f"{doubled['id']}-completed", f"{shared_double['id']}-completed"}
    for job in (dropped, shared_drop):
        assert upstream.job(job["id"])["callback_state"] == "dropped"
    stats = upstream.stats()
    assert stats["callbacks_dropped"] == 2 and stats["callbacks_duplicated"] == 2


def test_callback_delay_runs_on_the_sandbox_clock(upstream, api, receiver):
    upstream.settings.callback_delay_seconds = 60
    job = api.post("/videos", json={**TINY, "callback_url": receiver.url}).json()
    upstream.advance(10)
    assert api.get(f"/videos/{job['id']}").json()["status"] == "completed"
    time.sleep(0.2)  # the dispatcher would have sent it by now without the delay
    assert receiver.received == []
    upstream.advance(60)
    wait_until(lambda: receiver.received)


def test_reordered_callbacks_all_arrive_once(upstream, api, receiver):
    upstream.settings.reorder_callbacks = True
    ids = [api.post("/videos", json={**TINY, "callback_url": receiver.url}).json()["id"]]
    ids += [api.post("/videos", json={**TINY, "callback_url": receiver.url}).json()["id"]]
    ids += [api.post("/videos", json={**TINY, "callback_url": receiver.url}).json()["id"]]
    upstream.advance(10)
    wait_until(lambda: len(receiver.received) == 3)
    assert sorted(receiver.ids()) == sorted(ids)


# Misbehaviour on request -----------------------------------------------------------------


def test_the_fault_queue_scripts_answers_first_in_first_out(upstream, api):
    upstream.add_fault("submit", 429, retry_after=7)
    upstream.add_fault("submit", 503, count=2)
    limited = api.post("/videos", json=TINY)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert limited.json()["error"]["metadata"]["error_type"] == "rate_limit_exceeded"
    for _ in range(2):
        unavailable = api.post("/videos", json=TINY)
        assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "1"
        assert unavailable.json()["error"]["metadata"]["error_type"] == "provider_unavailable"
    assert upstream.jobs() == []
    upstream.add_fault("submit", 500, after_create=True)
    assert api.post("/videos", json=TINY).status_code == 500
    assert len(upstream.jobs()) == 1  # created, although the answer said 500
    assert api.post("/videos", json=TINY).status_code == 202
    stats = upstream.stats()
    assert stats["submits"] == 5 and stats["injected_errors"] == 4 and stats["jobs"] == 2
    with pytest.raises(ValueError, match="after_create"):
        upstream.add_fault("poll", 500, after_create=True)


def test_truncated_and_hung_answers(upstream, api):
    upstream.settings.content_size = 2_000_000
    job = api.post("/videos", json=TINY).json()
    upstream.advance(10)
    url = f"/videos/{job['id']}/content"
    upstream.add_fault("content", 200, truncate_at=1000)
    with api.stream("GET", url) as cut, pytest.raises(httpx.RemoteProtocolError):
        assert cut.headers["Content-Length"] == "2000000"
        cut.read()
    upstream.settings.truncate_downloads = 1.0
    with pytest.raises(httpx.RemoteProtocolError):
        api.get(url)
    upstream.settings.truncate_downloads = 0.0
    assert len(api.get(url).content) == 2_000_000
    upstream.add_fault("poll", hang_seconds=1)
    with pytest.raises(httpx.ReadTimeout):
        api.get(f"/videos/{job['id']}", timeout=0.2)
    assert api.get(f"/videos/{job['id']}").status_code == 200
    assert upstream.stats()["truncated_downloads"] == 2 and upstream.stats()["hung_requests"] == 1


def test_error_rate_answers_with_the_configured_statuses(upstream, api):
    upstream.update_settings(error_rate=1.0, error_statuses=[503], retry_after=9)
    for path in ("/videos/models", "/videos/job-x"):
        refused = api.get(path)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "9"
    assert httpx.get(upstream.base_url.replace("/api/v1", "/_sandbox/stats")).status_code == 200
    assert upstream.stats()["injected_errors"] == 2


def test_admin_endpoints_over_http(upstream, api):
    admin = upstream.base_url.replace("/api/v1", "/_sandbox")
    changed = httpx.post(f"{admin}/settings", json={"pending_seconds": 0, "content_size": 10})
    assert changed.status_code == 200
    assert changed.json()["pending_seconds"] == 0 and upstream.settings.content_size == 10
    for bad in ({"error_rate": 2}, {"no_such_knob": 1}, {"range_support": "sometimes"}):
        refused = httpx.post(f"{admin}/settings", json=bad)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == 400
    fault = {"endpoint": "poll", "status": 500, "count": 2}
    assert httpx.post(f"{admin}/faults", json=fault).status_code == 201
    assert httpx.get(f"{admin}/faults").json()["faults"][0]["count"] == 2
    assert httpx.post(f"{admin}/faults", json={"endpoint": "nope"}).status_code == 400
    job = api.post("/videos", json=TINY).json()
    assert httpx.post(f"{admin}/advance", json={"seconds": 5}).json()["offset"] == 5
    listed = httpx.get(f"{admin}/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]] and listed[0]["status"] == "completed"
    detail = httpx.get(f"{admin}/jobs/{job['id']}").json()
    assert detail["outputs"][0]["sha256"] == upstream.expected_sha256(job["id"], 0)
    assert httpx.get(f"{admin}/jobs/job-none").status_code == 404
    assert httpx.get(f"{admin}/stats").json()["submits"] == 1
    assert httpx.post(f"{admin}/reset").json() == {"reset": True}
    assert upstream.jobs() == [] and upstream.stats()["submits"] == 0
    assert upstream.settings.pending_seconds == 5 and upstream.state.offset == 0
    assert api.get(f"/videos/{job['id']}").status_code == 404  # the faults went too


def test_the_sandbox_binds_to_loopback_only():
    for host in ("0.0.0.0", "10.1.2.3", "example.com"):
        with pytest.raises(ValueError, match="loopback"):
            SandboxServer(host=host)
    with SandboxServer(host="localhost") as local:
        assert local.base_url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{local.base_url}/videos/models", headers=AUTH).status_code == 200
    with pytest.raises(ValueError):
        SandboxServer(settings=SandboxSettings(error_rate=3))


def test_a_seed_makes_ids_reproducible():
    ids = []
    for _ in range(2):
        with SandboxServer(settings=SandboxSettings(seed=11)) as seeded:
            job = httpx.post(f"{seeded.base_url}/videos", json=TINY, headers=AUTH).json()
            ids.append((job["id"], job["generation_id"]))
    assert ids[0] == ids[1]


# A real client -------------------------------------------------------------------------------


def test_the_official_openrouter_sdk_parses_every_answer(upstream):
    from openrouter import OpenRouter, errors, utils

    no_retries = utils.RetryConfig("none", utils.BackoffStrategy(1, 1, 1.0, 1), False)
    with OpenRouter(
        api_key="sandbox-key", server_url=upstream.base_url, retry_config=no_retries
    ) as client:
        videos = client.video_generation
        models = videos.list_videos_models()
        assert {m.id for m in models.data} == {"google/veo-3.1", "sandbox/tiny", "sandbox/upscaler"}
        frame = {"type": "image_url", "image_url": {"url": "https://x/a.png"}}
        created = videos.generate(
            **VEO,
            aspect_ratio="16:9",
            seed=1,
            frame_images=[{**frame, "frame_type": "first_frame"}],
        )
        assert created.status == "pending" and created.generation_id
        with pytest.raises(errors.NotFoundResponseError):
            videos.get_video_content(job_id=created.id)
        upstream.advance(5)
        assert videos.get_generation(job_id=created.id).status == "in_progress"
        upstream.advance(5)
        done = videos.get_generation(job_id=created.id)
        assert done.status == "completed" and done.usage and done.usage.cost == 0.5
        assert done.unsigned_urls and done.expires_at
        content = videos.get_video_content(job_id=created.id, index=0)
        assert content.read() == sample_video()
        failed_body = with_sandbox(TINY, outcome="failed")
        failed = httpx.post(f"{upstream.base_url}/videos", json=failed_body, headers=AUTH).json()
        upstream.advance(10)
        assert videos.get_generation(job_id=failed["id"]).error
        with pytest.raises(errors.BadRequestResponseError, match="duration"):
            videos.generate(model="google/veo-3.1", prompt="x", duration=5)
        with pytest.raises(errors.NotFoundResponseError):
            videos.get_generation(job_id="job-none")
        upstream.add_fault("submit", 429, retry_after=3)
        with pytest.raises(errors.TooManyRequestsResponseError):
            videos.generate(**TINY)
        upstream.add_fault("poll", 500)
        with pytest.raises(errors.InternalServerResponseError):
            videos.get_generation(job_id=created.id)
    with (
        OpenRouter(api_key="wrong", server_url=upstream.base_url) as stranger,
        pytest.raises(errors.UnauthorizedResponseError),
    ):
        stranger.video_generation.get_generation(job_id=created.id)


# The command line ------------------------------------------------------------------------------


def test_the_cli_says_what_it_is_and_has_an_option_per_knob():
    result = CliRunner().invoke(sandbox_command, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "development sandbox — not ModelGates" in result.output
    for knob in fields(SandboxSettings):
        assert "--" + knob.name.replace("_", "-") in result.output


def test_the_cli_refuses_a_non_loopback_host_in_one_line():
    result = CliRunner().invoke(sandbox_command, ["--host", "0.0.0.0"])
    assert result.exit_code == 2 and "not a loopback address" in result.output
    assert "Traceback" not in result.output


def test_the_cli_serves_until_sigterm_and_exits_0():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = "from webhook_service.sandbox.cli import sandbox_command; sandbox_command()"
    process = subprocess.Popen(
        [sys.executable, "-c", command, "--port", str(port), "--pending-seconds", "0"],
        cwd=REPO,
        env={**os.environ, "SANDBOX_API_KEY": "cli-key"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert "development sandbox — not ModelGates" in banner
        base = f"http://127.0.0.1:{port}/api/v1"
        assert (
            f"MODELGATES_BASE_URL={base}" in process.stdout.readline() + process.stdout.readline()
        )
        headers = {"Authorization": "Bearer cli-key"}
        assert httpx.get(f"{base}/videos/models", headers=headers).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=3) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_forever_blocks_until_stop_is_called_from_another_thread():
    server = SandboxServer()
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    try:
        assert httpx.get(f"{server.base_url}/videos/models", headers=AUTH).status_code == 200
    finally:
        server.stop()
        serving.join(2)
    assert not serving.is_alive()
