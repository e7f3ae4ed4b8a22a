"""The WSGI entry point of the installed package: ``gunicorn webhook_service.wsgi:app``.

On a configuration error the worker prints one line and exits with gunicorn's
"app failed to load" status, so the arbiter stops instead of respawning it.
(``gunicorn_conf`` checks the configuration in the arbiter first, so this is a
second line of defence for what only a worker can find out.)
"""

from __future__ import annotations

import sys

from . import create_app
from .config import ConfigError, load_settings
from .server import ReadDeadline

APP_LOAD_ERROR = 4

try:
    app = create_app()
except ConfigError as error:
    print(f"webhook_service: configuration error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(APP_LOAD_ERROR) from None

app.wsgi_app = ReadDeadline(  # type: ignore[method-assign]
    app.wsgi_app,
    load_settings().request_read_timeout_seconds,
    max_body=app.config["MAX_CONTENT_LENGTH"],
)
