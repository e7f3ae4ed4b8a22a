"""Shared fixtures: a fresh app on a temp database, the sandbox upstream on loopback.

Tests in `POSTGRES_MODULES` that use a database (through ``base_env`` or
``engine``) run once on SQLite and once on PostgreSQL (a fresh database per test,
see `pg.py`); the rest run on SQLite.  Mark a test ``sqlite_only`` to keep it off
PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pg import PostgresServer, start_server
from werkzeug.serving import BaseWSGIServer, make_server

from webhook_service import create_app
from webhook_service.store import Store
from webhook_service.store import open_store as open_configured_store

API_TOKEN = "test-api-token"
WEBHOOK_SECRET = "test-webhook-secret"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
ENGINES = ("sqlite", "postgres")
POSTGRES_MODULES = frozenset(
    {
        "test_store",
        "test_api",
        "test_webhooks",
        "test_worker",
        "test_cli",
        "test_held_submits",
        "test_leases",
        "test_notify_worker",
        "test_notify_api",
        "test_metrics",
        "test_status",
        "test_dashboard",
    }
)
# Tests that look at the SQLite file itself (same as marking them sqlite_only).
SQLITE_ONLY = frozenset(
    {
        "test_api.py::test_healthz_is_503_when_the_database_is_gone",
        "test_cli.py::test_migrate_creates_the_database",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: run this test on SQLite only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run database tests of `POSTGRES_MODULES` on both engines."""
    if "engine" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rpartition(".")[2]
    sqlite_only = (
        metafunc.definition.get_closest_marker("sqlite_only") is not None
        or f"{module}.py::{metafunc.definition.originalname}" in SQLITE_ONLY
    )
    if module in POSTGRES_MODULES and not sqlite_only:
        metafunc.parametrize("engine", ENGINES, indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The database engine this test runs on."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (skips the test when there is none)."""
    found = start_server()
    if isinstance(found, str):
        pytest.skip(found)
    yield found
    found.stop()


@pytest.fixture
def database_url(engine: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A fresh, migrated PostgreSQL database for the test; None on SQLite."""
    if engine != "postgres":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def sandbox() -> Iterator[Any]:
    """A sandbox upstream on a free loopback port, signing with WEBHOOK_SECRET."""
    from webhook_service.sandbox import SandboxServer, SandboxSettings

    server = SandboxServer(
        webhook_secret=WEBHOOK_SECRET,
        settings=SandboxSettings(pending_seconds=0.2, in_progress_seconds=0.2, seed=7),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def base_env(tmp_path: Path, database_url: str | None) -> dict[str, str]:
    """Environment-style settings for one test; upstream is a closed port."""
    database = {"DATABASE_URL": database_url} if database_url else {}
    return {
        **database,
        "DATABASE_PATH": str(tmp_path / "db.sqlite3"),
        "MEDIA_DIR": str(tmp_path / "videos"),
        "SERVICE_API_TOKENS": f"{API_TOKEN},second-token",
        "MODELGATES_API_KEY": "sandbox-key",
        "MODELGATES_BASE_URL": "http://127.0.0.1:9/api/v1",
        "MODELGATES_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        "PUBLIC_BASE_URL": "http://127.0.0.1:9",
        "ALLOW_INSECURE_CALLBACKS": "1",
        "TRUSTED_PROXY_COUNT": "0",
    }


@pytest.fixture
def env(base_env: dict[str, str], sandbox: Any) -> dict[str, str]:
    """Settings whose upstream is the sandbox."""
    return {**base_env, "MODELGATES_BASE_URL": sandbox.base_url}


@pytest.fixture
def app(env: dict[str, str]) -> Flask:
    return create_app({**env, "TESTING": True})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def open_store(app: Flask) -> Iterator[Store]:
    """A separate connection to an app's database, closed after the test."""
    opened = open_configured_store(app.extensions["webhook_service"].settings)
    yield opened
    opened.close()


@pytest.fixture
def store(app: Flask) -> Iterator[Store]:
    yield from open_store(app)


@pytest.fixture
def hook_app(base_env: dict[str, str]) -> Flask:
    """An app whose upstream is unreachable: for receiver tests that need no sandbox."""
    return create_app({**base_env, "TESTING": True})


@pytest.fixture
def hooks(hook_app: Flask) -> FlaskClient:
    return hook_app.test_client()


@pytest.fixture
def db(hook_app: Flask) -> Iterator[Store]:
    yield from open_store(hook_app)


class LiveServer:
    """The app served by a real threaded HTTP server on loopback."""

    def __init__(self, app: Flask) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def live(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Flask, LiveServer]]:
    """An app whose PUBLIC_BASE_URL is its own live loopback address."""
    holder: dict[str, Any] = {}

    def late_app(environ: dict[str, Any], start_response: Any) -> Any:
        return holder["app"](environ, start_response)

    server = LiveServer(late_app)  # type: ignore[arg-type]
    app = create_app({**env, "PUBLIC_BASE_URL": server.url, "TESTING": True})
    holder["app"] = app
    yield app, server
    server.stop()
