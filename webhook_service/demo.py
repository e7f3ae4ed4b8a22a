"""`webhook-service demo`: the whole system on loopback, as it is deployed.

Starts the sandbox upstream, then the Procfile's ``release``, ``web`` and
``worker`` lines (with ``PORT`` set, as a platform would) on a fresh instance
folder; submits jobs that exercise a dropped callback, an upstream failure, two
outputs and a duplicate callback; follows them until every job is terminal and
every video downloaded; checks each file's sha256 against what the sandbox
served; checks that the client's app (a receiver the demo runs) got one signed
notification per job once it was settled; prints a summary and exits 0, or
non-zero saying what went wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from .notifications.events import sign
from .store.sqlite import SqliteStore

API_TOKEN = "demo-token"
WEBHOOK_SECRET = "demo-webhook-secret"
API_KEY = "demo-sandbox-key"
NOTIFY_SECRET = "whsec_" + base64.b64encode(b"demo-notification-signing-secret").decode()
STOP_SECONDS = 10.0

# The repository's Procfile, used when the working directory has none of ours: every
# line runs from an installed package, wherever the command is started.
DEFAULT_PROCFILE = {
    "release": "webhook-service migrate",
    "web": "gunicorn webhook_service.wsgi:app --config python:webhook_service.gunicorn_conf"
    " --bind 0.0.0.0:$PORT --workers ${WEB_CONCURRENCY:-2} --threads ${WEB_THREADS:-4}"
    " --graceful-timeout 8 --access-logfile -",
    "worker": "webhook-service worker",
}
# Settings that would point the demo at the user's own database, bucket or app.
NOT_INHERITED = ("DATABASE_URL", "MEDIA_STORAGE", "NOTIFY_URL", "NOTIFY_SIGNING_SECRET")
LOG_LINES_SHOWN = 20


@dataclass
class Scenario:
    """One demo job: what to ask the sandbox for, and what must come out."""

    name: str
    sandbox: dict[str, Any]
    status: str
    source: str | None
    outputs: int
    job: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario("plain", {}, "completed", "callback", 1),
    Scenario("callback dropped", {"callback": "drop"}, "completed", "poll", 1),
    Scenario("fails upstream", {"outcome": "failed"}, "failed", "callback", 0),
    Scenario("two outputs", {"outputs": 2}, "completed", "callback", 2),
    Scenario("duplicate callback", {"callback": "duplicate"}, "completed", "callback", 1),
]


def read_procfile(path: Path) -> dict[str, str]:
    """Parse a Procfile into {process type: command}."""
    processes = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not line.lstrip().startswith("#"):
            processes[name.strip()] = command.strip()
    return processes


def demo_procfile(cwd: Path) -> dict[str, str]:
    """The Procfile in ``cwd`` if it is this service's, else the packaged one."""
    path = cwd / "Procfile"
    if path.is_file():
        processes = read_procfile(path)
        if "webhook_service" in processes.get("web", "") and "worker" in processes:
            return processes
    return dict(DEFAULT_PROCFILE)


def free_port() -> int:
    """Return a free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], bool],
    seconds: float,
    what: str,
    alive: Callable[[], None] = lambda: None,
) -> None:
    """Poll ``check`` until true, or fail saying ``what`` did not happen.

    ``alive`` is called on every round; it raises when a process died meanwhile.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive()
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise DemoFailed(f"{what} within {seconds:.0f}s")


class DemoFailed(Exception):
    """The demo did not come out right; the message says what."""


class Processes:
    """Child processes in their own sessions, logging to files, stopped with SIGTERM."""

    def __init__(self, logs: Path, cwd: Path | None = None) -> None:
        self.logs = logs
        self.cwd = cwd
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Run ``command`` with ``bash -c``, as a Procfile runner does."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running[name] = process
        return process

    def check(self) -> None:
        """Raise `DemoFailed` with its last output if any process has exited."""
        for name, process in self.running.items():
            status = process.poll()
            if status is not None:
                raise DemoFailed(
                    f"{name} exited with status {status}; its last output:\n" + self.tail(name)
                )

    def tail(self, name: str, lines: int = LOG_LINES_SHOWN) -> str:
        """The last lines a process wrote."""
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "    (no output)"
        shown = text.rstrip().splitlines()[-lines:] or ["(no output)"]
        return "\n".join(f"    {line}" for line in shown)

    def signal(self, name: str, signum: int) -> None:
        """Send a signal to a process and its children."""
        os.killpg(self.running[name].pid, signum)

    def stop(self) -> dict[str, float]:
        """SIGTERM every process; return how long each took to exit."""
        took = {}
        for name, process in self.running.items():
            started = time.monotonic()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(STOP_SECONDS + 5)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            took[name] = time.monotonic() - started
        return took


class AppReceiver(ThreadingHTTPServer):
    """The client's own app, as the demo plays it: verifies and keeps each notification."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _AppHandler)
        self.events: list[dict[str, Any]] = []
        self.refused = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Where the service is told to send notifications."""
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/videos"

    def for_job(self, job_id: str) -> list[dict[str, Any]]:
        """The verified notifications received about one job."""
        return [event for event in self.events if event["data"]["id"] == job_id]

    def close(self) -> None:
        """Stop serving."""
        self.shutdown()
        self.server_close()


