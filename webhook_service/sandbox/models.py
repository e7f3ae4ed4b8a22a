"""The sandbox's model catalogue, in the shape of ``GET /videos/models``.

Every field the official SDK requires is present on every model (``creativity`` and
``upscale_factor`` are null except on the upscaler).  ``sandbox/*`` models are made up.
"""

from __future__ import annotations

import copy
from typing import Any

SANDBOX_PARAMETERS = [
    "outcome",
    "outputs",
    "callback",
    "content_size",
    "pending_seconds",
    "in_progress_seconds",
]

_CATALOGUE: list[dict[str, Any]] = [
    {
        "id": "google/veo-3.1",
        "canonical_slug": "google/veo-3.1-20251015",
        "name": "Google: Veo 3.1 (sandbox copy)",
        "description": "Sandbox stand-in with Veo 3.1's advertised capabilities.",
        "created": 1760486400,
        "supported_resolutions": ["720p", "1080p"],
        "supported_aspect_ratios": ["16:9", "9:16"],
        "supported_sizes": ["1280x720", "720x1280", "1920x1080", "1080x1920"],
        "supported_durations": [4, 6, 8],
        "supported_frame_images": ["first_frame", "last_frame"],
        "generate_audio": True,
        "seed": True,
        "creativity": None,
        "upscale_factor": None,
        "pricing_skus": {
            "video_duration_seconds_720p": "0.40",
            "video_duration_seconds_1080p": "0.40",
            "video_duration_seconds_with_audio": "0.75",
        },
        "allowed_passthrough_parameters": ["negative_prompt", "person_generation"],
    },
    {
        "id": "sandbox/tiny",
        "canonical_slug": "sandbox/tiny-20260101",
        "name": "Sandbox: Tiny",
        "description": "Fast, cheap sandbox model with discrete durations from 1 to 10 seconds.",
        "created": 1767225600,
        "supported_resolutions": ["360p", "480p", "720p"],
        "supported_aspect_ratios": ["16:9", "9:16", "1:1"],
        "supported_sizes": None,
        "supported_durations": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "supported_frame_images": ["first_frame"],
        "generate_audio": False,
        "seed": None,
        "creativity": None,
        "upscale_factor": None,
        "pricing_skus": {"video_duration_seconds": "0.05"},
        "allowed_passthrough_parameters": list(SANDBOX_PARAMETERS),
    },
    {
        "id": "sandbox/upscaler",
        "canonical_slug": "sandbox/upscaler-20260101",
        "name": "Sandbox: Upscaler",
        "description": "Sandbox upscaler: no capability lists; upscale_factor and creativity.",
        "created": 1767225600,
        "supported_resolutions": None,
        "supported_aspect_ratios": None,
        "supported_sizes": None,
        "supported_durations": None,
        "supported_frame_images": None,
        "generate_audio": None,
        "seed": None,
        "creativity": [1, 2, 3, 4, 5],
        "upscale_factor": {"min": 1.0, "max": 4.0},
        "pricing_skus": {"video_upscale_seconds": "0.10"},
        "allowed_passthrough_parameters": list(SANDBOX_PARAMETERS),
    },
]


def list_models() -> list[dict[str, Any]]:
    """Return a copy of the catalogue."""
    return copy.deepcopy(_CATALOGUE)


def find_model(model_id: str) -> dict[str, Any] | None:
    """Return a copy of the model called ``model_id``, or None."""
    for model in _CATALOGUE:
        if model["id"] == model_id:
            return copy.deepcopy(model)
    return None
