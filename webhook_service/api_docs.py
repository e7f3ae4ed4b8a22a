"""Schemas of what the API answers, for the OpenAPI document.

The request side is `schemas.JobRequestSchema` itself; these describe the answers:
the job JSON, a page of jobs, the model list, the health answer and the one error
body every failure carries.  Nothing validates answers with them at run time; the
OpenAPI test checks live answers against the document they produce.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from .jobs import STATUSES

OUTPUT_STATUSES = ("pending", "downloading", "downloaded", "failed")
NOTIFICATION_STATUSES = ("pending", "delivered", "failed")


class ErrorDetailSchema(Schema):
    code = fields.String(required=True, metadata={"description": "snake_case error code"})
    message = fields.String(required=True, metadata={"description": "A human sentence."})
    details = fields.Dict(
        required=True,
        metadata={"description": "Context: field errors `{field: [messages]}`, `job_id` …"},
    )


class ErrorSchema(Schema):
    """The body of every error answer."""

    error = fields.Nested(ErrorDetailSchema, required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.Equal("ok"))


class OutputSchema(Schema):
    index = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(OUTPUT_STATUSES))
    bytes = fields.Integer(required=True, allow_none=True)
    sha256 = fields.String(required=True, allow_none=True)
    error = fields.String(required=True, allow_none=True)
    url = fields.String(required=True, metadata={"description": "Where to fetch the video."})


class NotificationSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(NOTIFICATION_STATUSES))
    attempts = fields.Integer(required=True)
    last_status = fields.Integer(required=True, allow_none=True)
    last_error = fields.String(required=True, allow_none=True)


class JobSchema(Schema):
    """A job as the API answers it."""

    id = fields.String(required=True)
    upstream_id = fields.String(required=True, allow_none=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    model = fields.String(required=True)
    prompt = fields.String(required=True, allow_none=True)
    params = fields.Dict(required=True, metadata={"description": "The submitted parameters."})
    error = fields.String(required=True, allow_none=True)
    generation_id = fields.String(required=True, allow_none=True)
    cost = fields.Float(required=True, allow_none=True)
    completion_source = fields.String(
        required=True, allow_none=True, validate=validate.OneOf(("callback", "poll"))
    )
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    finished_at = fields.DateTime(required=True, allow_none=True)
    outputs = fields.List(fields.Nested(OutputSchema), required=True)
    settled = fields.Boolean(
        required=True,
        metadata={"description": "Terminal, and every output downloaded or failed."},
    )
    notify_url = fields.String(required=True, allow_none=True)
    notification = fields.Nested(NotificationSchema, required=True, allow_none=True)


class JobPageSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class ModelListSchema(Schema):
    data = fields.List(
        fields.Dict(), required=True, metadata={"description": "Upstream's model list as sent."}
    )
