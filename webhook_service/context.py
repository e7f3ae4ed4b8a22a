"""What a request or a command needs from the app: settings, store, upstream client.

The store is one SQLite connection per thread, kept between requests (opening one
costs more than most requests); the ModelGates client and model catalog are one
per process, created on first use so they are never shared across a gunicorn fork.
"""

from __future__ import annotations

import threading

from flask import Flask, current_app

from .catalog import ModelCatalog
from .config import Settings
from .errors import NotConfigured
from .media import MediaStorage
from .modelgates import ModelGatesClient, client_for
from .store import Store, open_store

EXTENSION = "webhook_service"


class Services:
    """Process-wide resources of one app."""

    def __init__(self, settings: Settings, media: MediaStorage) -> None:
        self.settings = settings
        self.media = media
        self._lock = threading.Lock()
        self._client: ModelGatesClient | None = None
        self._stores = threading.local()
        self.catalog = ModelCatalog(self.client)

    def client(self) -> ModelGatesClient:
        """Return the upstream client; 503 when no API key is configured."""
        if self.settings.modelgates_api_key is None:
            raise NotConfigured("MODELGATES_API_KEY is not configured.")
        with self._lock:
            if self._client is None:
                self._client = client_for(self.settings)
            return self._client

    def store(self) -> Store:
        """Return this thread's connection to the database."""
        opened: Store | None = getattr(self._stores, "store", None)
        if opened is None:
            opened = self._stores.store = open_store(self.settings)
        return opened


def services() -> Services:
    """Return the current app's Services."""
    found: Services = current_app.extensions[EXTENSION]
    return found


def settings() -> Settings:
    """Return the current app's Settings."""
    return services().settings


def store() -> Store:
    """Return this thread's store connection."""
    return services().store()


def media() -> MediaStorage:
    """Return where the current app's videos are stored."""
    return services().media


def init_app(app: Flask, settings: Settings, media: MediaStorage) -> None:
    """Attach Services to the app."""
    app.extensions[EXTENSION] = Services(settings, media)