class _AppHandler(BaseHTTPRequestHandler):
    server: AppReceiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        msg_id = self.headers.get("webhook-id", "")
        stamp = self.headers.get("webhook-timestamp", "")
        sent = self.headers.get("webhook-signature", "").split()
        verified = False
        if stamp.isdigit() and abs(time.time() - int(stamp)) <= 300:
            expected = sign(NOTIFY_SECRET, msg_id, int(stamp), body)["webhook-signature"]
            verified = any(hmac.compare_digest(expected, one) for one in sent)
        if verified:
            self.server.events.append(json.loads(body))
        else:
            self.server.refused += 1
        self.send_response(204 if verified else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()


def local_env(home: Path, sandbox_url: str, web_port: int) -> dict[str, str]:
    """The environment of a local deployment: instance files in ``home``, the sandbox upstream."""
    inherited = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    return {
        **inherited,
        "PORT": str(web_port),
        "DATABASE_PATH": str(home / "webhook_service.sqlite3"),
        "MEDIA_DIR": str(home / "videos"),
        "MODELGATES_API_KEY": API_KEY,
        "MODELGATES_BASE_URL": f"{sandbox_url}/api/v1",
        "MODELGATES_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        "SERVICE_API_TOKENS": API_TOKEN,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
        "ALLOW_INSECURE_CALLBACKS": "1",
        "TRUSTED_PROXY_COUNT": "0",
        "POLL_AFTER_SECONDS": "6",
        "POLL_INTERVAL_SECONDS": "2",
        "WEB_CONCURRENCY": "2",
        "PYTHONUNBUFFERED": "1",
        # The Procfile's commands must come from this interpreter's environment.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def sandbox_command(port: int, *extra: str) -> str:
    """The shell command that starts the sandbox upstream for a local deployment."""
    return shlex.join(
        [
            sys.executable,
            "-m",
            "webhook_service.cli",
            "sandbox",
            "--port",
            str(port),
            "--api-key",
            API_KEY,
            "--webhook-secret",
            WEBHOOK_SECRET,
            "--pending-seconds",
            "1",
            "--in-progress-seconds",
            "2",
            *extra,
        ]
    )


def run(keep: bool, echo: Callable[[str], None] = print) -> int:
    """Run the demo; return the process exit status."""
    home = Path(tempfile.mkdtemp(prefix="webhook-service-demo-"))
    procfile = demo_procfile(Path.cwd())
    sandbox_port, web_port = free_port(), free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    web_url = f"http://127.0.0.1:{web_port}"
    app = AppReceiver()
    env = {
        **local_env(home, sandbox_url, web_port),
        "NOTIFY_URL": app.url,
        "NOTIFY_SIGNING_SECRET": NOTIFY_SECRET,
        "ALLOW_PRIVATE_NOTIFY_URLS": "1",
    }
    # Children run in the instance folder: the user's .env is not theirs to read.
    processes = Processes(home, cwd=home)
    echo(f"demo: instance folder {home}")
    try:
        processes.start("sandbox", sandbox_command(sandbox_port), env)
        if "release" in procfile:
            release = subprocess.run(
                ["bash", "-c", procfile["release"]],
                cwd=home,
                env=env,
                capture_output=True,
                text=True,
            )
            if release.returncode:
                output = (release.stdout + release.stderr).strip() or "(no output)"
                raise DemoFailed(f"release step exited with status {release.returncode}: {output}")
        processes.start("web", procfile["web"], env)
        processes.start("worker", procfile["worker"], env)
        wait_for(
            lambda: httpx.get(f"{sandbox_url}/_sandbox/stats").is_success,
            20,
            "the sandbox did not start",
            processes.check,
        )
        wait_for(
            lambda: httpx.get(f"{web_url}/healthz").is_success,
            30,
            "web did not start",
            processes.check,
        )
        echo(f"demo: sandbox {sandbox_url}, web {web_url}, worker running; submitting jobs")
        with httpx.Client(
            base_url=web_url, timeout=30, headers={"Authorization": f"Bearer {API_TOKEN}"}
        ) as api:
            _submit_all(api, echo)
            _follow(api, echo, processes.check)
            failures = _check(api, httpx.Client(base_url=sandbox_url), home, echo, app)
        if keep:
            echo(
                f"\ndemo: still running. Dashboard {web_url}/dashboard (sign in with the token"
                f" {API_TOKEN}), API {web_url}/api/jobs (Bearer {API_TOKEN}), metrics"
                f" {web_url}/metrics, sandbox {sandbox_url}/_sandbox/jobs, logs in {home}."
                " Ctrl-C stops."
            )
            _wait_for_interrupt()
        took = processes.stop()
        slow = [name for name, seconds in took.items() if seconds > STOP_SECONDS]
        if slow:
            failures.append(f"{', '.join(slow)} took more than {STOP_SECONDS:.0f}s to stop")
    except DemoFailed as error:
        echo(f"\ndemo FAILED: {error}\n(logs in {home})")
        return 1
    finally:
        processes.stop()  # a no-op for processes already stopped; never leave any behind
        app.close()
    if failures:
        echo("\ndemo FAILED:\n  " + "\n  ".join(failures) + f"\n(logs in {home})")
        return 1
    echo(
        "\ndemo OK: every job reached the expected state, every video is on disk, verified,"
        " and the app got one signed notification per job."
    )
    return 0


def _submit_all(api: httpx.Client, echo: Callable[[str], None]) -> None:
    for scenario in SCENARIOS:
        body = {
            "model": "sandbox/tiny",
            "prompt": f"demo: {scenario.name}",
            "duration": 2,
            "resolution": "480p",
            "aspect_ratio": "16:9",
        }
        if scenario.sandbox:
            body["provider"] = {"options": {"sandbox": {"parameters": scenario.sandbox}}}
        response = api.post(
            "/api/jobs", json=body, headers={"Idempotency-Key": f"demo-{scenario.name}"}
        )
        if response.status_code != 202:
            raise DemoFailed(
                f"submit of '{scenario.name}' answered {response.status_code}: {response.text}"
            )
        scenario.job = response.json()
        echo(f"  submitted {scenario.job['id']}  {scenario.name}")


def _follow(
    api: httpx.Client,
    echo: Callable[[str], None],
    alive: Callable[[], None],
    seconds: float = 90,
) -> None:
    deadline = time.monotonic() + seconds
    shown: dict[str, str] = {}
    while time.monotonic() < deadline:
        alive()
        settled = True
        for scenario in SCENARIOS:
            job = api.get(f"/api/jobs/{scenario.job['id']}").json()
            scenario.job = job
            outputs = " ".join(o["status"] for o in job["outputs"]) or "-"
            told = (job["notification"] or {}).get("status", "-")
            line = (
                f"{job['status']} ({job['completion_source'] or '-'}) outputs: {outputs}"
                f"  notification: {told}"
            )
            if shown.get(job["id"]) != line:
                shown[job["id"]] = line
                echo(f"  {time.strftime('%H:%M:%S')} {scenario.name:<20} {line}")
            settled &= job["settled"] and told == "delivered"
        if settled:
            return
        time.sleep(0.5)
    raise DemoFailed("not every job finished")


def _check(
    api: httpx.Client,
    sandbox: httpx.Client,
    home: Path,
    echo: Callable[[str], None],
    app: AppReceiver,
) -> list[str]:
    failures = []
    store = SqliteStore(home / "webhook_service.sqlite3")
    echo(
        f"\n{'job':<28} {'scenario':<19} {'status':<10} {'source':<9} {'idx':>3} "
        f"{'bytes':>8}  {'sha256':<16}  file"
    )
    if app.refused:
        failures.append(f"{app.refused} notifications failed signature verification")
    for scenario in SCENARIOS:
        job = scenario.job
        if (job["status"], job["completion_source"], len(job["outputs"])) != (
            scenario.status,
            scenario.source,
            scenario.outputs,
        ):
            failures.append(
                f"{scenario.name}: {job['status']}/{job['completion_source']}/"
                f"{len(job['outputs'])} outputs, expected {scenario.status}/{scenario.source}/"
                f"{scenario.outputs}"
            )
        upstream = sandbox.get(f"/_sandbox/jobs/{job['upstream_id']}").json()
        served = {o["index"]: o["sha256"] for o in upstream.get("outputs", [])}
        delivered = [a for a in upstream["callback_attempts"] if a.get("status") == 204]
        stored = store.list_events(upstream_id=job["upstream_id"])
        if (
            len(delivered)
            != (
                2
                if scenario.name == "duplicate callback"
                else 0
                if scenario.source == "poll"
                else 1
            )
            or len(stored) > 1
        ):
            failures.append(
                f"{scenario.name}: {len(delivered)} callbacks acknowledged, {len(stored)} stored"
            )
        told = app.for_job(job["id"])
        if [event["type"] for event in told] != [f"job.{scenario.status}"]:
            failures.append(f"{scenario.name}: the app was told {[e['type'] for e in told]}")
        rows = job["outputs"] or [None]
        for output in rows:
            path, digest = "", "-"
            if output is not None:
                file = home / "videos" / job["id"] / f"{output['index']}.mp4"
                path = str(file)
                digest = hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else "-"
                if output["status"] != "downloaded" or digest != output["sha256"]:
                    failures.append(f"{scenario.name}: video {output['index']} not intact")
                elif served.get(output["index"]) != digest:
                    failures.append(
                        f"{scenario.name}: video {output['index']} differs from "
                        "what the sandbox served"
                    )
            echo(
                f"{job['id']:<28} {scenario.name:<19} {job['status']:<10} "
                f"{job['completion_source'] or '-':<9} "
                f"{'-' if output is None else output['index']:>3} "
                f"{'-' if output is None else output['bytes']:>8}  {digest[:16]:<16}  {path}"
            )
    return failures


def _wait_for_interrupt() -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
