"""End to end, as deployed: the Procfile's own lines as real processes, the sandbox, nginx.

Each scenario starts the sandbox, runs the Procfile's ``release:``, then its exact
``web:`` (gunicorn, 2 workers) and ``worker:`` lines with ``bash -c`` and ``PORT``
set, submits jobs over HTTP and checks every job's final state and every file's
sha256 against what the sandbox served.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from webhook_service.demo import (
    API_TOKEN,
    WEBHOOK_SECRET,
    DemoFailed,
    Processes,
    free_port,
    local_env,
    read_procfile,
    sandbox_command,
    wait_for,
)
from webhook_service.signatures import sign

REPO = Path(__file__).resolve().parent.parent
PROCFILE = read_procfile(REPO / "Procfile")
TERMINAL = {"completed", "failed", "cancelled", "expired", "submit_failed"}

pytestmark = pytest.mark.timeout(300)


def wait_until(check, seconds: float, what: str) -> None:
    try:
        wait_for(check, seconds, what)
    except DemoFailed as error:
        raise AssertionError(str(error)) from None


class Deployment:
    """Sandbox + Procfile processes (+ nginx) on loopback, in a temp instance folder."""

    def __init__(self, home: Path, tls: dict[str, Path] | None = None) -> None:
        self.home = home
        self.sandbox_port, self.web_port = free_port(), free_port()
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.public_url = self.web_url
        self.processes = Processes(home, cwd=REPO)
        self.tls = tls
        self.env = local_env(home, self.sandbox_url, self.web_port)
        self.env.update(POLL_AFTER_SECONDS="3", POLL_INTERVAL_SECONDS="1")
        if tls is not None:
            self.tls_port = free_port()
            self.public_url = f"https://127.0.0.1:{self.tls_port}"
            self.env.update(PUBLIC_BASE_URL=self.public_url, TRUSTED_PROXY_COUNT="1")
            self.env.pop("ALLOW_INSECURE_CALLBACKS")

    def start(self, name: str, command: str) -> None:
        self.processes.start(name, command, self.env)

    def up(self, **sandbox: Any) -> Deployment:
        extra = ("--ca-file", str(self.tls["ca"])) if self.tls else ()
        self.start(
            "sandbox",
            sandbox_command(
                self.sandbox_port,
                "--pending-seconds",
                "0.5",
                "--in-progress-seconds",
                "0.5",
                *extra,
            ),
        )
        subprocess.run(
            ["bash", "-c", PROCFILE["release"]],
            cwd=REPO,
            env=self.env,
            check=True,
            capture_output=True,
        )
        self.start("web", PROCFILE["web"])
        self.start("worker", PROCFILE["worker"])
        if self.tls is not None:
            self.start(
                "nginx", f"nginx -p {self.home} -c {self.write_nginx_conf()} -g 'daemon off;'"
            )
        wait_until(
            lambda: httpx.get(f"{self.sandbox_url}/_sandbox/stats").is_success, 20, "sandbox up"
        )
        wait_until(lambda: httpx.get(f"{self.web_url}/healthz").is_success, 30, "web up")
        if sandbox:
            self.sandbox_settings(**sandbox)
        return self

    def write_nginx_conf(self) -> Path:
        assert self.tls is not None
        conf = self.home / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                port=self.tls_port,
                upstream=self.web_port,
                cert=self.tls["cert"],
                key=self.tls["key"],
                home=self.home,
            )
        )
        return conf

    def sandbox_settings(self, **settings: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.sandbox_url}/_sandbox/settings", json=settings)
        response.raise_for_status()
        return response.json()

    def api(self) -> httpx.Client:
        verify: Any = ssl.create_default_context(cafile=self.tls["ca"]) if self.tls else True
        return httpx.Client(
            base_url=self.public_url,
            verify=verify,
            timeout=30,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )

    def signal(self, name: str, signum: int) -> None:
        self.processes.signal(name, signum)

    def wait(self, name: str) -> None:
        self.processes.running[name].wait(15)

    def stop(self) -> dict[str, float]:
        return self.processes.stop()

    def events(self, *filters: str) -> list[dict[str, Any]]:
        """Stored callbacks, through the operator CLI."""
        listing = subprocess.run(
            [sys.executable, "-m", "webhook_service.cli", "events", "list", "--json", *filters],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [json.loads(line) for line in listing.splitlines()]


NGINX_CONF = """
worker_processes 1;
error_log {home}/nginx-error.log;
pid {home}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {home}/nginx-access.log;
    client_body_temp_path {home}/nginx-body;
    proxy_temp_path {home}/nginx-proxy;
    fastcgi_temp_path {home}/nginx-fastcgi;
    uwsgi_temp_path {home}/nginx-uwsgi;
    scgi_temp_path {home}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 51m;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_buffering off;
        }}
    }}
}}
"""


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    made = Deployment(tmp_path)
    yield made
    made.stop()


def submit_jobs(api: httpx.Client, count: int, **parameters: Any) -> list[str]:
    ids = []
    for n in range(count):
        body: dict[str, Any] = {"model": "sandbox/tiny", "prompt": f"e2e {n}", "duration": 2}
        if parameters:
            body["provider"] = {"options": {"sandbox": {"parameters": parameters}}}
        response = api.post("/api/jobs", json=body, headers={"Idempotency-Key": f"e2e-{n}"})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def settled(api: httpx.Client, ids: list[str]) -> bool:
    for job_id in ids:
        job = api.get(f"/api/jobs/{job_id}").json()
        if job["status"] not in TERMINAL:
            return False
        if job["status"] == "completed" and (
            not job["outputs"] or any(o["status"] != "downloaded" for o in job["outputs"])
        ):
            return False
    return True


def check_final(
    deployment: Deployment, api: httpx.Client, ids: list[str], source: str | None = None
) -> list[dict[str, Any]]:
    """Every job completed and every file's sha256 is what the sandbox served."""
    jobs = [api.get(f"/api/jobs/{job_id}").json() for job_id in ids]
    for job in jobs:
        assert job["status"] == "completed", job
        if source:
            assert job["completion_source"] == source, job
        served = httpx.get(f"{deployment.sandbox_url}/_sandbox/jobs/{job['upstream_id']}").json()
        served_sha = {o["index"]: o["sha256"] for o in served["outputs"]}
        for output in job["outputs"]:
            path = deployment.home / "videos" / job["id"] / f"{output['index']}.mp4"
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == output["sha256"] == served_sha[output["index"]]
            video = api.get(output["url"])
            assert video.status_code == 200 and hashlib.sha256(video.content).hexdigest() == digest
    assert not list((deployment.home / "videos").glob("**/*.part-*"))
    return jobs


