"""The WSGI entry point: ``gunicorn wsgi:app``."""

import sys

from webhook_service import create_app
from webhook_service.config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    print(f"webhook_service: configuration error: {error}", file=sys.stderr, flush=True)
    # 4 is gunicorn's "app failed to load": the arbiter stops instead of respawning.
    raise SystemExit(4) from None
