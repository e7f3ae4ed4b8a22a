"""Hostile clients and upstreams: never a 5xx, always strict JSON, nothing stored on refusal.

Property-based tests drive the receiver, the submit body and the list parameters
with random and deliberately nasty input through the Flask test client; a few
requests go over a real loopback socket, where the bytes are not tidied by a
client library first.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from conftest import AUTH, ENGINES, WEBHOOK_SECRET, LiveServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_webhooks import event_body, make_job, signed

from webhook_service import strict_json
from webhook_service.jobs import usable_cost
from webhook_service.signatures import sign
from webhook_service.store import StoreUnavailable

FIXTURES_SHARED = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Numbers no JSON peer can hold, written as they would arrive on the wire.
HOSTILE_NUMBERS = (
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    "1" + "0" * 400,
    "-" + "9" * 30,
    "9" * 5000,
)
VALID = {"model": "google/veo-3.1", "prompt": "a lighthouse at dusk", "duration": 8}


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} in an answer: not RFC 8259 JSON")


def strict_body(response: Any) -> Any:
    """The answer's body parsed as RFC 8259 JSON, or an AssertionError saying why not."""
    text = response.get_data().decode("utf-8")  # strict: an answer is UTF-8
    return json.loads(text, parse_constant=_refuse_constant)


def assert_answer_is_sound(response: Any) -> None:
    """Never 5xx; any body strict JSON; any error in the contract's shape."""
    assert response.status_code < 500, response.get_data()[:300]
    if response.status_code == 204:
        assert response.get_data() == b""
        return
    body = strict_body(response)
    if response.status_code >= 400:
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message", "details"}
        assert isinstance(body["error"]["code"], str) and body["error"]["message"]


def job_count(store: Any) -> int:
    return sum(store.count_jobs_by_status().values())


