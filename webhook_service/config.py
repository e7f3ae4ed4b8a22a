"""Settings read from the environment (and a `.env` file in development).

Everything that can make the service unusable is checked here, once, at start:
`load_settings` raises `ConfigError` with one clear line.  Secrets are kept in
fields excluded from the repr so they never reach a log line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://modelgates.ai/api/v1"


class ConfigError(Exception):
    """The environment describes a service that cannot work."""


@dataclass(frozen=True)
class Settings:
    """The service's configuration, validated."""

    modelgates_base_url: str = DEFAULT_BASE_URL
    public_base_url: str | None = None
    database_path: Path = Path("instance/webhook_service.sqlite3")
    media_dir: Path = Path("instance/videos")
    poll_after_seconds: float = 120.0
    poll_interval_seconds: float = 30.0
    submit_timeout_seconds: float = 3600.0
    download_give_up_seconds: float = 86400.0
    trusted_proxy_count: int = 1
    upstream_timeout_seconds: float = 60.0
    allow_insecure_callbacks: bool = False
    app_title: str = "webhook_service"
    modelgates_api_key: str | None = field(default=None, repr=False)
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    service_api_tokens: tuple[str, ...] = field(default=(), repr=False)

    def callback_url(self, token: str) -> str:
        """Return the per-job callback URL sent upstream."""
        assert self.public_base_url is not None
        return f"{self.public_base_url}/webhooks/modelgates/{token}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ

    def text(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def number(name: str, default: float, minimum: float = 0) -> float:
        raw = text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a number, got {raw!r}")
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum:g}, got {raw!r}")
        return value

    def csv(name: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())

    insecure = env.get("ALLOW_INSECURE_CALLBACKS", "").strip().lower() in {"1", "true", "yes"}
    public = text("PUBLIC_BASE_URL")
    if public is not None:
        public = _check_origin("PUBLIC_BASE_URL", public, allow_http=insecure)
    base_url = _check_origin(
        "MODELGATES_BASE_URL", text("MODELGATES_BASE_URL") or DEFAULT_BASE_URL, allow_http=True
    )
    proxies = number("TRUSTED_PROXY_COUNT", 1)
    if proxies != int(proxies):
        raise ConfigError(f"TRUSTED_PROXY_COUNT must be a whole number, got {proxies:g}")
    return Settings(
        modelgates_base_url=base_url,
        public_base_url=public,
        database_path=Path(text("DATABASE_PATH") or Settings.database_path).absolute(),
        media_dir=Path(text("MEDIA_DIR") or Settings.media_dir).absolute(),
        poll_after_seconds=number("POLL_AFTER_SECONDS", 120),
        poll_interval_seconds=number("POLL_INTERVAL_SECONDS", 30, minimum=0.01),
        submit_timeout_seconds=number("SUBMIT_TIMEOUT_SECONDS", 3600),
        download_give_up_seconds=number("DOWNLOAD_GIVE_UP_SECONDS", 86400),
        trusted_proxy_count=int(proxies),
        upstream_timeout_seconds=number("MODELGATES_TIMEOUT_SECONDS", 60, minimum=0.1),
        allow_insecure_callbacks=insecure,
        app_title=text("APP_TITLE") or Settings.app_title,
        modelgates_api_key=text("MODELGATES_API_KEY"),
        webhook_secrets=csv("MODELGATES_WEBHOOK_SECRETS"),
        service_api_tokens=csv("SERVICE_API_TOKENS"),
    )


def _check_origin(name: str, value: str, allow_http: bool) -> str:
    parts = urlsplit(value)
    schemes = {"https", "http"} if allow_http else {"https"}
    if parts.scheme not in schemes or not parts.hostname:
        if parts.scheme == "http" and not allow_http:
            raise ConfigError(
                f"{name} must be https:// (set ALLOW_INSECURE_CALLBACKS=1 for local development)"
            )
        raise ConfigError(f"{name} must be an absolute http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name} must not have a query or fragment")
    return value.rstrip("/")