def test_every_callback_delivered(deployment):
    deployment.up()
    with deployment.api() as api:
        ids = submit_jobs(api, 4, outputs=2)
        wait_until(lambda: settled(api, ids), 60, "all jobs settled")
        check_final(deployment, api, ids, source="callback")


def test_every_callback_dropped(deployment):
    deployment.up(drop_callbacks=1.0)
    with deployment.api() as api:
        ids = submit_jobs(api, 4)
        wait_until(lambda: settled(api, ids), 90, "all jobs settled")
        check_final(deployment, api, ids, source="poll")


def test_duplicates_and_reordering(deployment):
    deployment.up(duplicate_callbacks=1.0, reorder_callbacks=True)
    with deployment.api() as api:
        ids = submit_jobs(api, 6)
        wait_until(lambda: settled(api, ids), 60, "all jobs settled")
        check_final(deployment, api, ids)
    stats = httpx.get(f"{deployment.sandbox_url}/_sandbox/stats").json()
    assert stats["submits"] == 6


def test_upstream_429_and_500_bursts(deployment):
    deployment.up(error_rate=0.3, drop_callbacks=0.5)
    with deployment.api() as api:
        ids = []
        for n in range(6):
            body = {"model": "sandbox/tiny", "prompt": f"burst {n}", "duration": 2}
            response = api.post("/api/jobs", json=body)
            if response.status_code == 202:
                ids.append(response.json()["id"])
            else:  # refused or ambiguous: recorded, never resubmitted
                assert response.status_code in (502, 503), response.text
                assert response.json()["error"]["details"]["job_id"]
        deployment.sandbox_settings(error_rate=0.3)
        wait_until(lambda: settled(api, ids), 120, "all accepted jobs settled")
        check_final(deployment, api, ids)


