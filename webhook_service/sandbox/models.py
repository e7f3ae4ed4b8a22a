"""The sandbox's model catalogue and the capability checks upstream applies.

Entries carry every field the official SDK's strict ``VideoModel`` requires
(``upscale_factor`` and ``creativity`` are null except on upscalers).
"""

from __future__ import annotations

from typing import Any

MODELS: list[dict[str, Any]] = [
    {
        "id": "google/veo-3.1",
        "canonical_slug": "google/veo-3.1",
        "name": "Google: Veo 3.1 (sandbox)",
        "description": "Sandbox stand-in with Veo 3.1's advertised capabilities.",
        "created": 1760000000,
        "supported_resolutions": ["720p", "1080p"],
        "supported_aspect_ratios": ["16:9", "9:16"],
        "supported_sizes": ["1280x720", "720x1280", "1920x1080", "1080x1920"],
        "supported_durations": [4, 6, 8],
        "supported_frame_images": ["first_frame", "last_frame"],
        "generate_audio": True,
        "seed": True,
        "pricing_skus": {"video_per_second": "0.40"},
        "allowed_passthrough_parameters": ["sandbox"],
        "upscale_factor": None,
        "creativity": None,
    },
    {
        "id": "sandbox/tiny",
        "canonical_slug": "sandbox/tiny",
        "name": "Sandbox: tiny",
        "description": "A cheap, fast sandbox model.",
        "created": 1760000000,
        "supported_resolutions": ["360p", "480p", "720p"],
        "supported_aspect_ratios": ["16:9", "9:16", "1:1"],
        "supported_sizes": None,
        "supported_durations": list(range(1, 11)),
        "supported_frame_images": ["first_frame"],
        "generate_audio": False,
        "seed": None,
        "pricing_skus": {"video_per_second": "0.01"},
        "allowed_passthrough_parameters": ["sandbox"],
        "upscale_factor": None,
        "creativity": None,
    },
    {
        "id": "sandbox/upscaler",
        "canonical_slug": "sandbox/upscaler",
        "name": "Sandbox: upscaler",
        "description": "An upscaling model: no capability arrays.",
        "created": 1760000000,
        "supported_resolutions": None,
        "supported_aspect_ratios": None,
        "supported_sizes": None,
        "supported_durations": None,
        "supported_frame_images": None,
        "generate_audio": None,
        "seed": None,
        "pricing_skus": {"per_video": "0.05"},
        "allowed_passthrough_parameters": ["sandbox"],
        "upscale_factor": {"min": 2, "max": 4},
        "creativity": [0, 1, 2, 3],
    },
]

_CHECKS = (
    ("duration", "supported_durations"),
    ("resolution", "supported_resolutions"),
    ("aspect_ratio", "supported_aspect_ratios"),
    ("size", "supported_sizes"),
)
_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "prompt": str,
    "duration": int,
    "resolution": str,
    "aspect_ratio": str,
    "size": str,
    "seed": int,
    "generate_audio": bool,
    "frame_images": list,
    "input_references": list,
    "callback_url": str,
    "provider": dict,
}


def find(model_id: str) -> dict[str, Any] | None:
    """Return a model by id or canonical slug."""
    return next((m for m in MODELS if model_id in (m["id"], m["canonical_slug"])), None)


def problem(body: dict[str, Any], require_https: bool) -> tuple[int, str] | None:
    """Return (status, message) for a submit body upstream would refuse, else None."""
    for name, kind in _TYPES.items():
        value = body.get(name)
        if value is not None and (
            not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        ):
            return 400, f"{name} has the wrong type"
    if not body.get("model"):
        return 400, "model is required"
    model = find(body["model"])
    if model is None:
        return 404, f"Model {body['model']} not found"
    frames = body.get("frame_images") or []
    if not body.get("prompt") and not frames:
        return 400, "prompt is required for text-to-video"
    for field, key in _CHECKS:
        supported = model.get(key)
        if field in body and supported is not None and body[field] not in supported:
            return 400, f"{field} {body[field]!r} is not supported by {model['id']}"
    for frame in frames:
        if (
            not isinstance(frame, dict)
            or frame.get("type") != "image_url"
            or not isinstance(frame.get("image_url"), dict)
        ):
            return 400, "frame_images entries must be image_url objects"
        supported = model.get("supported_frame_images")
        if supported is not None and frame.get("frame_type") not in supported:
            return 400, f"frame_type {frame.get('frame_type')!r} is not supported"
    for flag in ("generate_audio", "seed"):
        if flag in body and model.get(flag) is not True:
            return 400, f"{flag} is not supported by {model['id']}"
    callback = body.get("callback_url")
    if callback is not None:
        if not callback.startswith(("https://", "http://")):
            return 400, "callback_url must be a URI"
        if require_https and not callback.startswith("https://"):
            return 400, "callback_url must be HTTPS"
    return None
