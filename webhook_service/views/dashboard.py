"""The dashboard at /dashboard: server-rendered pages for people.

Sign-in takes one of ``SERVICE_API_TOKENS`` in a POSTed form and keeps only its
SHA-256 in a signed session cookie (never the token, never in a URL); a token
removed from the configuration signs its sessions out at their next request.
The cookie is signed with ``SECRET_KEY`` when set, else with a key derived from
the API tokens and the database's identity (`session_key`): every web process
derives the same key, and changing the tokens invalidates every session.

Every POST carries the session's CSRF token (compared in constant time).  Every
page carries a CSP without inline script, ``X-Frame-Options: DENY``,
``Referrer-Policy`` and ``X-Content-Type-Options``; the cookie is HttpOnly,
SameSite=Lax, scoped to /dashboard, and Secure whenever the request came over
https.  Videos stream through `media.send_video` (Range, or a redirect to the
bucket's pre-signed URL) under the session, so a <video> element can play them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from werkzeug.wrappers import Response as BaseResponse

from .. import context, events, media, strict_json
from ..config import Settings
from ..job_json import iso
from ..jobs import COMPLETED, STATUSES, TERMINAL
from ..logs import redact
from ..observability import LAG_BUCKETS, miss_rate
from .auth import is_known_token, token_digest

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

PAGE = 25
PUBLIC_ENDPOINTS = frozenset({"dashboard.sign_in"})


def session_key(settings: Settings) -> str:
    """``SECRET_KEY``, else HMAC-SHA256 of the sorted API tokens and the database's identity."""
    if settings.secret_key:
        return settings.secret_key
    database = getattr(settings, "database_url", None) or str(settings.database_path.resolve())
    material = "\n".join([*sorted(settings.service_api_tokens), database]).encode()
    return hmac.new(b"webhook_service dashboard session", material, hashlib.sha256).hexdigest()