def test_worker_killed_mid_download_is_finished_by_a_restarted_worker(deployment):
    deployment.env["WORKER_LEASE_SECONDS"] = "5"  # the contract's minimum
    deployment.up(content_size=64 * 1024 * 1024, throttle_bytes_per_second=16 * 1024 * 1024)
    with deployment.api() as api:
        ids = submit_jobs(api, 1)
        wait_until(
            lambda: any(
                o["status"] == "downloading"
                for o in api.get(f"/api/jobs/{ids[0]}").json()["outputs"]
            ),
            30,
            "download started",
        )
        deployment.signal("worker", signal.SIGKILL)
        deployment.wait("worker")
        deployment.sandbox_settings(throttle_bytes_per_second=0)
        deployment.start("worker", PROCFILE["worker"])
        wait_until(lambda: settled(api, ids), 60, "job settled after restart")
        [job] = check_final(deployment, api, ids)
        assert job["outputs"][0]["bytes"] == 64 * 1024 * 1024


def test_sigterm_to_web_and_worker_during_load_loses_nothing_acknowledged(deployment):
    deployment.up(content_size=8 * 1024 * 1024)
    accepted: list[str] = []
    stop_load = threading.Event()

    def load() -> None:
        # Submits keep coming while both processes are told to stop; only a 202 counts.
        with deployment.api() as api:
            n = 0
            while not stop_load.is_set():
                body = {"model": "sandbox/tiny", "prompt": f"load {n}", "duration": 2}
                try:
                    response = api.post("/api/jobs", json=body, timeout=5)
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 202:
                    accepted.append(response.json()["id"])
                n += 1
                time.sleep(0.05)

    sender = threading.Thread(target=load)
    sender.start()
    try:
        wait_until(lambda: len(accepted) >= 5, 30, "load running")
        for name in ("worker", "web"):
            started = time.monotonic()
            deployment.signal(name, signal.SIGTERM)
            deployment.wait(name)
            assert time.monotonic() - started < 10, f"{name} took too long to stop"
        deployment.start("web", PROCFILE["web"])
        deployment.start("worker", PROCFILE["worker"])
        wait_until(lambda: httpx.get(f"{deployment.web_url}/healthz").is_success, 30, "web up")
        time.sleep(1)
    finally:
        stop_load.set()
        sender.join(10)
    with deployment.api() as api:
        wait_until(lambda: settled(api, accepted), 120, "every acknowledged job settled")
        check_final(deployment, api, accepted)


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, Path]:
    if shutil.which("nginx") is None or shutil.which("openssl") is None:
        pytest.skip("nginx and openssl are needed (the CI script installs them)")
    ca_key, ca, key, csr, cert = (
        tmp_path / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run = lambda *args: subprocess.run(args, check=True, capture_output=True)  # noqa: E731
    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=webhook-service test CA",
    )
    run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        "/CN=localhost",
    )
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        ext,
    )
    return {"ca": ca, "cert": cert, "key": key}


def test_https_callbacks_through_nginx_with_trusted_proxy_headers(tmp_path, tls):
    deployment = Deployment(tmp_path, tls)
    try:
        deployment.up()
        with deployment.api() as api:
            ids = submit_jobs(api, 2)
            upstream = httpx.get(
                f"{deployment.sandbox_url}/_sandbox/jobs/"
                f"{api.get(f'/api/jobs/{ids[0]}').json()['upstream_id']}"
            ).json()
            assert upstream["callback_url"].startswith(f"{deployment.public_url}/webhooks/")
            wait_until(lambda: settled(api, ids), 60, "all jobs settled")
            check_final(deployment, api, ids, source="callback")

            # A client cannot pose as someone else through X-Forwarded-* beyond one hop.
            body = (
                b'{"type":"video.generation.completed",'
                b'"data":{"id":"job-spoof","status":"completed"}}'
            )
            headers = {
                "X-OpenRouter-Signature": sign(WEBHOOK_SECRET, int(time.time()), body),
                "X-Forwarded-For": "203.0.113.66",
                "X-Forwarded-Proto": "http",
                "X-Forwarded-Host": "evil.example",
                "Content-Type": "application/json",
            }
            response = api.post("/webhooks/modelgates", content=body, headers=headers)
            assert response.status_code == 204
        [event] = deployment.events("--upstream-id", "job-spoof")
        assert event["remote_addr"] == "127.0.0.1"
        assert event["url"].startswith(f"https://127.0.0.1:{deployment.tls_port}/")
        applied = deployment.events("--verdict", "applied")
        assert len(applied) == 2 and all(e["url"].startswith("https://") for e in applied)
    finally:
        deployment.stop()
