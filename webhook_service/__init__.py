"""webhook_service: ModelGates video jobs with signed callbacks and verified downloads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import context, errors, logs, submission
from .addresses import NotifyURLError, check_notify_url
from .config import ConfigError, Settings, load_settings
from .media import MediaError, MediaStorage, open_media
from .store import StoreUnavailable, open_store

API_BODY_LIMIT = 50 * 1024 * 1024


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app from the environment, or from ``test_config`` alone.

    ``test_config`` holds environment-style settings (``DATABASE_PATH`` …), read
    instead of the process environment, plus any Flask config keys.
    """
    app = Flask(__name__, instance_relative_config=True)
    environ: Mapping[str, str]
    if test_config is None:
        settings = load_settings()  # also reads ./.env
        environ = os.environ
    else:
        environ = {k: str(v) for k, v in test_config.items() if k.isupper()}
        settings = load_settings(environ)
        app.config.update(test_config)
    app.config["MAX_CONTENT_LENGTH"] = API_BODY_LIMIT
    logs.init_app(app, settings.log_level, settings.log_format)

    storage = prepare(settings, environ)
    context.init_app(app, settings, storage)
    errors.init_app(app)
    if settings.trusted_proxy_count:
        hops = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )

    from . import openapi
    from .views import api, dashboard, health, metrics, webhooks

    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    dashboard.init_app(app, settings)
    return app


def prepare(settings: Settings, environ: Mapping[str, str]) -> MediaStorage:
    """Migrate the database, record held submits and check the media storage.

    Raises ConfigError, one line, when either cannot be used.
    """
    _prepare_folders(settings)
    if settings.notify_url is not None:
        try:  # every submit would be refused for it: say so at start instead
            check_notify_url(
                settings.notify_url,
                allow_http=settings.allow_insecure_callbacks,
                allow_private=settings.allow_private_notify_urls,
            )
        except NotifyURLError as error:
            raise ConfigError(f"NOTIFY_URL: {error}") from None
    try:
        migrations = open_store(settings)
        try:
            migrations.migrate()
            submission.record_held(migrations, settings)
        finally:
            migrations.close()
    except StoreUnavailable as error:
        raise ConfigError(f"the database cannot be reached: {error}") from None
    storage = open_media(settings, environ=environ)
    try:
        storage.check()
    except MediaError as error:
        raise ConfigError(str(error)) from None
    return storage


def _prepare_folders(settings: Settings) -> None:
    """Create the SQLite file's folder, or fail at start saying why."""
    if settings.database_url is None:
        folder = settings.database_path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"DATABASE_PATH: cannot create {folder}: {error.strerror}") from None
        if not os.access(folder, os.W_OK):
            raise ConfigError(f"DATABASE_PATH: {folder} is not writable")
