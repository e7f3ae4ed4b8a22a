"""`notify_url` on submit: vetted before anything is spent; the job reports its notification."""

from __future__ import annotations

import time

import pytest
from conftest import AUTH
from standardwebhooks.webhooks import Webhook
from test_notify_worker import OK, SECRET, receivers  # noqa: F401

from webhook_service.modelgates import ModelGatesClient
from webhook_service.worker import Worker

VALID = {"model": "google/veo-3.1", "prompt": "a lighthouse at dusk", "duration": 8}


@pytest.fixture
def env(env):
    return {**env, "NOTIFY_SIGNING_SECRET": SECRET, "POLL_AFTER_SECONDS": "0"}


def nothing_spent(store, sandbox):
    assert sum(store.count_jobs_by_status().values()) == 0
    assert sandbox.stats()["submits"] == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",  # http without ALLOW_INSECURE_CALLBACKS … and loopback
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://10.1.2.3/hook",
        "https://172.16.0.1/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/hook",
        "https://224.0.0.1/hook",
        "https://0.0.0.0/hook",
        "https://2130706433/hook",
        "https://0x7f.1/hook",
        "https://[::1]/hook",
        "https://[fe80::1]/hook",
        "https://[fc00::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[64:ff9b::a00:1]/hook",
        "https://user:pass@example.com/hook",
        "ftp://example.com/hook",
        "not a url",
        "https:///hook",
    ],
)
def test_a_refused_notify_url_is_422_and_nothing_is_spent(client, store, sandbox, url):
    response = client.post("/api/jobs", json={**VALID, "notify_url": url}, headers=AUTH)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error" and "notify_url" in error["details"]
    nothing_spent(store, sandbox)


def test_notify_url_without_a_signing_secret_is_503(env, sandbox):
    from webhook_service import create_app

    env = {k: v for k, v in env.items() if k != "NOTIFY_SIGNING_SECRET"}
    app = create_app({**env, "ALLOW_PRIVATE_NOTIFY_URLS": "1", "TESTING": True})
    for url in ("http://127.0.0.1:9/hook", "https://hooks.example.invalid/videos"):
        body = {**VALID, "notify_url": url}
        response = app.test_client().post("/api/jobs", json=body, headers=AUTH)
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "not_configured"
    assert sandbox.stats()["submits"] == 0


def test_a_null_notify_url_is_as_if_absent(client, sandbox):
    response = client.post("/api/jobs", json={**VALID, "notify_url": None}, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["notify_url"] is None


def test_notify_url_is_kept_out_of_the_upstream_body_and_part_of_idempotency(env, sandbox):
    from webhook_service import create_app

    app = create_app({**env, "ALLOW_PRIVATE_NOTIFY_URLS": "1", "TESTING": True})
    client = app.test_client()
    body = {**VALID, "notify_url": "http://127.0.0.1:9/hook"}
    headers = {**AUTH, "Idempotency-Key": "order-1"}
    first = client.post("/api/jobs", json=body, headers=headers)
    assert first.status_code == 202, first.get_json()
    job = first.get_json()
    assert job["notify_url"] == "http://127.0.0.1:9/hook"
    assert job["settled"] is False and job["notification"] is None
    assert "notify_url" not in job["params"]
    [upstream] = sandbox.jobs()
    assert "notify_url" not in upstream["params"] and "callback_url" in upstream["params"]
    again = client.post("/api/jobs", json=body, headers=headers)
    assert again.status_code == 200 and again.get_json()["id"] == job["id"]
    other = client.post(
        "/api/jobs", json={**body, "notify_url": "http://127.0.0.1:8/x"}, headers=headers
    )
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert sandbox.stats()["submits"] == 1


def test_a_job_through_the_sandbox_notifies_the_client_once_downloaded(
    env,
    sandbox,
    receivers,  # noqa: F811
):
    from webhook_service import create_app

    receiver = receivers(OK)
    app = create_app({**env, "ALLOW_PRIVATE_NOTIFY_URLS": "1", "TESTING": True})
    client = app.test_client()
    body = {**VALID, "notify_url": receiver.url + "/hooks/videos"}
    job = client.post("/api/jobs", json=body, headers=AUTH).get_json()
    sandbox.advance(10)  # upstream finishes; its callback goes nowhere: the worker polls
    settings = app.extensions["webhook_service"].settings
    worker = Worker(
        settings,
        ModelGatesClient(settings.modelgates_base_url, "sandbox-key", timeout=5),
        rand=lambda: 0.5,
    )
    deadline = time.monotonic() + 20
    while not receiver.requests and time.monotonic() < deadline:
        worker.run_once()
    worker.stop()
    [request] = receiver.requests
    event = Webhook(SECRET).verify(request["body"], request["headers"])
    assert event["type"] == "job.completed" and event["data"]["id"] == job["id"]
    assert [o["status"] for o in event["data"]["outputs"]] == ["downloaded"]
    shown = client.get(f"/api/jobs/{job['id']}", headers=AUTH).get_json()
    assert shown["settled"] is True
    assert shown["notification"] == {
        "status": "delivered",
        "attempts": 1,
        "last_status": 200,
        "last_error": None,
    }


@pytest.mark.parametrize(
    "url", ["https://10.0.0.5/hook", "https://[::1]/hook", "https://localhost/x"]
)
def test_a_notify_url_default_that_every_submit_would_refuse_stops_the_start(env, url):
    from webhook_service import create_app
    from webhook_service.config import ConfigError

    with pytest.raises(ConfigError, match="NOTIFY_URL"):
        create_app({**env, "NOTIFY_URL": url, "TESTING": True})


def test_a_submit_upstream_refuses_is_notified_as_submit_failed(env, sandbox, receivers):  # noqa: F811
    from webhook_service import create_app

    receiver = receivers(OK)
    app = create_app({**env, "ALLOW_PRIVATE_NOTIFY_URLS": "1", "TESTING": True})
    sandbox.add_fault(endpoint="submit", status=400)
    body = {**VALID, "notify_url": receiver.url + "/hooks/videos"}
    answer = app.test_client().post("/api/jobs", json=body, headers=AUTH)
    assert answer.status_code == 422
    job_id = answer.get_json()["error"]["details"]["job_id"]
    settings = app.extensions["webhook_service"].settings
    worker = Worker(settings, ModelGatesClient(settings.modelgates_base_url, "k"), rand=lambda: 0.5)
    worker.run_once()
    [request] = receiver.requests
    event = Webhook(SECRET).verify(request["body"], request["headers"])
    assert event["type"] == "job.submit_failed" and event["data"]["id"] == job_id
    assert event["data"]["settled"] is True
