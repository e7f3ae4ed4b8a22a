"""The dashboard: sign-in, CSRF, security headers, pages, and a real browser session.

The browser test drives Debian's headless Chromium over the DevTools protocol on a
pipe (``--remote-debugging-pipe``: no extra package, no port): it signs in, opens a
job whose sample MP4 was downloaded, waits until the <video> element can play,
and replays a stored callback.  Screenshots land in the test's tmp_path.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import API_TOKEN, AUTH

from webhook_service.modelgates import ModelGatesClient
from webhook_service.worker import Worker

VALID = {"model": "google/veo-3.1", "prompt": "waves", "duration": 4, "resolution": "720p"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def env(env):
    """Poll as soon as a job is submitted, so a dropped callback's job is polled at once."""
    return {**env, "POLL_AFTER_SECONDS": "0", "POLL_INTERVAL_SECONDS": "1"}


def submit(client, **parameters) -> dict[str, Any]:
    options = {"provider": {"options": {"sandbox": {"parameters": parameters}}}}
    answer = client.post("/api/jobs", json={**VALID, **options}, headers=AUTH)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(client, token: str = API_TOKEN):
    form = client.get("/dashboard/sign-in").get_data(as_text=True)
    return client.post("/dashboard/sign-in", data={"token": token, "csrf_token": csrf_of(form)})


