"""Outbound notifications: event body, Standard Webhooks signing (checked by the official
library), the retry schedule, and delivery to real loopback receivers that misbehave."""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhook_service.addresses import static_resolver
from webhook_service.notifications import (
    MAX_ATTEMPTS,
    SCHEDULE_SECONDS,
    SigningSecretError,
    build_event,
    deliver,
    next_delay,
    parse_retry_after,
    sign,
    signing_key,
    webhook_id_for,
)

SECRET = "whsec_" + base64.b64encode(b"notification-test-secret-32bytes").decode()
NOW = 1_760_000_000.0
GENEROUS = 10.0  # seconds: for answers that come at once, even on a loaded machine
TIMEOUT = 1.0  # seconds: what receivers that stall or trickle are given

JOB = {
    "id": "vj_0123456789abcdef01234567",
    "upstream_id": "gen-1",
    "status": "completed",
    "model": "m",
    "prompt": "a cat, ☃",
    "params": {"duration": 4, "seed": 7},
    "error": None,
    "cost": 0.25,
    "outputs": [{"index": 0, "status": "downloaded", "bytes": 10, "sha256": "ab", "error": None}],
    "settled": True,
    "notify_url": "https://hooks.example.com/x",
    "notification": {"status": "pending", "attempts": 0, "last_status": None, "last_error": None},
}


# --- the event and its signature ------------------------------------------------------------


def test_the_event_body_is_the_job_wrapped_with_its_type_and_time():
    webhook_id, body = build_event(JOB, NOW)
    event = json.loads(body)
    assert event == {"type": "job.completed", "timestamp": "2025-10-09T08:53:20.000Z", "data": JOB}
    assert webhook_id == webhook_id_for(JOB["id"]) == f"msg_{JOB['id']}"


def test_the_webhook_id_is_the_same_for_the_same_job_and_differs_between_jobs():
    first, _ = build_event(JOB, NOW)
    again, _ = build_event({**JOB, "status": "failed"}, NOW + 3600)
    other, _ = build_event({**JOB, "id": "vj_other"}, NOW)
    assert first == again != other


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_never_sent(bad):
    with pytest.raises(ValueError):
        build_event({**JOB, "cost": bad}, NOW)


@pytest.mark.parametrize("job", [{}, {"id": "x"}, {"status": "failed"}, {"id": 3, "status": "x"}])
def test_a_job_without_id_or_status_is_refused(job):
    with pytest.raises(ValueError, match="id"):
        build_event(job, NOW)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} in the body")


@given(st.dictionaries(st.text(), _JSON, max_size=5), st.floats(0, 4e9))
def test_any_job_json_gives_a_strict_json_body_that_the_library_verifies(extra, now):
    job = {**extra, "id": "vj_1", "status": "expired"}
    webhook_id, body = build_event(job, now)
    event = json.loads(body, parse_constant=_no_constants)
    assert event["data"] == job
    assert event["type"] == "job.expired"
    timestamp = int(datetime.now(UTC).timestamp())
    verified = Webhook(SECRET).verify(body, sign(SECRET, webhook_id, timestamp, body))
    assert verified == event


def test_the_signature_is_what_the_standard_webhooks_library_computes():
    webhook_id, body = build_event(JOB, NOW)
    headers = sign(SECRET, webhook_id, int(NOW), body)
    expected = Webhook(SECRET).sign(webhook_id, datetime.fromtimestamp(NOW, UTC), body.decode())
    assert headers == {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(NOW)),
        "webhook-signature": expected,
    }


def test_the_library_refuses_a_tampered_body_a_wrong_secret_and_a_stale_timestamp():
    webhook_id, body = build_event(JOB, NOW)
    now = int(datetime.now(UTC).timestamp())
    headers = sign(SECRET, webhook_id, now, body)
    Webhook(SECRET).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"completed", b"cancelled"), headers)
    other = "whsec_" + base64.b64encode(b"another-secret-of-thirty-two-b!!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(body, sign(SECRET, webhook_id, now - 600, body))


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (None, "not set"),
        ("", "not set"),
        ("   ", "not set"),
        ("whsec_", "empty"),
        ("c2VjcmV0", "whsec_"),
        ("whsec_not base64!", "base64"),
        ("whsec_a", "base64"),
    ],
)
def test_an_empty_or_malformed_secret_is_refused(secret, message):
    with pytest.raises(SigningSecretError, match=message):
        signing_key(secret)
    if secret is not None:
        with pytest.raises(SigningSecretError):
            sign(secret, "msg_1", int(NOW), b"{}")


