"""webhook_service: ModelGates video jobs with signed callbacks and verified downloads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import context, errors, logs, submission
from .config import ConfigError, Settings, load_settings
from .store import open_store

API_BODY_LIMIT = 50 * 1024 * 1024


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app from the environment, or from ``test_config`` alone.

    ``test_config`` holds environment-style settings (``DATABASE_PATH`` …), read
    instead of the process environment, plus any Flask config keys.
    """
    app = Flask(__name__, instance_relative_config=True)
    if test_config is None:
        settings = load_settings()  # also reads ./.env
    else:
        settings = load_settings({k: str(v) for k, v in test_config.items() if k.isupper()})
        app.config.update(test_config)
    app.config["MAX_CONTENT_LENGTH"] = API_BODY_LIMIT
    logs.init_app(app, settings.log_level, settings.log_format)

    _prepare_folders(settings)
    migrations = open_store(settings)
    try:
        migrations.migrate()
        submission.record_held(migrations, settings)
    finally:
        migrations.close()

    context.init_app(app, settings)
    errors.init_app(app)
    if settings.trusted_proxy_count:
        hops = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )

    from . import openapi
    from .views import api, health, metrics, webhooks

    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    return app


def _prepare_folders(settings: Settings) -> None:
    """Create the database's and the videos' folders, or fail at start saying why."""
    for name, folder in (
        ("DATABASE_PATH", settings.database_path.parent),
        ("MEDIA_DIR", settings.media_dir),
    ):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"{name}: cannot create {folder}: {error.strerror}") from None
        if not os.access(folder, os.W_OK):
            raise ConfigError(f"{name}: {folder} is not writable")
