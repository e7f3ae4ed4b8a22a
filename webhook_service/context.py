"""What a request or a command needs from the app: settings, store, upstream client.

The store is one SQLite connection per request (closed on teardown); the
ModelGates client and model catalog are one per process, created on first use so
they are never shared across a gunicorn fork.
"""

from __future__ import annotations

import threading

from flask import Flask, current_app, g

from .config import Settings
from .errors import NotConfigured
from .modelgates import ModelGatesClient
from .store import Store
from .submission import ModelCatalog

EXTENSION = "webhook_service"


class Services:
    """Process-wide resources of one app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._client: ModelGatesClient | None = None
        self.catalog = ModelCatalog(self.client)

    def client(self) -> ModelGatesClient:
        """Return the upstream client; 503 when no API key is configured."""
        if self.settings.modelgates_api_key is None:
            raise NotConfigured("MODELGATES_API_KEY is not configured.")
        with self._lock:
            if self._client is None:
                self._client = ModelGatesClient(
                    self.settings.modelgates_base_url,
                    self.settings.modelgates_api_key,
                    referer=self.settings.public_base_url,
                    title=self.settings.app_title,
                    timeout=self.settings.upstream_timeout_seconds,
                )
            return self._client

    def open_store(self) -> Store:
        """Open a new connection to the database."""
        return Store(self.settings.database_path)


def services() -> Services:
    """Return the current app's Services."""
    found: Services = current_app.extensions[EXTENSION]
    return found


def settings() -> Settings:
    """Return the current app's Settings."""
    return services().settings


def store() -> Store:
    """Return this request's store connection, opening it on first use."""
    if "store" not in g:
        g.store = services().open_store()
    opened: Store = g.store
    return opened


def _close_store(exc: BaseException | None = None) -> None:
    opened = g.pop("store", None)
    if opened is not None:
        opened.close()


def init_app(app: Flask, settings: Settings) -> None:
    """Attach Services to the app and close the store after each request."""
    app.extensions[EXTENSION] = Services(settings)
    app.teardown_appcontext(_close_store)
