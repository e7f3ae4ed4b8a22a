"""The Procfile's ``web:`` line as deployed: slow clients, configuration errors, any directory.

Every test here runs the real line with ``bash -c`` from a temporary working
directory outside the clone, as a platform would run the installed package.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook_service.demo import free_port, read_procfile
from webhook_service.server import HOLD_LIMIT, RequestBuffer

REPO = Path(__file__).resolve().parent.parent
WEB = read_procfile(REPO / "Procfile")["web"]
STALLED_BODY = (
    b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{"
)
STALLED_WEBHOOK = b"POST /webhooks/modelgates HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{"
PARTIAL_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
API_HEAD = b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
WEBHOOK_HEAD = b"POST /webhooks/modelgates HTTP/1.1\r\nHost: x\r\n"


def web_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    """A clean environment for the web line: instance files in ``home``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key in ("HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PORT=str(port),
        DATABASE_PATH=str(home / "db.sqlite3"),
        MEDIA_DIR=str(home / "videos"),
        TRUSTED_PROXY_COUNT="0",
        WEB_CONCURRENCY="2",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


class Web:
    """The Procfile's web line, running."""

    def __init__(self, home: Path, **extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(home / "web.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["bash", "-c", WEB.replace("0.0.0.0", "127.0.0.1")],
            cwd=home,
            env=web_env(home, self.port, **extra),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (home / "web.log").read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("web did not start")

    def connect(self, data: bytes) -> socket.socket:
        """Open a connection and send ``data``, nothing more."""
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(data)
        return sock

    def stop(self) -> None:
        """SIGTERM the whole process group and wait."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
def start_web(tmp_path: Path) -> Iterator[object]:
    started: list[Web] = []

    def start(**extra: str) -> Web:
        web = Web(tmp_path, **extra)
        started.append(web)
        return web

    yield start
    for web in started:
        web.stop()


def read_until_closed(sock: socket.socket, seconds: float = 30) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(seconds)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def still_waiting(sock: socket.socket) -> bool:
    """True if the server has neither answered nor closed this connection."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def read_response(
    source: socket.socket | BinaryIO, seconds: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """One answer from the server: status, headers (lower-case names), body.

    From a socket, nothing after the answer may have arrived yet (it would be lost);
    pipelined answers are read from ``sock.makefile("rb")``.
    """
    if isinstance(source, socket.socket):
        source.settimeout(seconds)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = source.recv(65536)
            assert chunk, f"closed without an answer after {data!r}"
            data += chunk
    else:
        data = b""
        while not data.endswith(b"\r\n\r\n"):
            line = source.readline()
            assert line, f"closed without an answer after {data!r}"
            data += line
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    while len(body) < int(headers.get("content-length", "0")):
        more = (source.recv if isinstance(source, socket.socket) else source.read)(
            int(headers["content-length"]) - len(body)
        )
        if not more:
            break
        body += more
    return int(status_line.split()[1]), headers, body


def assert_error_body(headers: dict[str, str], body: bytes) -> dict[str, object]:
    """The contract's JSON error body, nothing else."""
    assert headers["content-type"] == "application/json", (headers, body)
    document = json.loads(body)
    assert set(document) == {"error"}
    error = document["error"]
    assert set(error) == {"code", "message", "details"}
    assert re.fullmatch(r"[a-z][a-z_]*", error["code"]) and error["message"]
    assert error["details"] == {}
    return error  # type: ignore[no-any-return]


def chunked(*chunks: bytes) -> bytes:
    """A chunked body made of ``chunks``, terminated."""
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


class Upload(threading.Thread):
    """Sends ``data`` on ``sock`` in the background, counting what the kernel took."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.data = memoryview(data)
        self.sent = 0
        self.start()

    def run(self) -> None:
        try:
            while self.sent < len(self.data):
                self.sent += self.sock.send(self.data[self.sent : self.sent + 65536])
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def poll(condition, seconds: float = 60) -> None:
    """Wait until ``condition()`` holds, or fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def shared_web(tmp_path_factory) -> Iterator[Web]:
    """One web line for the tests that only send requests and read answers."""
    home = tmp_path_factory.mktemp("web")
    web = Web(home, SERVICE_API_TOKENS="tok", MODELGATES_WEBHOOK_SECRETS="secret")
    web.home = home  # type: ignore[attr-defined]
    yield web
    web.stop()


def stored_rows(web: Web) -> int:
    """Jobs and callback events in the web line's database."""
    with sqlite3.connect(web.home / "db.sqlite3") as db:  # type: ignore[attr-defined]
        return sum(
            db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("jobs", "events")
        )


@pytest.mark.timeout(180)
def test_healthz_keeps_answering_while_a_hundred_clients_stall(start_web):
    web = start_web()
    stalled = [
        web.connect(payload)
        for payload in [STALLED_BODY] * 60 + [STALLED_WEBHOOK] * 20 + [PARTIAL_HEADERS] * 20
    ]
    try:
        with httpx.Client(base_url=web.url, timeout=10) as client:
            for _ in range(20):
                # A fresh connection each time, so each worker process is tried.
                answer = client.get("/healthz", headers={"Connection": "close"})
                assert answer.status_code == 200 and answer.json() == {"status": "ok"}
        assert all(still_waiting(sock) for sock in stalled)
        # Stalled clients do not hold up a stop either (platforms kill after ~30 s).
        os.killpg(web.process.pid, signal.SIGTERM)
        assert web.process.wait(20) == 0
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("payload", [STALLED_BODY, STALLED_WEBHOOK, PARTIAL_HEADERS])
def test_a_request_that_stops_arriving_gets_408_with_the_error_body(start_web, payload):
    web = start_web(REQUEST_READ_TIMEOUT_SECONDS="1")
    answer = read_until_closed(web.connect(payload))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["code"] == "request_timeout"


@pytest.mark.timeout(120)
def test_a_large_body_that_stalls_midway_gets_408_and_frees_its_thread(start_web):
    web = start_web(REQUEST_READ_TIMEOUT_SECONDS="1", SERVICE_API_TOKENS="tok")
    head = (
        b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
        b"Content-Type: application/json\r\nContent-Length: 4000000\r\n\r\n"
    )
    stalled = [web.connect(head + b"[" * 2_000_000) for _ in range(10)]
    answers = [read_until_closed(sock) for sock in stalled]
    for answer in answers:
        status, _, rest = answer.partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 408 ")
        assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    assert httpx.get(f"{web.url}/healthz", timeout=10).status_code == 200


@pytest.mark.timeout(60)
def test_pipelined_and_chunked_requests_are_still_served(start_web):
    web = start_web(SERVICE_API_TOKENS="tok")
    pipelined = read_until_closed(
        web.connect(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    )
    assert pipelined.count(b"HTTP/1.1 200 OK") == 2
    chunked = read_until_closed(
        web.connect(
            b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n"
        )
    )
    # The body arrived whole: a field error, not a timeout or a parse error.
    assert chunked.startswith(b"HTTP/1.1 422 ")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "variable, value",
    [
        ("WORKER_LEASE_SECONDS", "0"),
        ("PUBLIC_BASE_URL", "https://videos.example.com/app"),
        ("MODELGATES_BASE_URL", "https://key@modelgates.ai/api/v1"),
    ],
)
def test_a_configuration_error_stops_web_with_one_line(tmp_path, variable, value):
    env = web_env(tmp_path, free_port(), **{variable: value})
    result = subprocess.run(
        ["bash", "-c", WEB], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50
    )
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "configuration error" in line]
    assert result.returncode != 0
    assert len(errors) == 1 and variable in errors[0], output
    assert "Traceback" not in output and "Booting worker" not in output, output


@pytest.mark.timeout(60)
def test_web_reads_dotenv_from_its_working_directory(tmp_path):
    (tmp_path / ".env").write_text("WORKER_LEASE_SECONDS=1\n")
    env = web_env(tmp_path, free_port())
    result = subprocess.run(
        ["bash", "-c", WEB], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50
    )
    assert result.returncode != 0
    assert "WORKER_LEASE_SECONDS" in result.stderr


REQUESTS = st.one_of(
    st.binary(max_size=300).map(
        lambda body: b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    ),
    st.lists(st.binary(min_size=1, max_size=40), max_size=5).map(
        lambda chunks: (
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
            + b"0\r\nTrailer: t\r\n\r\n"
        )
    ),
    st.just(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"),
)


@given(REQUESTS, st.data())
def test_a_request_is_ready_exactly_when_its_last_byte_arrives(request_bytes, data):
    cuts = sorted(
        data.draw(st.lists(st.integers(0, len(request_bytes) - 1), max_size=6, unique=True), "cuts")
    )
    buffer = RequestBuffer()
    previous = 0
    for cut in [*cuts, len(request_bytes)]:
        buffer.feed(request_bytes[previous:cut])
        previous = cut
        assert buffer.ready() == (cut == len(request_bytes))


def test_a_large_body_is_handed_over_once_the_hold_limit_is_reached():
    buffer = RequestBuffer(limit=1000)
    buffer.feed(b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"a" * 900)
    assert not buffer.ready()
    buffer.feed(b"a" * 100)
    assert buffer.ready()


@pytest.mark.parametrize(
    "start",
    [
        b"\x16\x03\x01\x02\x00",  # a TLS handshake on the plain port
        b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_what_the_parser_must_refuse_is_handed_over_at_once(start):
    buffer = RequestBuffer(start)
    assert buffer.ready()


def test_expect_continue_is_noticed():
    buffer = RequestBuffer(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n")
    assert not buffer.ready() and buffer.wants_continue


LARGE_STALLED_HEAD = API_HEAD + b"Content-Type: application/json\r\nContent-Length: 3000000\r\n\r\n"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("uploads", [8, 30])
def test_healthz_keeps_answering_while_large_authenticated_uploads_stall(start_web, uploads):
    # Each upload sends half of a 3 MB body, more than a worker gathers before a thread
    # reads the rest, then stops; its read deadline is far away.
    web = start_web(SERVICE_API_TOKENS="tok", REQUEST_READ_TIMEOUT_SECONDS="300")
    stalled = [Upload(web.connect(LARGE_STALLED_HEAD), b"[" * 1_500_000) for _ in range(uploads)]
    try:
        poll(lambda: all(upload.sent >= HOLD_LIMIT for upload in stalled))
        with httpx.Client(base_url=web.url, timeout=20) as client:
            for _ in range(20):
                answer = client.get("/healthz", headers={"Connection": "close"})
                assert answer.status_code == 200 and answer.json() == {"status": "ok"}
                # Small requests on /api/* find a thread too.
                assert client.get("/api/jobs", headers={"Connection": "close"}).status_code == 401
        assert all(still_waiting(upload.sock) for upload in stalled)
    finally:
        for upload in stalled:
            upload.close()


@pytest.mark.timeout(180)
def test_large_uploads_beyond_the_threads_that_may_read_them_all_get_their_answer(start_web):
    # Twelve complete 2 MB bodies at once: more than the threads that may read large
    # bodies, so some wait their turn; each still gets its own answer, not a timeout.
    web = start_web(SERVICE_API_TOKENS="tok")
    body = b"[" * 2_000_000
    head = API_HEAD + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    uploads = [Upload(web.connect(head), body) for _ in range(12)]
    try:
        for upload in uploads:
            status, headers, answer = read_response(upload.sock, seconds=120)
            assert status == 400, answer
            assert assert_error_body(headers, answer)["code"] == "bad_request"
    finally:
        for upload in uploads:
            upload.close()


@pytest.mark.timeout(180)
def test_pipelined_large_uploads_on_one_connection_are_all_answered(shared_web):
    body = b"[" * (HOLD_LIMIT + 300_000)
    one = API_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
    upload = Upload(shared_web.connect(b""), one * 7 + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        stream = upload.sock.makefile("rb")
        for _ in range(7):
            status, headers, answer = read_response(stream)
            assert status == 400 and headers["connection"] == "keep-alive", answer
        assert read_response(stream)[0] == 200
    finally:
        upload.close()


MALFORMED_CHUNKS = [
    b"ZZZ\r\nabc\r\n0\r\n\r\n",  # not a chunk size
    b"3\r\nabcX\r\n0\r\n\r\n",  # a chunk without its CRLF
    b"3\r\nabc\r\n0\r\nBad Trailer\r\n\r\n",  # a trailer that is not a header
    # the same, after more than a worker gathers: a thread reads it
    b"%x\r\n%s\r\nZZZ\r\n\r\n" % (HOLD_LIMIT, b"a" * HOLD_LIMIT),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("head", [API_HEAD, WEBHOOK_HEAD], ids=["api", "webhook"])
@pytest.mark.parametrize("body", MALFORMED_CHUNKS, ids=["size", "terminator", "trailer", "large"])
def test_a_malformed_chunked_body_is_400_with_the_error_body(shared_web, head, body):
    sock = shared_web.connect(head + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    status, headers, answer = read_response(sock)
    # The receiver's size check comes first.
    assert status == (413 if head == WEBHOOK_HEAD and len(body) > 256 * 1024 else 400), answer
    assert headers["connection"] == "close"
    assert_error_body(headers, answer)
    assert read_until_closed(sock) == b""
    assert stored_rows(shared_web) == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "head, status", [(API_HEAD, 400), (WEBHOOK_HEAD, 413)], ids=["api", "webhook"]
)
def test_a_chunked_body_cut_off_by_the_client_is_a_4xx(shared_web, head, status):
    # More than a worker gathers, so a thread reads the rest and meets the end.
    sock = shared_web.connect(
        head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % (2 * HOLD_LIMIT) + b"a" * HOLD_LIMIT
    )
    sock.shutdown(socket.SHUT_WR)
    answer_status, headers, answer = read_response(sock)
    assert answer_status == status, answer
    assert headers["connection"] == "close"
    assert_error_body(headers, answer)
    assert stored_rows(shared_web) == 0


TOO_LARGE = [
    # Declared too large: answered before the body is read.
    WEBHOOK_HEAD + b"Content-Length: %d\r\n\r\n" % (600 * 1024) + b"{" * (600 * 1024),
    API_HEAD + b"Content-Length: 60000000\r\n\r\n" + b"[" * (HOLD_LIMIT - len(API_HEAD) - 28),
    # Found too large while reading a chunked body.
    WEBHOOK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"{" * 300 * 1024),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("request_bytes", TOO_LARGE, ids=["webhook", "api", "webhook-chunked"])
def test_a_413_says_it_closes_the_connection(shared_web, request_bytes):
    sock = shared_web.connect(request_bytes)
    status, headers, answer = read_response(sock)
    assert status == 413, answer
    assert headers["connection"] == "close"
    assert_error_body(headers, answer)
    assert read_until_closed(sock) == b""
    assert stored_rows(shared_web) == 0


@pytest.mark.timeout(180)
def test_a_chunked_submit_over_50_mib_is_413(shared_web):
    piece = b"[" * (1024 * 1024)
    sock = shared_web.connect(API_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    upload = Upload(sock, b"%x\r\n%s\r\n" % (len(piece), piece) * 51 + b"0\r\n\r\n")
    try:
        status, headers, answer = read_response(sock, seconds=120)
        assert status == 413, answer
        assert headers["connection"] == "close"
        assert_error_body(headers, answer)
    finally:
        upload.close()
    assert stored_rows(shared_web) == 0


@pytest.mark.timeout(60)
def test_an_error_answer_after_the_whole_body_keeps_the_connection(shared_web):
    sock = shared_web.connect(WEBHOOK_HEAD + b"Content-Length: 2\r\n\r\n{}")
    status, headers, _ = read_response(sock)
    assert status == 401 and headers["connection"] == "keep-alive"
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, answer = read_response(sock)
    assert status == 200 and json.loads(answer) == {"status": "ok"}
    sock.close()


BAD_HEADS = [
    (431, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"),
    (431, b"GET /healthz HTTP/1.1\r\n" + b"X-A: a\r\n" * 200 + b"\r\n"),
    (414, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    (400, b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n"),
    (400, b"GET /healthz HTTP/1.1\r\nX-Control: a\x01b\r\n\r\n"),
    (400, b"GET /healthz HTTP/1.1\r\nX-Nul: a\x00b\r\n\r\n"),
    (400, b"POST /api/jobs HTTP/1.1\r\nContent-Length: abc\r\n\r\n"),
    (400, b"POST /api/jobs HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}"),
    (400, b"POST /api/jobs HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    (400, b"POST /api/jobs HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
    (501, b"POST /api/jobs HTTP/1.1\r\nTransfer-Encoding: x-foo\r\n\r\n"),
    (400, b"G\xc3\xa9T / HTTP/1.1\r\n\r\n"),
    (400, b"GET / HTTP/9.9\r\n\r\n"),
    (400, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("status, request_bytes", BAD_HEADS)
def test_what_the_http_parser_refuses_gets_the_json_error_body(shared_web, status, request_bytes):
    sock = shared_web.connect(request_bytes)
    answer_status, headers, answer = read_response(sock)
    assert answer_status == status, answer
    assert headers["connection"] == "close"
    assert (
        assert_error_body(headers, answer)["code"]
        == {
            400: "bad_request",
            414: "uri_too_long",
            431: "request_header_fields_too_large",
            501: "not_implemented",
        }[status]
    )
    assert read_until_closed(sock) == b""


HEADER_BYTES = st.binary(max_size=40).filter(lambda b: b"\r\n" not in b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from([b"GET", b"POST", b"G T", b"get", b""]),
    target=st.one_of(st.sampled_from([b"/healthz", b"/api/jobs", b"*"]), HEADER_BYTES),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b""]),
    headers=st.lists(st.tuples(HEADER_BYTES, HEADER_BYTES), max_size=4),
)
def test_any_request_head_gets_an_answer_that_is_json_or_a_success(
    shared_web, method, target, version, headers
):
    head = b"%s %s %s\r\n" % (method, target, version)
    head += b"".join(b"%s: %s\r\n" % pair for pair in headers) + b"Connection: close\r\n\r\n"
    sock = shared_web.connect(head)
    try:
        # A head that declares a body would wait for it: say it will not come.
        sock.shutdown(socket.SHUT_WR)
        data = read_until_closed(sock, seconds=20)
    finally:
        sock.close()
    if not data:
        return  # a request that promised a body and closed: nobody to answer
    status_line, _, rest = data.partition(b"\r\n")
    status = int(status_line.split()[1])
    assert status < 500 or status == 501, data
    if status >= 400:
        head_text, _, body = rest.partition(b"\r\n\r\n")
        fields = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in head_text.decode().split("\r\n"))
        )
        assert_error_body(fields, body)
