"""gunicorn settings for the Procfile's ``web:`` line (``--config python:...``).

The configuration is checked once, in the arbiter, before any worker forks: a bad
value prints one line and gunicorn exits non-zero, instead of every worker
printing it and the arbiter reporting a boot failure.  Workers are
`server.BufferingWorker`: gthread whose threads never wait on a slow client.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from webhook_service import prepare
from webhook_service.config import ConfigError, load_settings
from webhook_service.store import close_shared

worker_class = "webhook_service.server.BufferingWorker"
# Access-log lines with each callback token redacted (the path carries it).
logger_class = "webhook_service.logs.GunicornLogger"
# Connections a worker holds open at once; gathered requests wait here, not in threads.
worker_connections = 1000


def on_starting(server: Any) -> None:
    """Refuse to start, in one line, when the configuration, database or storage cannot work."""
    try:
        prepare(load_settings(), os.environ)
    except ConfigError as error:
        print(f"webhook_service: configuration error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        close_shared()  # the workers open their own connections after the fork
