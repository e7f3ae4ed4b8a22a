"""The Procfile's ``web:`` line as deployed: slow clients, configuration errors, any directory.

Every test here runs the real line with ``bash -c`` from a temporary working
directory outside the clone, as a platform would run the installed package.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook_service.demo import free_port, read_procfile
from webhook_service.server import RequestBuffer

REPO = Path(__file__).resolve().parent.parent
WEB = read_procfile(REPO / "Procfile")["web"]
STALLED_BODY = (
    b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{"
)
STALLED_WEBHOOK = b"POST /webhooks/modelgates HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{"
PARTIAL_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "


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
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


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
