"""Checks on ``POST /videos`` bodies, against the catalogue, as ModelGates answers them.

Every refusal is an ``ApiError`` (400, or 404 for an unknown model) whose message
names the field.  A field given as ``null`` counts as absent.  Per-job sandbox
behaviour comes from ``provider.options.sandbox.parameters`` and is checked here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ApiError
from .models import find_model

OUTCOMES = ("completed", "failed", "cancelled", "expired")
CALLBACK_MODES = ("deliver", "drop", "duplicate")
REFERENCE_TYPES = ("image_url", "audio_url", "video_url")
MAX_OUTPUTS = 16
SIZE_PATTERN = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*$")
OVERRIDES = "provider.options.sandbox.parameters"


@dataclass
class Submission:
    """A checked submit body and the sandbox overrides it carries."""

    model: str
    body: dict[str, Any]
    callback_url: str | None
    overrides: dict[str, Any] = field(default_factory=dict)


def validate_submit(raw: Any, require_https_callbacks: bool) -> Submission:
    """Return the checked submission or raise ApiError naming the offending field."""
    if not isinstance(raw, dict):
        raise ApiError(400, "request body must be a JSON object")
    body = {name: value for name, value in raw.items() if value is not None}
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise ApiError(400, "model is required and must be a string")
    model = find_model(model_id)
    if model is None:
        raise ApiError(404, f"model {model_id!r} not found")
    _check_prompt(body)
    _check_choice(body, "duration", model["supported_durations"], _is_int)
    _check_choice(body, "resolution", model["supported_resolutions"], _is_str)
    _check_choice(body, "aspect_ratio", model["supported_aspect_ratios"], _is_str)
    size = _check_choice(body, "size", model["supported_sizes"], _is_str)
    if size is not None and not SIZE_PATTERN.match(size):
        raise ApiError(400, "size must look like WIDTHxHEIGHT, e.g. 1280x720")
    for flag, check in (("generate_audio", _is_bool), ("seed", _is_int)):
        if flag in body:
            _require_type(body, flag, check)
            if model[flag] is not True:
                raise ApiError(400, f"{flag} is not supported by model {model_id}")
    _check_upscaling(body, model)
    _check_frame_images(body.get("frame_images"), model)
    _check_references(body.get("input_references"))
    for name in ("previous_job_id", "session_id", "user"):
        _require_type(body, name, _is_str)
    _require_type(body, "trace", _is_dict)
    callback_url = _check_callback_url(body.get("callback_url"), require_https_callbacks)
    return Submission(model_id, raw, callback_url, _check_provider(body.get("provider")))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


_TYPE_NAMES = {
    _is_int: "an integer",
    _is_number: "a number",
    _is_str: "a string",
    _is_bool: "a boolean",
    _is_dict: "an object",
}


def _require_type(body: dict[str, Any], name: str, check: Any) -> None:
    if name in body and not check(body[name]):
        raise ApiError(400, f"{name} must be {_TYPE_NAMES[check]}")


def _check_prompt(body: dict[str, Any]) -> None:
    if "prompt" in body:
        if not isinstance(body["prompt"], str) or not body["prompt"].strip():
            raise ApiError(400, "prompt must be a non-empty string")
    elif not body.get("frame_images"):
        raise ApiError(400, "prompt is required unless frame_images are given")


def _check_choice(body: dict[str, Any], name: str, allowed: list[Any] | None, check: Any) -> Any:
    if name not in body:
        return None
    _require_type(body, name, check)
    value = body[name]
    if name == "duration" and value < 1:
        raise ApiError(400, "duration must be at least 1 second")
    if allowed is not None and value not in allowed:
        listed = ", ".join(str(item) for item in allowed)
        raise ApiError(400, f"{name} {value!r} is not supported by {body['model']} ({listed})")
    return value


def _check_upscaling(body: dict[str, Any], model: dict[str, Any]) -> None:
    if "creativity" in body:
        _require_type(body, "creativity", _is_int)
        if model["creativity"] is None or body["creativity"] not in model["creativity"]:
            message = f"creativity {body['creativity']!r} is not supported by {model['id']}"
            raise ApiError(400, message)
    if "upscale_factor" in body:
        _require_type(body, "upscale_factor", _is_number)
        bounds = model["upscale_factor"]
        if bounds is None or not bounds["min"] <= body["upscale_factor"] <= bounds["max"]:
            message = f"upscale_factor {body['upscale_factor']!r} is not supported by {model['id']}"
            raise ApiError(400, message)


def _check_url(value: Any, where: str) -> None:
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str) or not url.startswith(("https://", "data:")):
        raise ApiError(400, f"{where}.url must be an https:// or data: URL")


def _check_frame_images(frames: Any, model: dict[str, Any]) -> None:
    if frames is None:
        return
    if not isinstance(frames, list):
        raise ApiError(400, "frame_images must be a list")
    allowed = model["supported_frame_images"] or ["first_frame", "last_frame"]
    seen: set[str] = set()
    for n, frame in enumerate(frames):
        where = f"frame_images[{n}]"
        if not isinstance(frame, dict) or frame.get("type") != "image_url":
            raise ApiError(400, f"{where}.type must be 'image_url'")
        _check_url(frame.get("image_url"), f"{where}.image_url")
        frame_type = str(frame.get("frame_type"))
        if frame_type not in allowed:
            raise ApiError(
                400,
                f"{where}.frame_type {frame_type!r} is not supported by {model['id']} "
                f"({', '.join(allowed)})",
            )
        if frame_type in seen:
            raise ApiError(400, f"{where}.frame_type {frame_type!r} is given twice")
        seen.add(frame_type)


def _check_references(references: Any) -> None:
    if references is None:
        return
    if not isinstance(references, list):
        raise ApiError(400, "input_references must be a list")
    for n, reference in enumerate(references):
        where = f"input_references[{n}]"
        kind = reference.get("type") if isinstance(reference, dict) else None
        if kind not in REFERENCE_TYPES:
            raise ApiError(400, f"{where}.type must be one of {', '.join(REFERENCE_TYPES)}")
        _check_url(reference.get(kind), f"{where}.{kind}")


def _check_callback_url(url: Any, require_https: bool) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, "callback_url must be an absolute http(s) URL")
    if require_https and parts.scheme != "https":
        raise ApiError(400, "callback_url must use https")
    return str(url)


def _check_provider(provider: Any) -> dict[str, Any]:
    if provider is None:
        return {}
    if not isinstance(provider, dict):
        raise ApiError(400, "provider must be an object")
    options = provider.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ApiError(400, "provider.options must map provider slugs to objects")
    parameters = options.get("sandbox", {}).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, f"{OVERRIDES} must be an object")
    return _check_overrides(parameters)


_OVERRIDE_RULES: dict[str, tuple[Any, str]] = {
    "outcome": (lambda v: v in OUTCOMES, f"one of {', '.join(OUTCOMES)}"),
    "outputs": (lambda v: _is_int(v) and 1 <= v <= MAX_OUTPUTS, f"an integer 1-{MAX_OUTPUTS}"),
    "callback": (lambda v: v in CALLBACK_MODES, f"one of {', '.join(CALLBACK_MODES)}"),
    "content_size": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "pending_seconds": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "in_progress_seconds": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
}


def _check_overrides(parameters: dict[str, Any]) -> dict[str, Any]:
    for name, value in parameters.items():
        rule = _OVERRIDE_RULES.get(name)
        if rule is not None and not rule[0](value):
            raise ApiError(400, f"{OVERRIDES}.{name} must be {rule[1]}")
    return {name: value for name, value in parameters.items() if name in _OVERRIDE_RULES}