def test_a_secret_without_base64_padding_is_read_as_the_library_reads_it():
    unpadded = "whsec_" + base64.b64encode(b"0123456789abcdefg").decode().rstrip("=")
    assert signing_key(unpadded) == b"0123456789abcdefg"
    body = b'{"a":1}'
    now = int(datetime.now(UTC).timestamp())
    Webhook(unpadded).verify(body, sign(unpadded, "msg_1", now, body))


@pytest.mark.parametrize("msg_id", ["", "msg 1", "msg\n1"])
def test_a_webhook_id_with_spaces_or_empty_is_refused(msg_id):
    with pytest.raises(ValueError, match="webhook id"):
        sign(SECRET, msg_id, int(NOW), b"{}")


# --- the retry schedule ---------------------------------------------------------------------


def test_the_schedule_is_about_5s_5min_30min_2h_5h_10h_then_daily():
    delays = [next_delay(attempt, None, lambda: 0.5) for attempt in range(1, MAX_ATTEMPTS)]
    assert delays[:7] == [5, 300, 1800, 7200, 18000, 36000, 86400]
    assert all(delay == 86400 for delay in delays[6:])
    assert next_delay(MAX_ATTEMPTS, None, lambda: 0.5) is None
    assert next_delay(MAX_ATTEMPTS + 5, None, lambda: 0.5) is None


def test_at_least_eight_attempts_spread_over_at_least_a_day():
    assert MAX_ATTEMPTS >= 8
    assert sum(SCHEDULE_SECONDS[: MAX_ATTEMPTS - 1]) >= 86400
    shortest = sum(next_delay(n, None, lambda: 0.0) or 0 for n in range(1, MAX_ATTEMPTS))
    assert shortest >= 86400


@given(st.integers(1, MAX_ATTEMPTS - 1), st.floats(0, 1, exclude_max=True))
def test_jitter_stays_within_ten_percent(attempt, r):
    delay = next_delay(attempt, None, lambda: r)
    base = SCHEDULE_SECONDS[attempt - 1]
    assert delay is not None and 0.9 * base <= delay <= 1.1 * base


@given(
    st.integers(1, MAX_ATTEMPTS - 1),
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    st.floats(0, 1, exclude_max=True),
)
def test_retry_after_is_honoured_but_bounded(attempt, retry_after, r):
    delay = next_delay(attempt, retry_after, lambda: r)
    plain = next_delay(attempt, None, lambda: r)
    assert delay is not None and plain is not None
    assert plain <= delay <= max(plain, 86400)
    if retry_after is not None and math.isfinite(retry_after) and retry_after <= 86400:
        assert delay >= retry_after


