import json

import pytest

from webhook_service.signatures import (
    MAX_HEADER_LENGTH,
    MAX_TIMESTAMP_DIGITS,
    SignatureError,
    sign,
    verify,
)

VECTOR_BODY = b'{"type":"video.generation.completed","data":{"id":"job_1","status":"completed"}}'
VECTOR_HEADER = "t=1700000000,v1=fba3d730d3adecd9b7889fc87e14dad17a883f58ceea26906b3d9063bd2c4742"
NOW = 1_700_000_000


def test_fixed_vector_from_the_protocol_signs_and_verifies():
    assert sign("dev_secret", NOW, VECTOR_BODY) == VECTOR_HEADER
    headers = {"X-OpenRouter-Signature": VECTOR_HEADER}
    assert verify(VECTOR_BODY, headers, ["dev_secret"], now=NOW) == NOW


def test_modelgates_spelling_of_the_header_is_accepted():
    assert verify(VECTOR_BODY, {"X-ModelGates-Signature": VECTOR_HEADER}, ["dev_secret"], NOW)


def test_any_configured_secret_may_match_during_rotation():
    assert verify(
        VECTOR_BODY, {"X-OpenRouter-Signature": VECTOR_HEADER}, ["new", "dev_secret"], NOW
    )


@pytest.mark.parametrize(
    "header, reason",
    [
        (None, "missing"),
        ("v1=" + "0" * 64, "no t="),
        ("t=1700000000", "no v1="),
        ("t=soon,v1=" + "0" * 64, "not a number"),
        ("t=-5,v1=" + "0" * 64, "not a number"),
        ("garbage", "no t="),
    ],
)
def test_malformed_headers_are_refused_with_a_reason(header, reason):
    headers = {} if header is None else {"X-OpenRouter-Signature": header}
    with pytest.raises(SignatureError, match=reason):
        verify(VECTOR_BODY, headers, ["dev_secret"], NOW)


@pytest.mark.parametrize("skew", [-301, 301, 10_000])
def test_stale_and_future_timestamps_are_refused(skew):
    header = sign("dev_secret", NOW + skew, VECTOR_BODY)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(VECTOR_BODY, {"X-OpenRouter-Signature": header}, ["dev_secret"], NOW)


def test_timestamps_at_the_edge_of_the_window_are_accepted():
    for skew in (-300, 300):
        header = sign("dev_secret", NOW + skew, VECTOR_BODY)
        assert verify(VECTOR_BODY, {"X-OpenRouter-Signature": header}, ["dev_secret"], NOW)


def test_right_signature_with_the_wrong_secret_is_refused():
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(VECTOR_BODY, {"X-OpenRouter-Signature": VECTOR_HEADER}, ["other"], NOW)


def test_signature_over_a_reserialized_body_is_refused():
    reserialized = json.dumps(json.loads(VECTOR_BODY)).encode()  # spaces after separators
    assert reserialized != VECTOR_BODY
    with pytest.raises(SignatureError):
        verify(reserialized, {"X-OpenRouter-Signature": VECTOR_HEADER}, ["dev_secret"], NOW)


def test_body_changed_after_signing_is_refused():
    tampered = VECTOR_BODY.replace(b"completed", b"failed", 1)
    with pytest.raises(SignatureError):
        verify(tampered, {"X-OpenRouter-Signature": VECTOR_HEADER}, ["dev_secret"], NOW)


def test_empty_secrets_never_verify():
    with pytest.raises(SignatureError, match="no signing secret"):
        verify(VECTOR_BODY, {"X-OpenRouter-Signature": VECTOR_HEADER}, ["", ""], NOW)


@pytest.mark.parametrize(
    "header, reason",
    [
        ("t=1700000000,v1=" + "é" * 64, "not a hex"),
        ("t=1700000000,v1=\x00\xff", "not a hex"),
        ("t=" + "9" * 4000 + ",v1=" + "0" * 64, "not a number"),
        ("t=" + "1" * 13 + ",v1=" + "0" * 64, "not a number"),
        ("t=١٧٠٠٠٠٠٠٠٠,v1=" + "0" * 64, "not a number"),
        ("t=1700000000,t=1700000000,v1=" + "0" * 64, "more than one t="),
        ("t=1700000000," + ",".join(["v1=" + "0" * 64] * 100), "too long"),
        ("t=1700000000,v1=" + "0" * 100_000, "too long"),
    ],
    ids=["hex-e", "nul", "4000-digits", "13-digits", "arabic", "two-t", "100-v1", "long-v1"],
)
def test_hostile_headers_are_signature_errors_never_other_exceptions(header, reason):
    with pytest.raises(SignatureError, match=reason):
        verify(VECTOR_BODY, {"X-OpenRouter-Signature": header}, ["dev_secret"], NOW)


def test_a_valid_signature_among_junk_parts_still_verifies():
    header = "t=1700000000,v1=é,v0=abc,junk," + VECTOR_HEADER.split(",")[1]
    assert verify(VECTOR_BODY, {"X-OpenRouter-Signature": header}, ["dev_secret"], NOW) == NOW


def test_a_second_timestamp_cannot_smuggle_a_replay():
    old = sign("dev_secret", NOW - 3600, VECTOR_BODY)
    header = f"{old},t={NOW}"
    with pytest.raises(SignatureError, match="more than one t="):
        verify(VECTOR_BODY, {"X-OpenRouter-Signature": header}, ["dev_secret"], NOW)


def test_the_matching_secret_or_signature_may_come_first():
    assert verify(
        VECTOR_BODY, {"X-OpenRouter-Signature": VECTOR_HEADER}, ["dev_secret", "new"], NOW
    )
    other = sign("new", NOW, VECTOR_BODY).split(",")[1]
    header = f"{VECTOR_HEADER},{other}"  # upstream signs with the current and the next secret
    assert verify(VECTOR_BODY, {"X-OpenRouter-Signature": header}, ["dev_secret"], NOW) == NOW


def test_a_header_of_exactly_the_longest_length_still_verifies():
    padded = VECTOR_HEADER + "," + "x" * (MAX_HEADER_LENGTH - len(VECTOR_HEADER) - 1)
    assert len(padded) == MAX_HEADER_LENGTH
    assert verify(VECTOR_BODY, {"X-OpenRouter-Signature": padded}, ["dev_secret"], NOW) == NOW
    with pytest.raises(SignatureError, match="too long"):
        verify(VECTOR_BODY, {"X-OpenRouter-Signature": padded + "x"}, ["dev_secret"], NOW)


def test_a_timestamp_of_the_most_digits_allowed_is_read():
    far = 10**MAX_TIMESTAMP_DIGITS - 1  # as many digits as a timestamp may have
    header = sign("dev_secret", far, VECTOR_BODY)
    assert verify(VECTOR_BODY, {"X-OpenRouter-Signature": header}, ["dev_secret"], far) == far
