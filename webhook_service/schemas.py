"""Inbound validation: the submit body's shape, then the chosen model's capabilities.

`JobRequestSchema` mirrors every generate parameter of the ModelGates seed and
refuses unknown fields.  `capability_errors` then checks the values against the
model's entry from `/videos/models`, so a value upstream would refuse with a 400
is refused here before any money is at stake.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21")
# Upstream adds resolutions over time; accept the naming pattern, the model decides.
RESOLUTION_PATTERN = re.compile(r"^(\d{3,4}p|\dK)$")
SIZE_PATTERN = re.compile(r"^[1-9]\d{1,4}x[1-9]\d{1,4}$")
FRAME_TYPES = ("first_frame", "last_frame")
REFERENCE_KINDS = ("image_url", "audio_url", "video_url")


class StrictInteger(fields.Integer):
    """An integer that refuses booleans, floats and numeric strings."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Not a valid integer.")
        return value


class StrictBoolean(fields.Boolean):
    """A JSON true/false, nothing else."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value


def _media_url(value: str) -> None:
    if not (value.startswith("https://") or re.match(r"^data:[\w.+-]+/[\w.+-]+;base64,", value)):
        raise ValidationError("Must be an https:// URL or a base64 data: URL.")


class MediaURLSchema(Schema):
    class Meta:
        unknown = RAISE

    url = fields.String(required=True, validate=_media_url)


class FrameImageSchema(Schema):
    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.Equal("image_url"))
    image_url = fields.Nested(MediaURLSchema, required=True)
    frame_type = fields.String(required=True, validate=validate.OneOf(FRAME_TYPES))


class InputReferenceSchema(Schema):
    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.OneOf(REFERENCE_KINDS))
    image_url = fields.Nested(MediaURLSchema)
    audio_url = fields.Nested(MediaURLSchema)
    video_url = fields.Nested(MediaURLSchema)

    @validates_schema
    def _one_matching_url(self, data: dict[str, Any], **kwargs: Any) -> None:
        present = [kind for kind in REFERENCE_KINDS if kind in data]
        if present != [data.get("type")]:
            raise ValidationError(f"Give exactly the '{data.get('type')}' object named by type.")


class ProviderSchema(Schema):
    class Meta:
        unknown = RAISE

    options = fields.Dict(keys=fields.String(), values=fields.Dict())


class JobRequestSchema(Schema):
    """The body of ``POST /api/jobs``."""

    class Meta:
        unknown = RAISE

    model = fields.String(required=True, validate=validate.Length(min=1, max=200))
    prompt = fields.String(validate=validate.Length(min=1, max=20_000))
    aspect_ratio = fields.String(validate=validate.OneOf(ASPECT_RATIOS))
    duration = StrictInteger(validate=validate.Range(min=1, max=600))
    resolution = fields.String(
        validate=validate.Regexp(RESOLUTION_PATTERN, error="Not a resolution such as 720p or 4K.")
    )
    size = fields.String(
        validate=validate.Regexp(SIZE_PATTERN, error="Must be WIDTHxHEIGHT, e.g. 1280x720.")
    )
    seed = StrictInteger(validate=validate.Range(min=0, max=2**63 - 1))
    generate_audio = StrictBoolean()
    frame_images = fields.List(
        fields.Nested(FrameImageSchema), validate=validate.Length(min=1, max=2)
    )
    input_references = fields.List(
        fields.Nested(InputReferenceSchema), validate=validate.Length(min=1, max=16)
    )
    provider = fields.Nested(ProviderSchema)
    notify_url = fields.String(
        allow_none=True,  # null: as if absent (NOTIFY_URL, if set, applies)
        validate=validate.Length(min=1, max=2048),
        metadata={
            "description": "This service's own: where to POST the signed notification"
            " when the job is settled. Never sent upstream."
        },
    )

    @validates_schema
    def _prompt_or_frames(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "prompt" not in data and "frame_images" not in data:
            raise ValidationError("A prompt is required unless frame_images are given.", "prompt")
        frame_types = [image["frame_type"] for image in data.get("frame_images", [])]
        if len(frame_types) != len(set(frame_types)):
            raise ValidationError("Each frame_type may appear once.", "frame_images")


def capability_errors(params: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, list[str]]:
    """Return ``{field: [messages]}`` for values the model does not support."""
    errors: dict[str, list[str]] = {}

    def check(field: str, supported_key: str, value: Any) -> None:
        supported = model.get(supported_key)
        if value is not None and isinstance(supported, list) and value not in supported:
            allowed = ", ".join(str(item) for item in supported) or "none"
            errors.setdefault(field, []).append(
                f"{model.get('id')} does not support {value!r}; supported: {allowed}."
            )

    check("duration", "supported_durations", params.get("duration"))
    check("resolution", "supported_resolutions", params.get("resolution"))
    check("aspect_ratio", "supported_aspect_ratios", params.get("aspect_ratio"))
    check("size", "supported_sizes", params.get("size"))
    for image in params.get("frame_images", []):
        check("frame_images", "supported_frame_images", image["frame_type"])
    for flag in ("generate_audio", "seed"):
        if flag in params and model.get(flag) is not True:
            errors.setdefault(flag, []).append(f"{model.get('id')} does not accept {flag}.")
    return errors
