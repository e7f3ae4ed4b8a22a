"""Runtime knobs of the development sandbox (not ModelGates), checked on every update.

Each field carries its help text and a *kind* in its metadata; the kind drives both
validation here and the matching ``webhook-service sandbox`` option in ``cli.py``.
The server reads the settings on every request, so a change applies at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

RANGE_MODES = ("206", "ignore")


def _knob(default: Any, kind: str, help: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"kind": kind, "help": help})
    return field(default=default, metadata={"kind": kind, "help": help})


@dataclass
class SandboxSettings:
    """Mutable behaviour knobs of a SandboxServer; all have defaults."""

    pending_seconds: float = _knob(0.5, "seconds", "Seconds a new job stays 'pending'.")
    in_progress_seconds: float = _knob(
        0.5, "seconds", "Seconds a job stays 'in_progress' before its terminal state."
    )
    content_size: int = _knob(
        0, "size", "Bytes per output: 0 serves the sample MP4, N > 0 serves N pseudo-random bytes."
    )
    error_rate: float = _knob(
        0.0, "share", "Share (0-1) of /api/v1 requests answered with an injected error."
    )
    error_statuses: list[int] = _knob(
        [429, 500], "statuses", "HTTP statuses picked at random for injected errors."
    )
    retry_after: int = _knob(1, "size", "Retry-After seconds sent with 429 and 503 answers.")
    drop_callbacks: float = _knob(0.0, "share", "Share (0-1) of jobs whose callback is never sent.")
    duplicate_callbacks: float = _knob(
        0.0, "share", "Share (0-1) of jobs whose callback is sent twice."
    )
    callback_delay_seconds: float = _knob(
        0.0, "seconds", "Sandbox-clock seconds between a job's terminal state and its callback."
    )
    reorder_callbacks: bool = _knob(
        False, "flag", "Hold due callbacks briefly and send them in shuffled order."
    )
    truncate_downloads: float = _knob(
        0.0, "share", "Share (0-1) of content responses cut off half way (full Content-Length)."
    )
    range_support: str = _knob(
        "206", "range", "'206' honours Range requests; 'ignore' always answers 200 in full."
    )
    throttle_bytes_per_second: int = _knob(
        0, "size", "Serve content at most this many bytes per second (0: unlimited)."
    )
    callback_attempts: int = _knob(
        3, "attempts", "Attempts per callback on a non-2xx answer or a connection error."
    )
    ca_file: str | None = _knob(None, "path", "CA bundle used to verify https:// callback URLs.")
    require_https_callbacks: bool = _knob(
        False, "flag", "Refuse (400) a callback_url that is not https://, like the real API."
    )
    seed: int | None = _knob(None, "seed", "Random seed, for reproducible ids and knobs.")

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy of the settings."""
        return asdict(self)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update after checking every value; raise ValueError naming the field."""
        kinds = {f.name: f.metadata["kind"] for f in fields(self)}
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in kinds:
                raise ValueError(f"unknown setting {name!r}")
            checked[name] = check_setting(name, kinds[name], value)
        for name, value in checked.items():
            setattr(self, name, value)


def check_setting(name: str, kind: str, value: Any) -> Any:
    """Return ``value`` normalised for a setting of ``kind``; raise ValueError if it is invalid."""
    if kind in ("seconds", "share"):
        if not _is_number(value) or value < 0 or (kind == "share" and value > 1):
            limit = "between 0 and 1" if kind == "share" else "a number >= 0"
            raise ValueError(f"{name} must be {limit}")
        return float(value)
    if kind in ("size", "attempts"):
        low = 1 if kind == "attempts" else 0
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}")
        return value
    if kind == "statuses":
        if (
            not isinstance(value, list)
            or not value
            or not all(_is_int(v) and 400 <= v <= 599 for v in value)
        ):
            raise ValueError(f"{name} must be a non-empty list of HTTP error statuses (400-599)")
        return list(value)
    if kind == "flag":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if kind == "range":
        if value not in RANGE_MODES:
            raise ValueError(f"{name} must be one of {', '.join(RANGE_MODES)}")
        return value
    if kind == "path":
        if value is not None and (not isinstance(value, str) or not os.path.isfile(value)):
            raise ValueError(f"{name} must be the path of an existing file, or null")
        return value
    if value is not None and not _is_int(value):
        raise ValueError(f"{name} must be an integer or null")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
