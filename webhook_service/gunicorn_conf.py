"""gunicorn settings for the Procfile's ``web:`` line (``--config python:...``).

The configuration is checked once, in the arbiter, before any worker forks: a bad
value prints one line and gunicorn exits non-zero, instead of every worker
printing it and the arbiter reporting a boot failure.  Workers are
`server.BufferingWorker`: gthread whose threads never wait on a slow client.
"""

from __future__ import annotations

import sys
from typing import Any

from webhook_service.config import ConfigError, load_settings

worker_class = "webhook_service.server.BufferingWorker"
# Access-log lines with each callback token redacted (the path carries it).
logger_class = "webhook_service.logs.GunicornLogger"
# Connections a worker holds open at once; gathered requests wait here, not in threads.
worker_connections = 1000


def on_starting(server: Any) -> None:
    """Refuse to start, in one line, when the configuration cannot work."""
    try:
        load_settings()
    except ConfigError as error:
        print(f"webhook_service: configuration error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
