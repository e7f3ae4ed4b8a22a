"""Logging: one setup for web and worker, text or JSON lines, no secrets.

`configure` (called by `create_app`, so the worker and CLI get it too) installs
one stream handler on the root logger with the ``LOG_LEVEL`` and ``LOG_FORMAT``
of the settings: ``text`` for people, ``json`` (one object per line) for platforms
that index logs.  httpx and httpcore log every request at INFO; they are kept at
WARNING unless ``LOG_LEVEL=DEBUG``.

A per-job callback token is a credential (it ties a callback to a job), so every
line any of our handlers writes, and gunicorn's access and error logs through
`GunicornLogger`, has ``/webhooks/modelgates/<token>`` rewritten to
``/webhooks/modelgates/…``, however the path is spelled (percent-encoded characters,
repeated slashes, any case).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, request
from gunicorn.glogging import Logger as BaseGunicornLogger

CALLBACK_PREFIX = "/webhooks/modelgates/"


def _any_spelling(path: str) -> str:
    """A pattern for ``path`` however a client spells it: any character percent-encoded,
    slashes repeated or encoded.  The router decodes all of these to the callback route.

    A match starts only where no slash precedes: otherwise a long run of slashes would
    be tried from each of its positions, quadratic time on a hostile request line.
    """
    parts = ["(?<!/)(?<!%2f)"]
    for char in path:
        encoded = f"%{ord(char):02x}"
        parts.append("(?:/|%2f)++" if char == "/" else f"(?:{re.escape(char)}|{encoded})")
    return "".join(parts)


CALLBACK_PATH = re.compile(_any_spelling(CALLBACK_PREFIX) + r"[^\s/?#\"'&]+", re.IGNORECASE)
NOISY = ("httpx", "httpcore")
MAX_REASON = 300
# LogRecord's own attributes; anything else on a record came through ``extra``.
STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def redact(text: str) -> str:
    """Replace every callback token in ``text`` with an ellipsis."""
    if "%" not in text and "modelgates" not in text.lower():
        return text  # most text: these tests cost far less than the regex
    return CALLBACK_PATH.sub(CALLBACK_PREFIX + "…", text)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    """``time level logger: message``, tokens redacted, one physical line per record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Format, redact, and keep tracebacks as escaped text on the same line."""
        return _one_line(redact(super().format(record)))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in STANDARD and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our root handler, recognisable so a second `configure` replaces its settings only."""


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send every logger's records to stderr at ``level``, as ``text`` or ``json`` lines."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _Handler)), None)
    if handler is None:
        handler = _Handler(sys.stderr)
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.setLevel(level)
    logging.getLogger("webhook_service").setLevel(level)  # also Flask's app.logger
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def init_app(app: Flask, level: str = "INFO", fmt: str = "text") -> None:
    """Configure logging and log each callback the receiver refuses, with its reason."""
    configure(level, fmt)
    app.after_request(_log_refused_callback)


refusals = logging.getLogger("webhook_service.callbacks")


def _log_refused_callback(response: Response) -> Response:
    """One line per refused callback: status, code and the reason the answer gives."""
    if request.path.startswith("/webhooks/") and response.status_code >= 400:
        body = response.get_json(silent=True) if response.is_json else None
        error = body.get("error", {}) if isinstance(body, dict) else {}
        reason = str(error.get("message", ""))[:MAX_REASON]
        refusals.warning(
            "callback refused: %d %s: %s (from %s)",
            response.status_code,
            error.get("code", "error"),
            reason,
            request.remote_addr,
            extra={
                "status": response.status_code,
                "code": error.get("code"),
                "reason": reason,
                "remote_addr": request.remote_addr,
                "path": redact(request.path),
            },
        )
    return response


class _Redacting(logging.Filter):
    """Redact a record's message (arguments and traceback included) before any handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - arguments that do not fit: the handler reports it
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class GunicornLogger(BaseGunicornLogger):
    """gunicorn's logger, with callback tokens redacted from its error log and from every
    access-log field (gunicorn logs a failed request's URI on its error log)."""

    def setup(self, cfg: Any) -> None:
        """Set gunicorn's handlers up, then redact the error log's records."""
        super().setup(cfg)
        if not any(isinstance(each, _Redacting) for each in self.error_log.filters):
            self.error_log.addFilter(_Redacting())

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        """The access-log atoms (``%(r)s``, ``%(U)s`` …) with tokens redacted.

        Every atom, not only those the format reads: the dict is also the log
        record's ``args``, which a handler may print whole.
        """
        found: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        return {
            key: redact(value) if isinstance(value, str) else value for key, value in found.items()
        }
