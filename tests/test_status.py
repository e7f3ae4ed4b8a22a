"""`webhook-service status`: a terminal summary read through the store interface."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from conftest import AUTH

from webhook_service.cli import cli

VALID = {"model": "google/veo-3.1", "prompt": "waves", "duration": 4, "resolution": "720p"}


@pytest.fixture
def env(env):
    return {**env, "POLL_AFTER_SECONDS": "0"}


@pytest.fixture
def cli_env(env, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def status() -> list[str]:
    result = CliRunner().invoke(cli, ["status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_status_of_an_empty_database(cli_env, engine):
    lines = status()
    assert lines[0].startswith(
        "database: " + {"sqlite": "SQLite file ", "postgres": "PostgreSQL "}[engine]
    )
    assert lines[1:] == [
        "jobs: 0",
        "due now: 0 polls, 0 downloads, 0 notifications",
        "oldest unfinished job: none",
        "oldest download: none",
        "oldest pending notification: none",
        "last callback received: never",
    ]


def test_status_names_the_stuck_job_the_work_due_and_the_last_callback(cli_env, client, store):
    options = {"provider": {"options": {"sandbox": {"parameters": {"callback": "drop"}}}}}
    first = client.post("/api/jobs", json={**VALID, **options}, headers=AUTH).get_json()
    client.post("/api/jobs", json={**VALID, **options}, headers=AUTH)
    store.insert_event(
        {
            "dedup_key": "body:x",
            "verdict": "rejected",
            "body": b"{}",
            "headers": "{}",
            "received_at": time.time() - 2 * 3600 - 20,
        }
    )
    lines = status()
    assert lines[1] == "jobs: 2 (pending 2)"
    assert lines[2] == "due now: 2 polls, 0 downloads, 0 notifications"
    assert lines[3].startswith(f"oldest unfinished job: {first['id']} pending, since ")
    assert lines[-1].startswith("last callback received: since ")
    assert lines[-1].endswith("(2 h 0 min ago)")
