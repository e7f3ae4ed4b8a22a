"""Shared fixtures: a fresh app on a temp database, the sandbox upstream on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, make_server

from webhook_service import create_app
from webhook_service.store import Store
from webhook_service.store import open_store as open_configured_store

API_TOKEN = "test-api-token"
WEBHOOK_SECRET = "test-webhook-secret"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


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
def base_env(tmp_path: Path) -> dict[str, str]:
    """Environment-style settings for one test; upstream is a closed port."""
    return {
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