def wait_for(check, seconds: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached")
        time.sleep(0.05)


def download_everything(app) -> None:
    """Run worker rounds until every job is finished and every output downloaded."""
    settings = app.extensions["webhook_service"].settings
    client = ModelGatesClient(settings.modelgates_base_url, "sandbox-key", timeout=5)
    worker = Worker(settings, client, lease_seconds=30, rand=lambda: 0.5)
    try:
        now = time.time()
        for _ in range(50):
            worker.run_once(now)
            left = worker.store.oldest_work(now)
            if left["job"] is None and left["output"] is None:
                return
            now += 1
            time.sleep(0.02)
        raise AssertionError(f"work left: {left}")
    finally:
        worker.stop()


# Sign-in, session, CSRF, headers -----------------------------------------------------


def test_pages_need_a_session_and_sign_in_happens_in_a_posted_form(client):
    answer = client.get("/dashboard/jobs")
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/dashboard/sign-in")
    form = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert '<form method="post"' in form and 'type="password"' in form
    assert client.get("/dashboard/jobs/x/videos/0").status_code == 401


def test_a_wrong_token_is_refused_and_a_right_one_starts_a_session(client):
    assert sign_in(client, "not-a-token").status_code == 401
    assert client.get("/dashboard").status_code == 302
    answer = sign_in(client)
    assert answer.status_code == 302
    assert API_TOKEN not in answer.headers["Location"]
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # plain http in development
    assert API_TOKEN not in cookie
    assert client.get("/dashboard").status_code == 200


def test_the_cookie_is_secure_over_https(app):
    client = app.test_client()
    form = client.get("/dashboard/sign-in", base_url="https://localhost").get_data(as_text=True)
    answer = client.post(
        "/dashboard/sign-in",
        data={"token": API_TOKEN, "csrf_token": csrf_of(form)},
        base_url="https://localhost",
    )
    assert answer.status_code == 302
    assert "; Secure" in answer.headers["Set-Cookie"]


def test_every_page_sends_the_security_headers(client):
    sign_in(client)
    for path in ("/dashboard/sign-in", "/dashboard", "/dashboard/jobs", "/dashboard/callbacks"):
        headers = client.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "script-src" not in csp and "unsafe-inline" not in csp
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_posts_without_the_csrf_token_are_refused(client, store):
    submit(client)
    sign_in(client)
    assert client.post("/dashboard/sign-out").status_code == 400
    assert client.post("/dashboard/sign-in", data={"token": API_TOKEN}).status_code == 400
    answer = client.post("/dashboard/events/1/replay", data={"csrf_token": "forged"})
    assert answer.status_code == 400
    assert client.get("/dashboard").status_code == 200  # still signed in


def test_a_session_ends_when_its_token_is_no_longer_configured(env, sandbox):
    from webhook_service import create_app

    first = create_app({**env, "SECRET_KEY": "k" * 32, "TESTING": True})
    client = first.test_client()
    sign_in(client)
    assert client.get("/dashboard").status_code == 200
    revoked = create_app(
        {**env, "SECRET_KEY": "k" * 32, "SERVICE_API_TOKENS": "another", "TESTING": True}
    )
    client.application = revoked
    assert client.get("/dashboard").status_code == 302


# Pages ------------------------------------------------------------------------------


def test_jobs_are_listed_newest_first_filtered_and_paged(client):
    made = [submit(client, callback="drop") for _ in range(27)]
    sign_in(client)
    page = client.get("/dashboard/jobs").get_data(as_text=True)
    ids = re.findall(r'href="/dashboard/jobs/(vj_[^"]+)"', page)
    assert ids == [job["id"] for job in reversed(made)][:25]
    older = re.search(r'rel="next" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    rest = re.findall(
        r'href="/dashboard/jobs/(vj_[^"]+)"', client.get(older).get_data(as_text=True)
    )
    assert rest == [made[1]["id"], made[0]["id"]]
    none = client.get("/dashboard/jobs?status=completed").get_data(as_text=True)
    assert "No jobs with status completed" in none


def test_the_overview_shows_counts_miss_rate_and_work_due(live, sandbox):
    app, server = live
    client = app.test_client()
    submit(client)
    submit(client, callback="drop")
    sandbox.advance(10)
    wait_for(
        lambda: (
            app.test_client().get("/api/jobs?status=completed", headers=AUTH).get_json()["jobs"]
        ),
        what="a callback",
    )
    download_everything(app)
    sign_in(client)
    page = client.get("/dashboard").get_data(as_text=True)
    assert re.search(r'>completed</span></a></td><td class="num">2<', page)
    assert '<td class="num miss-rate">50 %</td>' in page
    assert '<td class="num" id="due-downloads">0</td>' in page


# In a real browser ----------------------------------------------------------------------


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child: its fd 3 reads commands, fd 4 writes answers
            high_r, high_w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.process = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
                "--window-size=1280,900",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire,
            close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.enable", session=True)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )

    def send(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer["result"]
                return result

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        found: dict[str, Any] = json.loads(message)
        return found

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, lands_on: str | None = None) -> None:
        self.send("Page.navigate", session=True, url=url)
        self.wait_loaded(lands_on or url)

    def wait_loaded(self, url_part: str = "") -> None:
        wait_for(
            lambda: (
                self.evaluate("document.readyState") == "complete"
                and url_part in self.evaluate("location.href")
            ),
            what=f"page {url_part} loaded",
        )

    def screenshot(self, path: Path) -> None:
        def capture() -> str | None:
            try:  # a page still being laid out has no width yet: try again shortly
                return str(
                    self.send(
                        "Page.captureScreenshot",
                        session=True,
                        format="png",
                        captureBeyondViewport=True,
                    )["data"]
                )
            except RuntimeError:
                return None

        data = wait_for(capture, what=f"a screenshot for {path.name}")
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    opened = Chromium(profile)
    yield opened
    opened.close()


def test_in_chromium_sign_in_play_a_downloaded_video_and_replay_a_callback(
    live, sandbox, browser, tmp_path
):
    app, server = live
    client = app.test_client()
    job = submit(client)
    sandbox.advance(10)
    wait_for(
        lambda: (
            client.get(f"/api/jobs/{job['id']}", headers=AUTH).get_json()["status"] == "completed"
        ),
        what="the callback",
    )
    download_everything(app)

    browser.open(f"{server.url}/dashboard/jobs/{job['id']}", lands_on="/dashboard/sign-in")
    browser.screenshot(tmp_path / "1-sign-in.png")
    browser.evaluate(f"document.querySelector('#token').value = {json.dumps(API_TOKEN)}")
    browser.evaluate("document.querySelector('form.card button[type=submit]').click()")
    browser.wait_loaded(f"/dashboard/jobs/{job['id']}")
    assert API_TOKEN not in browser.evaluate("location.href")
    assert browser.evaluate("document.cookie") == ""  # HttpOnly: no script sees it

    state = wait_for(
        lambda: (
            (value := browser.evaluate("document.querySelector('#video-0').readyState")) >= 3
            and value
        ),
        what="the video reaching HAVE_FUTURE_DATA",
    )
    assert state >= 3
    assert browser.evaluate("document.querySelector('#video-0').duration") > 1
    assert browser.evaluate("document.querySelector('#video-0').error") is None
    browser.screenshot(tmp_path / "2-job.png")

    before = browser.evaluate("document.querySelectorAll('.callback').length")
    assert before == 1
    event_id = browser.evaluate("document.querySelector('.callback').id")
    browser.evaluate("document.querySelector('.callback button.replay').click()")
    wait_for(
        lambda: (
            "replayed" in (browser.evaluate("document.querySelector('.flash')?.textContent") or "")
        ),
        what="the replay message",
    )
    assert browser.evaluate("document.querySelector('.flash').textContent").strip() == (
        f"Callback {event_id.removeprefix('event-')} replayed: unchanged."
    )
    browser.screenshot(tmp_path / "3-replayed.png")

    browser.open(f"{server.url}/dashboard")
    browser.screenshot(tmp_path / "4-overview.png")
    assert browser.evaluate("document.querySelector('.miss-rate').textContent") == "0 %"
    print(f"screenshots in {tmp_path}")


def test_a_stored_callback_too_deep_to_parse_is_shown_as_it_came(client):
    from test_webhooks import post, signed

    deep = b'{"type": "video.generation.completed", "data": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    assert post(client, deep, signed(deep, key="deep-1")).status_code == 400  # kept, rejected
    sign_in(client)
    page = client.get("/dashboard/callbacks")
    assert page.status_code == 200
    assert "rejected" in page.get_data(as_text=True)
