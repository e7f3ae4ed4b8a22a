"""The WSGI entry point from a clone: ``gunicorn wsgi:app``.

The Procfile uses ``webhook_service.wsgi:app``, which works from an installed
package wherever the command runs; this module exposes the same app.
"""

from webhook_service.wsgi import app

__all__ = ["app"]