# Any JSON-ish value, including NaN/Infinity, huge integers and lone surrogates.
ODD_CHARACTERS = ["\ud800", "\udfff", "\x00", "\ufffe", "\U0010ffff", "\u202e", "\x7f"]
any_text = st.text(
    st.characters(exclude_categories=()) | st.sampled_from(ODD_CHARACTERS), max_size=20
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def deep(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return (opener * depth + "1" + closer * depth).encode()


nested_bodies = st.builds(
    deep, st.integers(min_value=65, max_value=100_000), st.sampled_from(["[", '{"a":'])
)


def with_raw_value(field: str, raw: str) -> bytes:
    """VALID with one field's value spliced in as raw JSON text."""
    body = json.dumps({**VALID, field: "__RAW__"})
    return body.replace('"__RAW__"', raw).encode()


hostile_submit_bodies = st.one_of(
    st.builds(
        with_raw_value,
        st.sampled_from(["duration", "seed", "prompt", "provider", "aspect_ratio"]),
        st.sampled_from(HOSTILE_NUMBERS),
    ),
    st.builds(
        lambda raw: with_raw_value("provider", '{"options": {"x": {"y": ' + raw + "}}}"),
        st.sampled_from(HOSTILE_NUMBERS),
    ),
    st.builds(
        lambda escape: with_raw_value("prompt", f'"a {escape} b"'),
        st.sampled_from(["\\ud800", "\\udfff", "\\udc00\\ud800", "\\u0000"]),
    ),
    nested_bodies,
    st.sampled_from(
        [
            b'{"model": "m", "prompt": "\xc0\x80"}',  # overlong NUL
            b'{"model": "m", "prompt": "\xed\xa0\x80"}',  # an encoded surrogate
            b'\xef\xbb\xbf{"model": "m", "prompt": "p"}',  # a byte-order mark
            b'{"model": "m", "prompt": "p"',
        ]
    ),
)


# The submit body -------------------------------------------------------------


@FIXTURES_SHARED
@given(body=hostile_submit_bodies)
def test_hostile_submit_bodies_are_refused_and_nothing_is_stored(client, store, sandbox, body):
    before, submits = job_count(store), sandbox.stats()["submits"]
    response = client.post("/api/jobs", data=body, headers=AUTH, content_type="application/json")
    assert response.status_code in (400, 422), response.get_data()[:300]
    assert_answer_is_sound(response)
    assert job_count(store) == before and sandbox.stats()["submits"] == submits


@FIXTURES_SHARED
@given(value=json_values)
def test_any_json_submit_body_gets_a_sound_answer(client, store, sandbox, value):
    body = json.dumps(value).encode()  # NaN and Infinity as Python writes them
    before = job_count(store)
    response = client.post("/api/jobs", data=body, headers=AUTH, content_type="application/json")
    assert_answer_is_sound(response)
    if response.status_code >= 400:
        assert job_count(store) == before
    assert_answer_is_sound(client.get("/api/jobs?limit=100", headers=AUTH))


@FIXTURES_SHARED
@given(field=st.sampled_from(["prompt", "model"]), text=any_text)
def test_any_prompt_text_is_stored_and_answered_as_valid_json_or_refused(
    client, store, sandbox, field, text
):
    body = json.dumps({**VALID, field: "x" + text}).encode()  # ensure_ascii: surrogates escaped
    before = job_count(store)
    response = client.post("/api/jobs", data=body, headers=AUTH, content_type="application/json")
    assert_answer_is_sound(response)
    if response.status_code >= 400:
        assert job_count(store) == before
    assert_answer_is_sound(client.get("/api/jobs?limit=100", headers=AUTH))


def test_numbers_out_of_range_name_the_field(client, store, sandbox):
    response = client.post("/api/jobs", data=with_raw_value("seed", "1" + "0" * 400), headers=AUTH)
    assert response.status_code == 422
    assert response.get_json()["error"]["details"] == {"seed": ["Number out of range."]}
    nested = with_raw_value("provider", '{"options": {"x": {"y": 1e999}}}')
    response = client.post("/api/jobs", data=nested, headers=AUTH)
    assert response.get_json()["error"]["details"] == {
        "provider.options.x.y": ["Number out of range."]
    }
    assert job_count(store) == 0 and sandbox.stats()["submits"] == 0


def test_very_deep_json_is_400_not_a_recursion_error(client, store, sandbox):
    response = client.post("/api/jobs", data=deep(100_000, "["), headers=AUTH)
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == "The body is nested too deeply."
    assert job_count(store) == 0


# The list parameters -----------------------------------------------------------

query_values = st.one_of(
    st.binary(max_size=30),
    st.sampled_from(
        [b"\xed\xa0\x80", b"\xc0\x80", b"\x00", b"\xef\xbc\x91", b"\xc2\xb2", b"9" * 5000, b"-1"]
    ),
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda n: str(n).encode()),
)


@FIXTURES_SHARED
@given(
    params=st.dictionaries(
        st.sampled_from([b"status", b"cursor", b"limit"]), query_values, max_size=3
    )
)
def test_any_list_parameters_get_200_or_422_in_strict_json(hooks, db, params):
    if db.job("vj_listed") is None:
        make_job(db, job_id="vj_listed", upstream_id="job-listed")
    query = b"&".join(
        name + b"=" + quote_from_bytes(value).encode() for name, value in params.items()
    )
    response = hooks.get("/api/jobs?" + query.decode(), headers=AUTH)
    assert response.status_code in (200, 422), response.get_data()[:300]
    assert_answer_is_sound(response)
    if response.status_code == 200:
        assert set(strict_body(response)) == {"jobs", "next_cursor"}


@pytest.mark.parametrize(
    "query", ["limit=%EF%BC%91", "limit=%C2%B2", "limit=" + "1" * 5000, "limit=007", "limit=+5"]
)
def test_a_limit_not_written_in_plain_digits_from_1_to_100_is_422(hooks, query):
    response = hooks.get("/api/jobs?" + query, headers=AUTH)
    expected = 200 if query == "limit=007" else 422
    assert response.status_code == expected


# The receiver ------------------------------------------------------------------

latin1_text = st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=80)
signature_headers = st.one_of(
    latin1_text,
    st.builds(lambda t, v: f"t={t},v1={v}", latin1_text, latin1_text),
    st.builds(lambda n: f"t={'9' * n},v1={'0' * 64}", st.integers(min_value=10, max_value=20_000)),
    st.builds(lambda n: f"t={int(time.time())}," + ",".join(["v1=é"] * n), st.integers(1, 500)),
)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Every guarantee here holds on each database engine (PostgreSQL refuses NUL in text)."""
    return str(request.param)


@pytest.fixture
def rejected() -> set[bytes]:
    """Bodies a property test has seen rejected so far (examples share the database)."""
    return set()


def count_events(store: Any) -> int:
    return store.count_events()


@FIXTURES_SHARED
@given(
    body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
    header=signature_headers,
)
def test_unsigned_or_badly_signed_callbacks_are_401_and_nothing_is_stored(hooks, db, body, header):
    before = count_events(db)
    response = hooks.post(
        "/webhooks/modelgates", data=body, headers={"X-OpenRouter-Signature": header}
    )
    assert response.status_code == 401
    assert_answer_is_sound(response)
    assert count_events(db) == before


hostile_envelopes = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    nested_bodies,
    st.builds(
        lambda status, cost, extra: (
            json.dumps(
                {
                    "type": f"video.generation.{status}",
                    "data": {
                        "id": "job-1",
                        "status": status,
                        "usage": {"cost": "__COST__"},
                        **extra,
                    },
                }
            )
            .replace('"__COST__"', cost)
            .encode()
        ),
        st.sampled_from(["completed", "failed", "in_progress", "pending"]),
        st.sampled_from(HOSTILE_NUMBERS + ("0.25", "true", '"1"')),
        st.dictionaries(st.sampled_from(["unsigned_urls", "error", "generation_id"]), json_values),
    ),
)


@FIXTURES_SHARED
@given(body=hostile_envelopes)
def test_signed_callbacks_are_never_5xx_and_jobs_stay_strict_json(hooks, db, rejected, body):
    if db.job("vj_1") is None:
        make_job(db)
    before = count_events(db)
    headers = {"X-OpenRouter-Signature": sign(WEBHOOK_SECRET, int(time.time()), body)}
    response = hooks.post("/webhooks/modelgates/tok-vj_1", data=body, headers=headers)
    assert response.status_code in (204, 400, 413), response.get_data()[:300]
    assert_answer_is_sound(response)
    if response.status_code == 413:
        assert count_events(db) == before
    if response.status_code == 400:
        # Kept as rejected, for inspection (once: the same body again is a duplicate).
        assert count_events(db) == before + (body not in rejected)
        rejected.add(body)
    job = strict_body(hooks.get("/api/jobs/vj_1", headers=AUTH))
    assert job["cost"] is None or isinstance(job["cost"], float)
    assert_answer_is_sound(hooks.get("/api/jobs", headers=AUTH))


@pytest.mark.parametrize("cost", HOSTILE_NUMBERS, ids=lambda cost: cost[:12])
def test_a_completion_with_an_unusable_cost_completes_the_job_without_a_cost(hooks, db, cost):
    make_job(db)
    body = event_body().replace(b'"cost":0.25', b'"cost":' + cost.encode())
    response = hooks.post(
        "/webhooks/modelgates/tok-vj_1", data=body, headers=signed(body, key="completed")
    )
    if cost == "9" * 5000:  # past Python's integer parsing limit: not JSON it can read
        assert response.status_code == 400
        assert db.job("vj_1")["status"] == "pending"
    else:
        assert response.status_code == 204
        assert db.job("vj_1")["status"] == "completed" and db.job("vj_1")["cost"] is None
    listed = strict_body(hooks.get("/api/jobs", headers=AUTH))
    assert [job["cost"] for job in listed["jobs"]] == [None]


def test_a_callback_with_a_lone_surrogate_is_rejected_not_a_database_error(hooks, db):
    make_job(db)
    body = event_body(status="failed", event_type="video.generation.failed").replace(
        b"provider said no", b"\\ud800"
    )
    body = body.replace(b'"status":"failed"', b'"status":"failed\\ud800"').replace(
        b'"type":"video.generation.failed"', b'"type":"video.generation.failed\\ud800"'
    )
    headers = signed(body, key=None)
    response = hooks.post("/webhooks/modelgates/tok-vj_1", data=body, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_event"
    assert db.job("vj_1")["status"] == "pending"


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.25, 0.25),
        (3, 3.0),
        (float("nan"), None),
        (float("inf"), None),
        (10**400, None),
        (1e300, None),
        (True, None),
        ("1", None),
    ],
)
def test_only_finite_sensible_costs_are_kept(value, expected):
    assert usable_cost(value) == expected


def test_the_strict_provider_refuses_to_write_non_finite_numbers(app):
    with app.app_context(), pytest.raises(ValueError):
        app.json.dumps({"cost": float("inf")})


def test_an_unexpected_error_is_a_bare_json_500_without_details(app):
    @app.get("/explode")
    def explode() -> None:
        raise RuntimeError("secret internals")

    response = app.test_client().get("/explode")
    assert response.status_code == 500
    body = strict_body(response)
    assert body["error"]["code"] == "internal_error" and body["error"]["details"] == {}
    assert b"secret" not in response.get_data()


def test_strict_loader_limits_depth_and_walks_without_recursion():
    assert strict_json.loads(deep(64, "[")) is not None
    with pytest.raises(strict_json.JSONRefused, match="nested too deeply"):
        strict_json.loads(deep(65, "["))
    lenient = strict_json.loads(b'{"a": NaN, "b": 1e999}', strict=False)
    assert lenient["a"] != lenient["a"] and lenient["b"] == float("inf")


ANY_TEXT = st.text(st.characters() | st.sampled_from(["\x00", "\ud800", "\udfff"]), max_size=6)
NESTED = st.recursive(
    st.none() | st.booleans() | st.integers() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(NESTED, st.integers(min_value=0, max_value=70), st.booleans())
def test_lenient_bytes_are_refused_exactly_when_the_full_walk_refuses(value, depth, ascii_only):
    """The shortcut for plain bodies (no \\u escape, few brackets) never lets through
    what walking the parsed value refuses: lone surrogates, NUL, deep nesting."""
    text = "[" * depth + json.dumps(value, ensure_ascii=ascii_only) + "]" * depth
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written raw: not UTF-8 at all
        return

    def outcome(raw: bytes | str) -> str:
        try:
            return repr(strict_json.loads(raw, strict=False))
        except strict_json.JSONRefused as refused:
            return f"refused: {refused.message}"

    assert outcome(body) == outcome(text)  # a str is always walked


# Over a real socket ------------------------------------------------------------

RAW_REQUESTS = [
    b"POST /webhooks/modelgates HTTP/1.1\r\nHost: x\r\nX-OpenRouter-Signature: t=1,v1=\xff\xfe"
    b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    b"POST /webhooks/modelgates HTTP/1.1\r\nHost: x\r\nX-OpenRouter-Signature: t="
    + b"9" * 6000
    + b",v1=00\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    b"GET /api/jobs?status=%ED%A0%80&cursor=%C0%80&limit=%00 HTTP/1.1\r\nHost: x\r\n"
    b"Authorization: Bearer test-api-token\r\nConnection: close\r\n\r\n",
    b"GET /api/jobs/%ED%A0%80/videos/" + b"9" * 5000 + b" HTTP/1.1\r\nHost: x\r\n"
    b"Authorization: Bearer test-api-token\r\nConnection: close\r\n\r\n",
    b"GET /api/jobs/\xff\xfe HTTP/1.1\r\nHost: x\r\n"
    b"Authorization: Bearer test-api-token\r\nConnection: close\r\n\r\n",
]


def raw_exchange(url: str, request: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("request_bytes", RAW_REQUESTS, ids=range(len(RAW_REQUESTS)))
def test_raw_hostile_requests_over_a_socket_get_4xx_in_strict_json(hook_app, db, request_bytes):
    server = LiveServer(hook_app)
    try:
        status, body = raw_exchange(server.url, request_bytes)
    finally:
        server.stop()
    assert 400 <= status < 500
    parsed = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    assert set(parsed["error"]) == {"code", "message", "details"}
    assert db.count_events() == 0


def test_scrub_turns_non_finite_numbers_from_upstream_into_null():
    assert strict_json.scrub([{"x": float("nan"), "y": [float("-inf"), 1.5, "NaN"]}]) == [
        {"x": None, "y": [None, 1.5, "NaN"]}
    ]


def test_a_database_outage_is_503_with_retry_after_not_a_500(app):
    @app.get("/busy")
    def busy() -> None:
        raise StoreUnavailable("SQLite: database is locked")

    response = app.test_client().get("/busy")
    assert response.status_code == 503
    assert strict_body(response)["error"]["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "5"
    assert b"locked" not in response.get_data()


@pytest.fixture
def served_hooks(hook_app) -> Any:
    server = LiveServer(hook_app)
    yield server
    server.stop()


header_bytes = st.binary(max_size=200).map(
    lambda raw: bytes(byte for byte in raw if byte not in b"\r\n\x00")
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(header=header_bytes, body=st.binary(max_size=100))
def test_raw_signature_header_bytes_over_a_socket_are_401_in_strict_json(
    served_hooks, db, header, body
):
    request = (
        b"POST /webhooks/modelgates HTTP/1.1\r\nHost: x\r\nX-OpenRouter-Signature: "
        + header
        + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )
    status, answer = raw_exchange(served_hooks.url, request)
    assert status == 401, answer[:300]
    parsed = json.loads(answer.decode("utf-8"), parse_constant=_refuse_constant)
    assert parsed["error"]["code"] == "invalid_signature"
    assert db.count_events() == 0