def test_a_zero_attempt_is_a_programming_error():
    with pytest.raises(ValueError):
        next_delay(0, None, lambda: 0.5)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("99999999999999999999", 1e9),
        ("Thu, 09 Oct 2025 08:55:20 GMT", 120.0),
        ("Thu, 09 Oct 2025 08:00:00 GMT", 0.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_a_date(header, expected):
    assert parse_retry_after(header, NOW) == expected


# --- delivery to real receivers on loopback -------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """A loopback endpoint that records each request and then behaves as told.

    ``behaviours`` is consumed one per request, the last one repeating: ``(status, headers,
    body)`` answers; ``"hang"`` never answers; ``"close"`` drops the connection;
    ``"trickle"`` sends a valid 200 one byte every 20 ms, taking about 10 s in all.
    """

    daemon_threads = True

    def __init__(self, behaviours: list[Any]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviours = behaviours
        self.requests: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_behaviour(self, request: dict[str, Any]) -> Any:
        with self.lock:
            self.requests.append(request)
            return self.behaviours[min(len(self.requests), len(self.behaviours)) - 1]


class Receiver6(Receiver):
    """The same endpoint on the IPv6 loopback address."""

    address_family = socket.AF_INET6

    def __init__(self, behaviours: list[Any]) -> None:
        ThreadingHTTPServer.__init__(self, ("::1", 0), _Handler)
        self.behaviours = behaviours
        self.requests = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://[::1]:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        behaviour = self.server.next_behaviour(
            {"path": self.path, "headers": dict(self.headers.items()), "body": body}
        )
        if behaviour == "hang":
            self.server.stopping.wait(30)
            self.close_connection = True
        elif behaviour == "close":
            self.close_connection = True
        elif behaviour == "trickle":
            self.close_connection = True
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(500):
                    if self.server.stopping.wait(0.02):
                        return
                    self.wfile.write(b"a")
                    self.wfile.flush()
                self.wfile.write(b"\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                return  # the client gave up, as it should
        else:
            status, headers, answer = behaviour
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)


def start(receiver: Receiver) -> Receiver:
    threading.Thread(target=receiver.serve_forever, kwargs={"poll_interval": 0.05}).start()
    return receiver


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.stopping.set()
        receiver.shutdown()
        receiver.server_close()


@pytest.fixture
def receiver_for(receivers):
    def make(*behaviours: Any) -> Receiver:
        receiver = start(Receiver(list(behaviours)))
        receivers.append(receiver)
        return receiver

    return make


def send(url: str, *, timeout: float = GENEROUS, **kwargs: Any):
    """Sign the sample event now and deliver it once to ``url`` (loopback allowed)."""
    webhook_id, body = build_event(JOB, NOW)
    headers = sign(SECRET, webhook_id, int(datetime.now(UTC).timestamp()), body)
    options = {"allow_private": True, "allow_http": True, "timeout": timeout, **kwargs}
    return deliver(url + "/hooks/video", headers, body, **options)


def assert_verified(request: dict[str, Any]) -> dict[str, Any]:
    """The official library accepts what the receiver got; return the event."""
    event = Webhook(SECRET).verify(request["body"], request["headers"])
    assert request["headers"]["Content-Type"] == "application/json"
    return event


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_a_2xx_answer_delivers_a_notification_the_library_verifies(receiver_for, status):
    receiver = receiver_for((status, {}, b"" if status == 204 else b"ok"))
    attempt = send(receiver.url)
    assert attempt.delivered and attempt.status_code == status
    assert (attempt.error, attempt.retry_after, attempt.gone) == (None, None, False)
    [request] = receiver.requests
    assert request["path"] == "/hooks/video"
    assert assert_verified(request) == {**json.loads(build_event(JOB, NOW)[1])}
    assert request["headers"]["webhook-id"] == webhook_id_for(JOB["id"])


def test_a_500_is_a_failed_attempt_and_the_retry_with_the_same_id_is_delivered(receiver_for):
    receiver = receiver_for((500, {}, b"Internal   oops\n"), (200, {}, b""))
    first = send(receiver.url)
    second = send(receiver.url)
    assert not first.delivered and first.status_code == 500
    assert first.error == "answered 500: Internal oops" and not first.gone
    assert second.delivered
    ids = {assert_verified(r) and r["headers"]["webhook-id"] for r in receiver.requests}
    assert ids == {webhook_id_for(JOB["id"])}
    assert receiver.requests[0]["body"] == receiver.requests[1]["body"]


def test_a_410_means_gone(receiver_for):
    attempt = send(receiver_for((410, {}, b"unsubscribed")).url)
    assert attempt.gone and not attempt.delivered and attempt.status_code == 410


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_reported(receiver_for, status):
    attempt = send(receiver_for((status, {"Retry-After": "120"}, b"")).url)
    assert (attempt.status_code, attempt.retry_after, attempt.delivered) == (status, 120.0, False)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed(receiver_for, status):
    target = receiver_for((200, {}, b""))
    receiver = receiver_for((status, {"Location": target.url + "/elsewhere"}, b""))
    attempt = send(receiver.url)
    assert not attempt.delivered and attempt.status_code == status
    assert "redirects are not followed" in (attempt.error or "")
    assert len(receiver.requests) == 1 and target.requests == []


def test_a_receiver_that_never_answers_times_out(receiver_for):
    receiver = receiver_for("hang")
    attempt = send(receiver.url, timeout=TIMEOUT)
    assert attempt.status_code is None and not attempt.delivered
    assert attempt.error == f"timed out after {TIMEOUT:g} s"
    assert len(receiver.requests) == 1


def test_a_receiver_that_trickles_its_answer_is_cut_off_by_one_deadline(receiver_for):
    # Each byte comes well within TIMEOUT, so only a deadline over the whole attempt stops it.
    receiver = receiver_for("trickle")
    attempt = send(receiver.url, timeout=TIMEOUT)
    assert attempt.status_code is None and not attempt.delivered
    assert attempt.error == f"timed out after {TIMEOUT:g} s"


def test_a_receiver_that_closes_the_connection_is_a_failed_attempt(receiver_for):
    attempt = send(receiver_for("close").url)
    assert attempt.status_code is None and not attempt.delivered
    assert attempt.error and attempt.error.startswith("connection closed")


def test_a_closed_port_is_a_failed_connection(receiver_for):
    receiver = receiver_for((200, {}, b""))
    url = receiver.url
    receiver.stopping.set()
    receiver.shutdown()
    receiver.server_close()
    attempt = send(url)
    assert attempt.status_code is None
    assert attempt.error and attempt.error.startswith("connection failed")


def test_only_a_little_of_a_huge_answer_is_read(receiver_for):
    attempt = send(receiver_for((500, {}, b"x" * 5_000_000)).url)
    assert attempt.status_code == 500
    assert attempt.error == "answered 500: " + "x" * 200


def test_a_private_address_is_refused_at_delivery_and_nothing_is_sent(receiver_for):
    receiver = receiver_for((200, {}, b""))
    attempt = send(receiver.url, allow_private=False)
    assert attempt.status_code is None and not attempt.delivered and not attempt.gone
    assert attempt.error and attempt.error.startswith("refused:") and "loopback" in attempt.error
    assert receiver.requests == []


def test_a_name_that_now_resolves_to_loopback_is_refused_at_delivery(receiver_for):
    receiver = receiver_for((200, {}, b""))
    port = receiver.server_address[1]
    rebinding = static_resolver({"hooks.example.com": ["127.0.0.1"]})
    webhook_id, body = build_event(JOB, NOW)
    attempt = deliver(
        f"http://hooks.example.com:{port}/",
        sign(SECRET, webhook_id, int(NOW), body),
        body,
        timeout=GENEROUS,
        allow_private=False,
        allow_http=True,
        resolve=rebinding,
    )
    assert attempt.error == (
        "refused: notify_url host hooks.example.com resolves to 127.0.0.1, which is a loopback"
        " address."
    )
    assert receiver.requests == []


def test_http_is_refused_at_delivery_unless_allowed(receiver_for):
    receiver = receiver_for((200, {}, b""))
    attempt = send(receiver.url, allow_http=False)
    assert attempt.error and "https://" in attempt.error
    assert receiver.requests == []


@pytest.fixture
def numeric_only_dns(monkeypatch):
    """Make any real name lookup fail the test: delivery must use the vetted address."""
    real = socket.getaddrinfo

    def numeric_only(host, *args, **kwargs):
        ipaddress.ip_address(host)  # a name here means something resolved it a second time
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)


def test_delivery_connects_to_the_vetted_address_and_names_the_host(receiver_for, numeric_only_dns):
    receiver = receiver_for((204, {}, b""))
    port = receiver.server_address[1]
    calls = []

    def resolve(host, *args, **kwargs):
        calls.append(host)
        return static_resolver({"hooks.test": ["127.0.0.1"]})(host, *args)

    webhook_id, body = build_event(JOB, NOW)
    headers = sign(SECRET, webhook_id, int(datetime.now(UTC).timestamp()), body)
    attempt = deliver(
        f"http://hooks.test:{port}/h",
        headers,
        body,
        timeout=GENEROUS,
        allow_private=True,
        allow_http=True,
        resolve=resolve,
    )
    assert attempt.delivered, attempt.error
    assert calls == ["hooks.test"]
    [request] = receiver.requests
    assert request["headers"]["Host"] == f"hooks.test:{port}"
    assert_verified(request)


def test_when_the_first_vetted_address_refuses_the_next_one_is_tried(receiver_for):
    receiver = receiver_for((204, {}, b""))
    port = receiver.server_address[1]
    # The receiver listens on 127.0.0.1 only: 127.0.0.2 refuses the connection.
    resolve = static_resolver({"hooks.test": ["127.0.0.2", "127.0.0.1"]})
    webhook_id, body = build_event(JOB, NOW)
    attempt = deliver(
        f"http://hooks.test:{port}/",
        sign(SECRET, webhook_id, int(datetime.now(UTC).timestamp()), body),
        body,
        timeout=GENEROUS,
        allow_private=True,
        allow_http=True,
        resolve=resolve,
    )
    assert attempt.delivered, attempt.error
    assert len(receiver.requests) == 1


def test_delivery_over_ipv6_to_a_literal_and_to_a_name(receivers, numeric_only_dns):
    try:
        receiver = start(Receiver6([(204, {}, b"")]))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    receivers.append(receiver)
    assert send(receiver.url).delivered
    port = receiver.server_address[1]
    named = send(f"http://hooks6.test:{port}", resolve=static_resolver({"hooks6.test": ["::1"]}))
    assert named.delivered, named.error
    assert [r["headers"]["Host"] for r in receiver.requests] == [
        f"[::1]:{port}",
        f"hooks6.test:{port}",
    ]
    refused = send(receiver.url, allow_private=False)
    assert refused.error and "loopback" in refused.error and len(receiver.requests) == 2


def test_a_name_lookup_that_hangs_is_bounded_by_the_same_deadline(receiver_for):
    receiver = receiver_for((204, {}, b""))
    release = threading.Event()

    def stuck(*args, **kwargs):
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    try:
        attempt = send(
            f"http://hooks.test:{receiver.server_address[1]}", resolve=stuck, timeout=0.2
        )
    finally:
        release.set()
    assert attempt.error == "timed out after 0.2 s resolving the host"
    assert receiver.requests == []


# --- TLS: the pinned connection still verifies the certificate against the host name --------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """A test CA and a certificate for hooks.test signed by it."""
    crypto = pytest.importorskip("cryptography")
    del crypto
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notification test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.test")]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    files["ca"].write_bytes(ca.public_bytes(pem))
    files["cert"].write_bytes(leaf.public_bytes(pem))
    files["key"].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@pytest.fixture
def tls_receiver(tls_files, receivers) -> Receiver:
    receiver = Receiver([(200, {}, b"")])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    receiver.socket = context.wrap_socket(receiver.socket, server_side=True)
    receivers.append(receiver)
    return start(receiver)


def send_tls(host: str, receiver: Receiver, tls_files: dict[str, Path]):
    port = receiver.server_address[1]
    webhook_id, body = build_event(JOB, NOW)
    headers = sign(SECRET, webhook_id, int(datetime.now(UTC).timestamp()), body)
    return deliver(
        f"https://{host}:{port}/tls",
        headers,
        body,
        timeout=GENEROUS,
        allow_private=True,
        allow_http=False,
        resolve=static_resolver({host: ["127.0.0.1"]}),
        ssl_context=ssl.create_default_context(cafile=str(tls_files["ca"])),
    )


def test_tls_to_a_pinned_address_verifies_the_certificate_for_the_host_name(
    tls_receiver, tls_files, numeric_only_dns
):
    attempt = send_tls("hooks.test", tls_receiver, tls_files)
    assert attempt.delivered, attempt.error
    [request] = tls_receiver.requests
    assert request["headers"]["Host"] == f"hooks.test:{tls_receiver.server_address[1]}"
    assert_verified(request)


def test_tls_refuses_a_certificate_for_another_name_at_the_same_address(
    tls_receiver, tls_files, numeric_only_dns
):
    attempt = send_tls("other.test", tls_receiver, tls_files)
    assert not attempt.delivered and attempt.status_code is None
    assert attempt.error and "certificate" in attempt.error.lower()
    assert tls_receiver.requests == []
