"""/openapi.json: generated from the schemas, complete, and true of the running app.

schemathesis drives every operation of the document against a real loopback
server whose upstream is the sandbox, and checks each answer against it.
"""

from __future__ import annotations

import re

import pytest
import schemathesis
from conftest import AUTH
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate as validate_document
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from webhook_service.openapi import document

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


def _shape(path: str) -> str:
    """A path with each parameter (Flask's ``<x>`` or OpenAPI's ``{x}``) as ``{}``."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def test_the_document_is_served_without_auth_and_is_valid_openapi(client):
    answer = client.get("/openapi.json")
    assert answer.status_code == 200 and answer.content_type == "application/json"
    spec = answer.get_json()
    assert spec["openapi"].startswith("3.")
    validate_document(spec)
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_every_route_of_the_app_is_described(app):
    paths = {_shape(path): operations for path, operations in document()["paths"].items()}
    described = 0
    for rule in app.url_map.iter_rules():
        path = _shape(rule.rule)
        if not path.startswith(("/api/", "/healthz", "/metrics", "/webhooks/")):
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths.get(path, {}), f"{method} {path} is not described"
            described += 1
    assert described == 9


def test_bodies_answers_and_the_error_body_come_from_the_schemas():
    spec = document()
    schemas = spec["components"]["schemas"]
    assert schemas["Error"]["required"] == ["error"]
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message", "details"}
    assert {"id", "status", "outputs", "completion_source"} <= set(schemas["Job"]["required"])
    assert "additionalProperties" in schemas["JobRequest"]  # unknown fields are refused
    submit = spec["paths"]["/api/jobs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobRequest"
    }
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    body = answer["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/Error"}, (method, path)


@pytest.fixture
def api_schema(live):
    app, server = live
    loaded = schemathesis.openapi.from_dict(document())
    loaded.config.update(base_url=server.url)
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_operation_answers_5xx_or_breaks_the_document(case):
    case.call_and_validate(headers=AUTH, checks=CHECKS)
