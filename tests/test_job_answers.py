"""Job answers from a misbehaving upstream: read into an observation, or a ModelGatesError.

``GET /videos/<id>`` over a real loopback socket.  A body that is not JSON, not an
object, absurdly nested or huge becomes a ``ServerError`` the worker reschedules, never
a crash.  Odd numbers (NaN, Infinity, 1e999, 10**400) are valid enough to read: the job
still completes, and the domain's reader turns them into nothing our own JSON could
not carry.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hostile_upstream import Answer, HostileUpstream, hostile_upstream_fixture  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook_service.jobs import Observation
from webhook_service.modelgates import (
    MAX_JSON_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_RETRY_AFTER,
    ModelGatesClient,
    ModelGatesError,
    RequestRefused,
    ServerError,
    TransportError,
)

JOB = "/videos/job-1"


def client_for(upstream: HostileUpstream, timeout: float = 10.0) -> ModelGatesClient:
    return ModelGatesClient(upstream.base_url, "sk-key", timeout=timeout, sleep=lambda _: None)


def job_text(cost: str) -> str:
    usage = '{"cost": ' + cost + "}"
    return '{"id": "job-1", "status": "completed", "usage": ' + usage + ', "unsigned_urls": ["u"]}'


def test_a_plain_cost_in_a_poll_answer_is_read(hostile_upstream):
    hostile_upstream.on("GET", JOB, Answer.json_text(job_text("0.25")))
    with client_for(hostile_upstream) as client:
        assert Observation.from_upstream(client.get_job("job-1"), "poll").cost == 0.25


@pytest.mark.parametrize(
    "cost", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400", str(10**400), "[NaN]", '"1"']
)
def test_odd_numbers_in_a_poll_answer_still_complete_the_job_without_a_cost(hostile_upstream, cost):
    hostile_upstream.on("GET", JOB, Answer.json_text(job_text(cost)))
    with client_for(hostile_upstream) as client:
        seen = Observation.from_upstream(client.get_job("job-1"), "poll")
    assert (seen.status, seen.cost, seen.output_count) == ("completed", None, 1)
    assert len(hostile_upstream.requests) == 1


def test_an_accepted_submit_keeps_its_job_id_whatever_numbers_ride_along(hostile_upstream):
    accepted = '{"id": "job-9", "status": "pending", "usage": {"cost": NaN}, "eta": 1e999}'
    hostile_upstream.on("POST", "/videos", Answer.json_text(accepted, status=202))
    with client_for(hostile_upstream) as client:
        assert client.submit({"model": "m", "prompt": "p"})["id"] == "job-9"


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        job_text("9" * 5000),
        '{"id": "job-1", "status": "completed"',
        "<html>Bad gateway</html>",
        '["not", "an", "object"]',
    ],
    ids=["deep-array", "deep-object", "5000-digits", "cut-json", "html", "array"],
)
def test_an_unparsable_poll_answer_is_an_upstream_error_not_a_crash(hostile_upstream, body):
    hostile_upstream.on("GET", JOB, Answer.json_text(body))
    with client_for(hostile_upstream) as client, pytest.raises(ServerError):
        client.get_job("job-1")


def test_invalid_utf8_in_a_poll_answer_is_an_upstream_error(hostile_upstream):
    body = b'{"id": "job-1", "status": "\xff\xfe"}'
    hostile_upstream.on("GET", JOB, Answer(200, body, content_type="application/json"))
    with client_for(hostile_upstream) as client, pytest.raises(ServerError):
        client.get_job("job-1")


def test_a_poll_answer_over_the_size_limit_is_refused_unread(hostile_upstream):
    body = b'{"id": "job-1", "padding": "' + b"a" * MAX_JSON_BYTES + b'"}'
    hostile_upstream.on("GET", JOB, Answer(200, body, content_type="application/json"))
    with client_for(hostile_upstream) as client, pytest.raises(ServerError, match="larger"):
        client.get_job("job-1")


def test_a_poll_answer_cut_or_stalled_mid_body_is_a_transport_error(hostile_upstream):
    text = job_text("0.5").encode()
    hostile_upstream.on(
        "GET", JOB, Answer(200, text, cut_after=10), Answer(200, text, hold_after=10)
    )
    with client_for(hostile_upstream, timeout=0.3) as client, pytest.raises(TransportError):
        client.get_job("job-1")


def test_an_error_envelope_nested_too_deep_still_maps_to_its_status(hostile_upstream):
    hostile_upstream.on("GET", JOB, Answer.json_text("[" * 100_000, status=404))
    with client_for(hostile_upstream) as client, pytest.raises(RequestRefused) as caught:
        client.get_job("job-1")
    assert caught.value.status == 404


def test_a_huge_error_message_is_cut_to_a_readable_length(hostile_upstream):
    hostile_upstream.on("GET", JOB, Answer.error(404, "x" * 30_000))
    with client_for(hostile_upstream) as client, pytest.raises(RequestRefused) as caught:
        client.get_job("job-1")
    assert caught.value.message == "x" * MAX_MESSAGE_CHARS


@pytest.mark.parametrize("value", ["1e999", "inf", "nan", "-5", "99999999999", "soon"])
def test_retry_after_is_always_a_finite_bounded_delay_or_none(hostile_upstream, value):
    hostile_upstream.on("GET", JOB, Answer.error(429, headers=[("Retry-After", value)]))
    with client_for(hostile_upstream) as client, pytest.raises(ModelGatesError) as caught:
        client.get_job("job-1")
    retry_after = caught.value.retry_after  # type: ignore[attr-defined]
    assert retry_after is None or (
        math.isfinite(retry_after) and 0 <= retry_after <= MAX_RETRY_AFTER
    )


# Any answer at all --------------------------------------------------------------------

NUMBERS = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e999", "-0", "0.1", "1e308", str(10**30), str(-(2**70))]
)
SCALARS = st.one_of(
    NUMBERS,
    st.sampled_from(["null", "true", "false"]),
    st.text(max_size=8).map(json.dumps),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.text(max_size=5), inner, max_size=4).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=12,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=VALUES, status=st.sampled_from([200, 200, 200, 404]))
def test_a_poll_answer_is_read_into_strict_json_values_or_is_an_upstream_error(
    hostile_upstream, body, status
):
    hostile_upstream.reset()
    hostile_upstream.on("GET", JOB, Answer.json_text(body, status=status))
    with client_for(hostile_upstream) as client:
        try:
            job = client.get_job("job-1")
        except ModelGatesError as error:
            assert str(error)
            return
    assert isinstance(job, dict) and status == 200
    seen = Observation.from_upstream({**job, "id": "job-1"}, "poll")
    json.dumps(dataclasses.asdict(seen), allow_nan=False)  # raises on NaN or Infinity
