"""Settings read from the environment (and a `.env` file in the working directory).

This is the one place environment variables are parsed.  Everything that can make
the service unusable is checked here, once, at start: `load_settings` raises
`ConfigError` with one clear line.  Secrets are kept in fields excluded from the
repr so they never reach a log line.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

DEFAULT_BASE_URL = "https://modelgates.ai/api/v1"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
MIN_LEASE_SECONDS = 5.0
TRUE = {"1", "true", "yes", "on"}
FALSE = {"", "0", "false", "no", "off"}

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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
    worker_lease_seconds: float = 60.0
    request_read_timeout_seconds: float = 30.0
    allow_insecure_callbacks: bool = False
    app_title: str = "webhook_service"
    media_storage: str | None = None
    media_bucket: str | None = None
    media_prefix: str = ""
    notify_url: str | None = None
    allow_private_notify_urls: bool = False
    log_level: str = "INFO"
    log_format: str = "text"
    database_pool_size: int = 4
    database_url: str | None = field(default=None, repr=False)
    modelgates_api_key: str | None = field(default=None, repr=False)
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    service_api_tokens: tuple[str, ...] = field(default=(), repr=False)
    notify_signing_secret: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)

    def callback_url(self, token: str) -> str:
        """Return the per-job callback URL sent upstream."""
        assert self.public_base_url is not None
        return f"{self.public_base_url}/webhooks/modelgates/{token}"

    @property
    def database_url_redacted(self) -> str | None:
        """DATABASE_URL with its password replaced, fit for a log line."""
        if self.database_url is None:
            return None
        parts = urlsplit(self.database_url)
        if parts.password is None:
            return self.database_url
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def load_dotenv_file() -> None:
    """Read ``.env`` from the working directory into the environment (never overriding it).

    python-dotenv's default search starts from the calling file, which for an
    installed package is somewhere in site-packages: the user's ``.env`` sits where
    they run the command.
    """
    from dotenv import load_dotenv

    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from ``environ`` (default: the process environment plus ``./.env``)."""
    if environ is None:
        load_dotenv_file()
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

    def whole(name: str, default: int, minimum: int) -> int:
        value = number(name, default, minimum)
        if value != int(value):
            raise ConfigError(f"{name} must be a whole number, got {text(name)!r}")
        return int(value)

    def flag(name: str) -> bool:
        raw = env.get(name, "").strip().lower()
        if raw in TRUE:
            return True
        if raw in FALSE:
            return False
        raise ConfigError(f"{name} must be 1 or 0, got {env.get(name)!r}")

    def choice(name: str, default: str, allowed: tuple[str, ...], upper: bool) -> str:
        raw = text(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    def csv(name: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())

    insecure = flag("ALLOW_INSECURE_CALLBACKS")
    public = text("PUBLIC_BASE_URL")
    if public is not None:
        public = _check_public_origin(public, allow_http=insecure)
    base_url = _check_api_base(text("MODELGATES_BASE_URL") or DEFAULT_BASE_URL)

    database_url = text("DATABASE_URL")
    if database_url is not None:
        _check_database_url(database_url)
    database_path = Path(text("DATABASE_PATH") or Settings.database_path).absolute()
    if database_url is None:
        _check_file_path("DATABASE_PATH", database_path)

    media_storage = text("MEDIA_STORAGE")
    bucket, prefix = _parse_media_storage(media_storage) if media_storage else (None, "")
    media_dir = Path(text("MEDIA_DIR") or Settings.media_dir).absolute()
    if media_storage is None:
        _check_folder_path("MEDIA_DIR", media_dir)

    notify_url = text("NOTIFY_URL")
    if notify_url is not None:
        _check_notify_url(notify_url, allow_http=insecure)
    signing_secret = text("NOTIFY_SIGNING_SECRET")
    if signing_secret is not None:
        _check_signing_secret(signing_secret)
    elif notify_url is not None:
        raise ConfigError("NOTIFY_URL is set but NOTIFY_SIGNING_SECRET is not")

    return Settings(
        modelgates_base_url=base_url,
        public_base_url=public,
        database_path=database_path,
        media_dir=media_dir,
        poll_after_seconds=number("POLL_AFTER_SECONDS", 120),
        poll_interval_seconds=number("POLL_INTERVAL_SECONDS", 30, minimum=0.01),
        submit_timeout_seconds=number("SUBMIT_TIMEOUT_SECONDS", 3600),
        download_give_up_seconds=number("DOWNLOAD_GIVE_UP_SECONDS", 86400),
        trusted_proxy_count=whole("TRUSTED_PROXY_COUNT", 1, minimum=0),
        upstream_timeout_seconds=number("MODELGATES_TIMEOUT_SECONDS", 60, minimum=0.1),
        worker_lease_seconds=number("WORKER_LEASE_SECONDS", 60, minimum=MIN_LEASE_SECONDS),
        request_read_timeout_seconds=number("REQUEST_READ_TIMEOUT_SECONDS", 30, minimum=1),
        allow_insecure_callbacks=insecure,
        app_title=text("APP_TITLE") or Settings.app_title,
        media_storage=media_storage,
        media_bucket=bucket,
        media_prefix=prefix,
        notify_url=notify_url,
        allow_private_notify_urls=flag("ALLOW_PRIVATE_NOTIFY_URLS"),
        log_level=choice("LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
        log_format=choice("LOG_FORMAT", "text", LOG_FORMATS, upper=False),
        database_pool_size=whole("DATABASE_POOL_SIZE", 4, minimum=1),
        database_url=database_url,
        modelgates_api_key=text("MODELGATES_API_KEY"),
        webhook_secrets=csv("MODELGATES_WEBHOOK_SECRETS"),
        service_api_tokens=csv("SERVICE_API_TOKENS"),
        notify_signing_secret=signing_secret,
        secret_key=text("SECRET_KEY"),
    )


def _split_url(name: str, value: str, schemes: tuple[str, ...], hint: str = "") -> SplitResult:
    """Check what every URL setting needs: scheme, a host, a valid port, no credentials."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ConfigError(f"{name} must not contain spaces or control characters")
    parts = _parse(name, value)
    if parts.scheme not in schemes:
        if hint:
            raise ConfigError(hint)
        wanted = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ConfigError(f"{name} must be an absolute {wanted} URL, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{name} must not contain a user name or password")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{name} has an invalid port (1-65535), got {value!r}") from None
    if port == 0:
        raise ConfigError(f"{name} has an invalid port (1-65535), got {value!r}")
    if not parts.hostname or not _valid_host(parts.hostname, parts.netloc):
        raise ConfigError(f"{name} must name a valid host, got {value!r}")
    return parts


def _parse(name: str, value: str) -> SplitResult:
    try:
        return urlsplit(value)
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL, got {value!r}") from None


def _valid_host(host: str, netloc: str) -> bool:
    if "[" in netloc:
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def _origin_rule(name: str, value: str, allow_http: bool) -> tuple[tuple[str, ...], str]:
    """Allowed schemes, and the message for an http:// value without the flag."""
    if allow_http:
        return ("https", "http"), ""
    hint = ""
    if value.lower().startswith("http://"):
        hint = f"{name} must be https:// (set ALLOW_INSECURE_CALLBACKS=1 for local development)"
    return ("https",), hint


def _check_public_origin(value: str, allow_http: bool) -> str:
    parts = _split_url(
        "PUBLIC_BASE_URL", value, *_origin_rule("PUBLIC_BASE_URL", value, allow_http)
    )
    if parts.path not in ("", "/"):
        raise ConfigError(
            f"PUBLIC_BASE_URL must be an origin without a path (like https://videos.example.com),"
            f" got {value!r}"
        )
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ConfigError("PUBLIC_BASE_URL must not have a query or fragment")
    return value.rstrip("/")


def _check_api_base(value: str) -> str:
    parts = _split_url("MODELGATES_BASE_URL", value, ("https", "http"))
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ConfigError("MODELGATES_BASE_URL must not have a query or fragment")
    return value.rstrip("/")


def _check_notify_url(value: str, allow_http: bool) -> None:
    parts = _split_url("NOTIFY_URL", value, *_origin_rule("NOTIFY_URL", value, allow_http))
    if parts.fragment or value.endswith("#"):
        raise ConfigError("NOTIFY_URL must not have a fragment")


def _check_database_url(value: str) -> None:
    # Checked by hand, not with _split_url: a socket directory or several hosts are legal.
    parts = _parse("DATABASE_URL", value)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"DATABASE_URL must start with postgresql:// or postgres://, got {parts.scheme!r}"
        )
    if any(ch.isspace() for ch in value):
        raise ConfigError("DATABASE_URL must not contain spaces")
    if "," not in parts.netloc:
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ConfigError("DATABASE_URL has an invalid port (1-65535)")


def _parse_media_storage(value: str) -> tuple[str, str]:
    parts = _parse("MEDIA_STORAGE", value)
    if parts.scheme != "s3":
        raise ConfigError(f"MEDIA_STORAGE must look like s3://bucket/prefix, got {value!r}")
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise ConfigError(f"MEDIA_STORAGE must look like s3://bucket/prefix, got {value!r}")
    bucket = parts.netloc
    if (
        not _BUCKET.match(bucket)
        or ".." in bucket
        or ".-" in bucket
        or "-." in bucket
        or bucket.startswith("xn--")
        or bucket.endswith(("-s3alias", "--ol-s3"))
        or _is_ip(bucket)
    ):
        raise ConfigError(
            "MEDIA_STORAGE bucket must be 3-63 characters of lowercase letters, digits, "
            f"dots and hyphens, starting and ending with a letter or digit, got {bucket!r}"
        )
    prefix = parts.path.strip("/")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in prefix) or "//" in prefix:
        raise ConfigError(f"MEDIA_STORAGE prefix is not a usable key prefix: {prefix!r}")
    if any(segment in (".", "..") for segment in prefix.split("/")):
        raise ConfigError(f"MEDIA_STORAGE prefix must not contain . or .. segments: {prefix!r}")
    return bucket, prefix


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_signing_secret(value: str) -> None:
    prefix = "whsec_"
    if not value.startswith(prefix):
        raise ConfigError("NOTIFY_SIGNING_SECRET must look like whsec_<base64>")
    try:
        key = base64.b64decode(value[len(prefix) :], validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ConfigError("NOTIFY_SIGNING_SECRET must be whsec_ followed by base64 (not empty)")


def _check_file_path(name: str, path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"{name} is a directory, not a file: {path}")
    _check_folder_path(name, path.parent)


def _check_folder_path(name: str, folder: Path) -> None:
    """Fail unless ``folder`` exists and is writable, or could be created."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{name}: cannot create {folder}: {probe} is not a directory")
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == folder else f"cannot be created in {probe}"
        raise ConfigError(f"{name}: {folder} {what}")
