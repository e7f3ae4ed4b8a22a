"""The operator CLI: migrate, events list / replay, send-test-event."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from conftest import LiveServer
from test_webhooks import event_body, make_job, signed

from webhook_service.cli import cli
from webhook_service.store.sqlite import SqliteStore


@pytest.fixture
def cli_env(base_env, monkeypatch):
    for name, value in base_env.items():
        monkeypatch.setenv(name, value)
    return base_env


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_migrate_creates_the_database(cli_env):
    result = run("migrate")
    assert result.exit_code == 0 and "database ready" in result.output
    assert SqliteStore(cli_env["DATABASE_PATH"]).ping()


def test_send_test_event_signs_like_modelgates_and_the_receiver_applies_it(cli_env, hook_app, db):
    make_job(db, upstream_id="job-cli")
    server = LiveServer(hook_app)
    try:
        result = run(
            "send-test-event",
            f"{server.url}/webhooks/modelgates",
            "--job-id",
            "job-cli",
            "--outputs",
            "2",
        )
    finally:
        server.stop()
    assert result.exit_code == 0 and result.output.startswith("204")
    job = db.job("vj_1")
    assert job["status"] == "completed" and len(db.outputs(["vj_1"])["vj_1"]) == 2


def test_send_test_event_with_a_wrong_secret_reports_the_401(cli_env, hook_app):
    server = LiveServer(hook_app)
    try:
        result = run("send-test-event", f"{server.url}/webhooks/modelgates", "--secret", "nope")
    finally:
        server.stop()
    assert result.exit_code == 1 and result.output.startswith("401")


def test_events_list_filters_and_prints_json(cli_env, hooks, db):
    make_job(db)
    body = event_body()
    hooks.post("/webhooks/modelgates", data=body, headers=signed(body))
    waiting = event_body(upstream_id="job-unknown")
    hooks.post("/webhooks/modelgates", data=waiting, headers=signed(waiting))
    table = run("events", "list").output.splitlines()
    assert len(table) == 2 and "waiting" in table[0] and "applied" in table[1]
    [only] = [
        json.loads(line)
        for line in run("events", "list", "--json", "--verdict", "waiting").output.splitlines()
    ]
    assert only["upstream_id"] == "job-unknown" and json.loads(only["body"])["data"]
    assert run("events", "list", "--verdict", "rejected").output == ""


def test_replay_applies_events_kept_after_a_failure(cli_env, db):
    make_job(db)
    body = event_body(outputs=1)
    db.batched(
        lambda store: store.insert_event(
            {
                "dedup_key": "key:job-1-completed",
                "verdict": "error",
                "reason": "a bug, since fixed",
                "body": body,
                "headers": "{}",
                "received_at": time.time(),
                "upstream_id": "job-1",
                "event_type": "video.generation.completed",
            }
        )
    )
    assert db.job("vj_1")["status"] == "pending"
    result = run("events", "replay", "--verdict", "error")
    assert result.exit_code == 0 and result.output.strip().endswith(": applied")
    assert db.job("vj_1")["status"] == "completed"
    assert db.list_events()[0]["verdict"] == "applied"
    again = run("events", "replay", str(db.list_events()[0]["id"]))
    assert again.output.strip().endswith(": unchanged")


def test_replay_needs_ids_or_a_verdict_and_reports_unknown_ids(cli_env):
    assert run("events", "replay").exit_code == 2
    result = run("events", "replay", "999")
    assert result.exit_code == 1 and "no event 999" in result.output


def test_every_command_has_help():
    for command in ("migrate", "worker", "demo", "sandbox", "send-test-event"):
        result = run(command, "--help")
        assert result.exit_code == 0 and len(result.output) > 100
    for command in ("list", "replay"):
        assert run("events", command, "--help").exit_code == 0
