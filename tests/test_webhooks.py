"""The callback receiver: verify, store, apply once."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import WEBHOOK_SECRET, LiveServer

from webhook_service import create_app, submission
from webhook_service.signatures import sign


def make_job(store, job_id="vj_1", upstream_id="job-1", status="pending", token=None):
    now = time.time()
    store.insert_job(
        {
            "id": job_id,
            "upstream_id": upstream_id,
            "callback_token": token or f"tok-{job_id}",
            "client": "c",
            "request_hash": "h",
            "status": status,
            "model": "google/veo-3.1",
            "prompt": "p",
            "params": {"model": "google/veo-3.1"},
            "created_at": now,
            "updated_at": now,
            "submit_outcome": "accepted" if upstream_id else None,
            "next_poll_at": now + 120,
        }
    )
    return store.job(job_id)


def event_body(upstream_id="job-1", status="completed", outputs=1, event_type=None, **extra):
    data = {"id": upstream_id, "status": status, "generation_id": "gen-1", "model": "m"}
    if status == "completed" and outputs is not None:
        data["unsigned_urls"] = [f"https://evil.example/{n}" for n in range(outputs)]
        data["usage"] = {"cost": 0.25, "is_byok": False}
    elif status != "completed":
        data["error"] = "provider said no"
    data.update(extra)
    envelope = {
        "type": event_type or f"video.generation.{status}",
        "created_at": "2026-11-21T10:00:00.000Z",
        "data": data,
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def signed(body, secret=WEBHOOK_SECRET, at=None, key="auto", brand="OpenRouter"):
    headers = {
        "Content-Type": "application/json",
        f"X-{brand}-Signature": sign(secret, int(at or time.time()), body),
    }
    if key == "auto":
        parsed = json.loads(body)
        key = f"{parsed['data']['id']}-{parsed['data']['status']}"
    if key:
        headers[f"X-{brand}-Idempotency-Key"] = key
    return headers


def post(hooks, body, headers, token=None):
    path = "/webhooks/modelgates" + (f"/{token}" if token else "")
    return hooks.post(path, data=body, headers=headers)


def test_a_verified_completion_is_stored_and_applied_before_204(hooks, db):
    make_job(db)
    body = event_body(outputs=2)
    response = post(hooks, body, signed(body), token="tok-vj_1")
    assert response.status_code == 204 and response.data == b""
    job = db.job("vj_1")
    assert job["status"] == "completed" and job["completion_source"] == "callback"
    assert job["cost"] == 0.25 and job["finished_at"] is not None and job["next_poll_at"] is None
    assert [o["idx"] for o in db.outputs(["vj_1"])["vj_1"]] == [0, 1]
    [event] = db.list_events()
    assert event["body"] == body and event["verdict"] == "applied" and event["job_id"] == "vj_1"
    assert json.loads(event["headers"])["X-OpenRouter-Idempotency-Key"] == "job-1-completed"


def test_modelgates_spelling_and_a_rotated_secret_are_accepted(base_env, db):
    app = create_app({**base_env, "MODELGATES_WEBHOOK_SECRETS": "new-secret, " + WEBHOOK_SECRET})
    make_job(db)
    body = event_body()
    response = post(app.test_client(), body, signed(body, brand="ModelGates"))
    assert response.status_code == 204
    assert db.job("vj_1")["status"] == "completed"


def assert_untouched(db, events=0):
    assert db.count_events() == events
    assert db.job("vj_1")["status"] == "pending"
    assert db.outputs(["vj_1"])["vj_1"] == []


@pytest.mark.parametrize(
    "mangle",
    [
        lambda body, h: {},
        lambda body, h: {"X-OpenRouter-Signature": h["X-OpenRouter-Signature"].split(",")[1]},
        lambda body, h: {"X-OpenRouter-Signature": h["X-OpenRouter-Signature"].split(",")[0]},
        lambda body, h: {"X-OpenRouter-Signature": "t=abc,v1=" + "0" * 64},
        lambda body, h: signed(body, at=time.time() - 301),
        lambda body, h: signed(body, at=time.time() + 301),
        lambda body, h: signed(body, secret="not-ours"),
        lambda body, h: signed(json.dumps(json.loads(body)).encode()),
        lambda body, h: {"X-OpenRouter-Signature": h["X-OpenRouter-Signature"][:-2] + "\xe9\xe9"},
        lambda body, h: {"X-OpenRouter-Signature": "t=" + "9" * 4000 + ",v1=" + "0" * 64},
        lambda body, h: {"X-OpenRouter-Signature": "t=" + "9" * 50_000},
        lambda body, h: {"X-OpenRouter-Signature": f"t=1,{h['X-OpenRouter-Signature']}"},
    ],
    ids=[
        "missing",
        "no-t",
        "no-v1",
        "non-numeric-t",
        "stale",
        "future",
        "wrong-secret",
        "reserialized",
        "non-ascii-v1",
        "4000-digit-t",
        "huge-header",
        "duplicate-t",
    ],
)
def test_bad_signatures_are_401_and_nothing_is_stored(hooks, db, mangle):
    make_job(db)
    body = event_body()
    response = post(hooks, body, mangle(body, signed(body)))
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_signature"
    assert_untouched(db)


def test_a_body_changed_after_signing_is_401(hooks, db):
    make_job(db)
    body = event_body()
    headers = signed(body)
    response = post(hooks, body.replace(b"gen-1", b"gen-2"), headers)
    assert response.status_code == 401
    assert_untouched(db)


def test_the_same_event_twice_applies_once(hooks, db):
    make_job(db)
    body = event_body()
    assert post(hooks, body, signed(body)).status_code == 204
    first = db.job("vj_1")
    assert post(hooks, body, signed(body)).status_code == 204
    assert db.count_events() == 1
    assert db.job("vj_1") == first
    assert len(db.outputs(["vj_1"])["vj_1"]) == 1


def test_without_an_idempotency_key_the_body_deduplicates(hooks, db):
    make_job(db)
    body = event_body()
    for _ in range(3):
        assert post(hooks, body, signed(body, key=None)).status_code == 204
    assert db.count_events() == 1


def test_twenty_concurrent_duplicates_are_acknowledged_and_applied_once(hook_app, db):
    make_job(db)
    body = event_body(outputs=3)
    server = LiveServer(hook_app)
    try:
        with ThreadPoolExecutor(20) as pool:
            codes = list(
                pool.map(
                    lambda _: (
                        httpx.post(
                            f"{server.url}/webhooks/modelgates/tok-vj_1",
                            content=body,
                            headers=signed(body),
                            timeout=30,
                        ).status_code
                    ),
                    range(20),
                )
            )
    finally:
        server.stop()
    assert codes == [204] * 20
    assert db.count_events() == 1
    assert len(db.outputs(["vj_1"])["vj_1"]) == 3
    assert db.job("vj_1")["status"] == "completed"


def test_completed_after_failed_changes_nothing(hooks, db):
    make_job(db)
    failed = event_body(status="failed")
    assert post(hooks, failed, signed(failed)).status_code == 204
    completed = event_body()
    assert post(hooks, completed, signed(completed)).status_code == 204
    job = db.job("vj_1")
    assert job["status"] == "failed" and job["error"] == "provider said no"
    assert db.outputs(["vj_1"])["vj_1"] == []
    assert [e["verdict"] for e in db.list_events()] == ["unchanged", "applied"]


@pytest.mark.parametrize(
    "body, reason",
    [
        (event_body(event_type="video.generation.failed"), "disagrees"),
        (event_body(event_type="video.thumbnail.ready"), "disagrees"),
        (event_body(status="in_progress", event_type="video.generation.pending"), "disagrees"),
        (event_body(upstream_id=""), "data.id"),
        (
            json.dumps(
                {"type": "video.generation.completed", "data": {"status": "completed"}}
            ).encode(),
            "data.id",
        ),
        (event_body(upstream_id="../../etc/passwd"), "data.id"),
        (event_body(upstream_id="job-1\u0000x"), "NUL"),
        (b"this is not json", "not JSON"),
        (b"", "not JSON"),
        (b"[1,2,3]", "not a JSON object"),
        (json.dumps({"type": "video.generation.completed"}).encode(), "data"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (event_body(status="failed").replace(b"provider said no", b"\\udc00"), "not valid Unicode"),
        (event_body().replace(b'"model":"m"', b'"model":"' + b"\xff" * 3 + b'"'), "not JSON"),
    ],
    ids=[
        "type-vs-status",
        "other-type",
        "pending-vs-in-progress",
        "empty-id",
        "missing-id",
        "dotdot-id",
        "nul-id",
        "non-json",
        "empty",
        "array",
        "no-data",
        "deep",
        "lone-surrogate",
        "not-utf-8",
    ],
)
def test_signed_bodies_that_are_not_the_envelope_are_400_and_kept_as_rejected(
    hooks, db, body, reason
):
    make_job(db)
    response = post(hooks, body, signed(body, key=None))
    assert response.status_code == 400
    assert reason in response.get_json()["error"]["message"]
    [event] = db.list_events()
    assert event["verdict"] == "rejected" and event["body"] == body
    assert db.job("vj_1")["status"] == "pending"


def test_an_unknown_event_type_is_stored_and_acknowledged_but_not_applied(hooks, db):
    make_job(db)
    body = event_body(status="in_progress", event_type="video.generation.in_progress")
    assert post(hooks, body, signed(body)).status_code == 204
    other = event_body(status="queued", event_type="video.generation.queued")
    assert post(hooks, other, signed(other)).status_code == 204
    assert [e["verdict"] for e in db.list_events()] == ["ignored", "ignored"]
    assert_untouched(db, events=2)


def test_an_event_for_a_job_we_never_submitted_waits_and_applies_when_it_appears(
    hook_app, hooks, db
):
    make_job(db, upstream_id=None, status="submitting")
    body = event_body(upstream_id="job-late")
    assert post(hooks, body, signed(body)).status_code == 204
    [event] = db.list_events()
    assert event["verdict"] == "waiting"
    assert db.job("vj_1")["status"] == "submitting"
    settings = hook_app.extensions["webhook_service"].settings
    job = submission.record_accepted(
        db, settings, "vj_1", {"id": "job-late", "status": "pending"}, time.time()
    )
    assert job["status"] == "completed" and job["upstream_id"] == "job-late"
    assert db.list_events()[0]["verdict"] == "applied"
    assert len(db.outputs(["vj_1"])["vj_1"]) == 1


def test_a_callback_on_the_token_url_reveals_the_upstream_id_of_a_submitting_job(hooks, db):
    make_job(db, upstream_id=None, status="submitting")
    body = event_body(upstream_id="job-found", outputs=1)
    assert post(hooks, body, signed(body), token="tok-vj_1").status_code == 204
    job = db.job("vj_1")
    assert job["upstream_id"] == "job-found" and job["status"] == "completed"
    assert job["submit_outcome"] == "accepted"


def test_a_token_and_an_upstream_id_naming_different_jobs_is_kept_not_applied(hooks, db):
    make_job(db)
    body = event_body(upstream_id="job-other")
    assert post(hooks, body, signed(body), token="tok-vj_1").status_code == 204
    assert db.list_events()[0]["verdict"] == "mismatch"
    assert_untouched(db, events=1)


def test_completed_without_urls_asks_the_worker_to_poll(hooks, db):
    make_job(db)
    body = event_body(outputs=None)
    assert post(hooks, body, signed(body)).status_code == 204
    job = db.job("vj_1")
    assert job["status"] == "completed" and not job["outputs_known"]
    assert job["next_poll_at"] is not None


def test_bodies_over_256_kib_are_413_without_storing(hook_app, hooks, db):
    make_job(db)
    body = event_body(padding="x" * (10 * 1024 * 1024))
    assert post(hooks, body, signed(body)).status_code == 413
    server = LiveServer(hook_app)
    try:  # chunked, so no Content-Length announces the size
        response = httpx.post(
            f"{server.url}/webhooks/modelgates",
            headers=signed(body),
            content=iter([body[i : i + 65536] for i in range(0, 300_000, 65536)]),
        )
    finally:
        server.stop()
    assert response.status_code == 413
    assert_untouched(db)


def test_no_secret_configured_is_503_and_size_is_checked_first(base_env, db):
    app = create_app({**base_env, "MODELGATES_WEBHOOK_SECRETS": ""})
    make_job(db)
    body = event_body()
    client = app.test_client()
    assert post(client, body, signed(body)).status_code == 503
    assert post(client, b"x" * (300 * 1024), {}).status_code == 413
    assert_untouched(db)