class DashboardSessions(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request came over https."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        """Only the dashboard has sessions (the cookie is scoped to it): elsewhere, none.

        Opening one costs a serializer per request, a fifth of a callback's CPU.
        """
        if request.path != bp.url_prefix and not request.path.startswith(f"{bp.url_prefix}/"):
            return None  # Flask uses its null session, which saves nothing
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure over https (as seen through trusted proxies), so http development works."""
        return request.is_secure


def init_app(app: Flask, settings: Settings) -> None:
    """Sign sessions, set the cookie's attributes and register the dashboard."""
    app.secret_key = session_key(settings)
    app.session_interface = DashboardSessions()
    app.config.update(
        SESSION_COOKIE_NAME="webhook_service_session",
        SESSION_COOKIE_PATH="/dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.jinja_env.globals.update(csrf_token=csrf_token, when=_when)
    app.register_blueprint(bp)


def _signed_in() -> bool:
    digest = session.get("token")
    if not isinstance(digest, str):
        return False
    known = [token_digest(token) for token in context.settings().service_api_tokens]
    return any(hmac.compare_digest(digest, candidate) for candidate in known)


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _when(value: float | None) -> str:
    return (iso(value) or "—").replace("T", " ").replace("Z", " UTC")


@bp.before_request
def guard() -> BaseResponse | None:
    """Check the CSRF token of every POST, then require a session (except to sign in)."""
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        expected = session.get("csrf")
        if not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
            abort(400, "The form expired or did not come from this dashboard; try again.")
    if request.endpoint in PUBLIC_ENDPOINTS or _signed_in():
        return None
    if request.method == "GET" and request.endpoint != "dashboard.video":
        return redirect(url_for("dashboard.sign_in", next=request.path))
    abort(401)


@bp.after_request
def security_headers(response: Response) -> Response:
    """CSP without inline script, no framing, no referrer, no sniffing, no caching."""
    media_sources = "'self' https:" if context.settings().media_storage else "'self'"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        f"media-src {media_sources}; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.endpoint != "dashboard.video":
        response.headers["Cache-Control"] = "no-store"
    return response


def _next_page(default: str) -> str:
    """A dashboard path to go back to, never somewhere else."""
    target = request.form.get("next") or request.args.get("next") or ""
    if target.startswith("/dashboard") and not target.startswith("/dashboard/.."):
        return target
    return default


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """The sign-in form; a valid API token starts a session."""
    failed = False
    if request.method == "POST":
        if is_known_token(request.form.get("token", "").strip()):
            destination = _next_page(url_for("dashboard.overview"))
            session.clear()
            session["token"] = token_digest(request.form["token"].strip())
            session["csrf"] = secrets.token_urlsafe(32)
            return redirect(destination)
        failed = True
    page = render_template(
        "dashboard/sign_in.html", failed=failed, next=_next_page(url_for("dashboard.overview"))
    )
    return page, 401 if failed else 200


@bp.post("/sign-out")
def sign_out() -> BaseResponse:
    """End the session."""
    session.clear()
    return redirect(url_for("dashboard.sign_in"))


@bp.get("")
@bp.get("/")
def overview() -> str:
    """Counts by status, callback miss rate and lag per model, work due."""
    store = context.store()
    now = time.time()
    counts = store.count_jobs_by_status()
    data = store.metrics(now, LAG_BUCKETS)
    lags = {row["model"]: row for row in store.callback_lag_by_model()}
    models = miss_rate(data["jobs_finished"])
    return render_template(
        "dashboard/overview.html",
        statuses=[(status, counts.get(status, 0)) for status in STATUSES],
        total=sum(counts.values()),
        models=sorted(models.items()),
        lags=lags,
        due=data["due"],
        callbacks=sorted(data["callbacks"].items()),
        downloads=data["downloads"],
        download_bytes=data["download_bytes"],
        oldest=store.oldest_work(now),
    )


@bp.get("/jobs")
def jobs() -> str:
    """Jobs newest first, filtered by status, a page at a time."""
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        status = None
    before_text = request.args.get("before", "")
    before = int(before_text) if before_text.isascii() and before_text.isdigit() else None
    if before is not None and before > 2**63 - 1:
        before = None
    store = context.store()
    rows = store.list_jobs(status, PAGE + 1, before)
    page, more = rows[:PAGE], len(rows) > PAGE
    outputs = store.outputs(row["id"] for row in page)
    return render_template(
        "dashboard/jobs.html",
        jobs=page,
        outputs=outputs,
        status=status,
        statuses=STATUSES,
        older=page[-1]["seq"] if more else None,
    )


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> str:
    """One job: fields, playable videos, stored callbacks, notification attempts."""
    store = context.store()
    row = store.job(job_id)
    if row is None:
        abort(404, f"No job {job_id}.")
    callbacks = [_event_view(event) for event in store.list_events(job_id=job_id, limit=200)]
    notification = store.notifications([job_id]).get(job_id)
    return render_template(
        "dashboard/job.html",
        job=row,
        params=json.dumps(json.loads(row["params"]), indent=2, sort_keys=True),
        outputs=store.outputs([job_id])[job_id],
        terminal=row["status"] in TERMINAL,
        callbacks=callbacks,
        notification=notification,
        attempts=store.notification_attempts(job_id) if notification else [],
    )


@bp.get("/callbacks")
def callbacks() -> str:
    """Stored callbacks newest first, by verdict: which were refused, and why."""
    verdict = request.args.get("verdict") or None
    rows = context.store().list_events(verdict=verdict, limit=100)
    return render_template(
        "dashboard/callbacks.html",
        callbacks=[_event_view(event) for event in rows],
        verdict=verdict,
        verdicts=("applied", "unchanged", "waiting", "ignored", "mismatch", "rejected", "error"),
    )


def _event_view(event: dict[str, Any]) -> dict[str, Any]:
    body = bytes(event["body"]).decode("utf-8", "replace")
    try:  # pretty-printed when it is JSON the service would read; else shown as it came
        body = json.dumps(strict_json.loads(bytes(event["body"])), indent=2, sort_keys=True)
    except strict_json.JSONRefused:
        pass
    return {
        **event,
        "body": body,
        "headers": json.dumps(json.loads(event["headers"]), indent=2, sort_keys=True),
        "url": redact(event["url"]) if event["url"] else None,
    }


@bp.post("/events/<int(max=9223372036854775807):event_id>/replay")
def replay(event_id: int) -> BaseResponse:
    """Run a stored callback through the state machine again."""
    try:
        verdict = events.replay(context.store(), event_id, time.time())
    except LookupError:
        abort(404, f"No stored callback {event_id}.")
    flash(f"Callback {event_id} replayed: {verdict}.")
    return redirect(_next_page(url_for("dashboard.callbacks")))


@bp.get("/jobs/<job_id>/videos/<int(max=9223372036854775807):index>")
def video(job_id: str, index: int) -> BaseResponse:
    """A downloaded video for the page's <video> element (Range, or a pre-signed redirect)."""
    store = context.store()
    row = store.job(job_id)
    output = store.output(job_id, index) if row is not None else None
    if row is None or output is None or row["status"] != COMPLETED:
        abort(404)
    if output["status"] != "downloaded":
        abort(409, f"Video {index} is {output['status']}, not downloaded yet.")
    try:
        return media.send_video(context.media(), job_id, index, etag=output["sha256"])
    except media.MediaMissing:
        abort(409, f"Video {index} was downloaded but is missing from storage.")
