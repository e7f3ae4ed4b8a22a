"""Logs: text or JSON lines, httpx quiet, one line per state change and refused callback,
and never a callback token, in our lines or in gunicorn's access log."""

from __future__ import annotations

import datetime
import io
import json
import logging
from types import SimpleNamespace

import pytest
from conftest import AUTH
from gunicorn.config import Config
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook_service import logs

TOKEN_CHARS = st.characters(categories=["Lu", "Ll", "Nd"], max_codepoint=127) | st.sampled_from(
    "-_"
)
TOKENS = st.text(TOKEN_CHARS, min_size=16, max_size=64)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in logs.NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


def our_handler() -> logging.Handler:
    return next(h for h in logging.getLogger().handlers if isinstance(h, logs._Handler))


@given(token=TOKENS, query=st.sampled_from(["", "?a=1", "/", " HTTP/1.1"]))
def test_a_callback_token_never_survives_redaction(token, query):
    line = f'POST /webhooks/modelgates/{token}{query} "http://x/webhooks/modelgates/{token}"'
    redacted = logs.redact(line)
    assert token not in redacted
    assert redacted.count("/webhooks/modelgates/…") == 2


def test_json_format_writes_one_object_per_line_with_extra_fields(restore_logging):
    logs.configure("INFO", "json")
    stream = io.StringIO()
    our_handler().setStream(stream)
    log = logging.getLogger("webhook_service.test")
    log.info("first\nsecond /webhooks/modelgates/abcdefghijklmnop", extra={"job_id": "vj_1"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "webhook_service.test"
    assert first["message"] == "first\nsecond /webhooks/modelgates/…"
    assert first["job_id"] == "vj_1"
    assert "ValueError: boom" in second["exception"]


def test_text_format_keeps_each_record_on_one_line(restore_logging):
    logs.configure("WARNING", "text")
    stream = io.StringIO()
    our_handler().setStream(stream)
    logging.getLogger("webhook_service.test").warning("a\nb")
    logging.getLogger("webhook_service.test").info("not shown at WARNING")
    assert stream.getvalue().count("\n") == 1 and "a\\nb" in stream.getvalue()


def test_httpx_request_lines_are_off_unless_debugging(restore_logging):
    logs.configure("INFO", "text")
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert not logging.getLogger("httpcore").isEnabledFor(logging.INFO)
    logs.configure("DEBUG", "text")
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)


def test_configuring_twice_keeps_one_handler(restore_logging):
    logs.configure("INFO", "text")
    logs.configure("INFO", "json")
    assert sum(isinstance(h, logs._Handler) for h in logging.getLogger().handlers) == 1


def _detach_handlers(log: logging.Logger) -> None:
    """Close a gunicorn logger's handlers and take them off the process-wide logger."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


ACCESS_FORMATS = st.sampled_from(
    [
        Config().access_log_format,
        "%(r)s %(U)s?%(q)s %({referer}i)s %({x-original-uri}i)s %({raw_uri}e)s",
        "%(h)s %(s)s %(b)s %(M)s %(a)s %(U)s",
    ]
)


@settings(max_examples=40, deadline=None)
@given(token=TOKENS, access_format=ACCESS_FORMATS)
def test_gunicorn_access_log_redacts_the_callback_token(tmp_path_factory, token, access_format):
    path = tmp_path_factory.mktemp("access") / "access.log"
    config = Config()
    config.set("accesslog", str(path))
    config.set("access_log_format", access_format)
    logger = logs.GunicornLogger(config)
    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append  # type: ignore[method-assign]
    logger.access_log.addHandler(keep)
    uri = f"/webhooks/modelgates/{token}"
    environ = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": uri,
        "PATH_INFO": uri,
        "QUERY_STRING": f"next={uri}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_REFERER": f"https://a.example{uri}",
    }
    response = SimpleNamespace(status="204 No Content", sent=0, headers=[])
    request = SimpleNamespace(
        headers=[("Host", "x"), ("Referer", f"https://a.example{uri}"), ("X-Original-URI", uri)]
    )
    try:
        logger.access(response, request, environ, datetime.timedelta(seconds=0.01))
    finally:
        _detach_handlers(logger.access_log)
    line = path.read_text()
    assert token not in line
    assert "/webhooks/modelgates/…" in line
    # The record's args are the atoms themselves: a handler may print them whole.
    assert [record.args for record in records]
    assert token not in repr([record.args for record in records])


@st.composite
def callback_paths(draw: st.DrawFn, token: str) -> str:
    """The callback path as a client might spell it: the router decodes all of these."""
    spelled = []
    for char in "/webhooks/modelgates/":
        if char == "/":
            slashes = draw(st.lists(st.sampled_from(["/", "%2F", "%2f"]), min_size=1, max_size=3))
            spelled.append("".join(slashes))
        elif draw(st.booleans()):
            code = f"%{ord(char):02x}"
            spelled.append(code.upper() if draw(st.booleans()) else code)
        else:
            spelled.append(char.upper() if draw(st.booleans()) else char)
    return "".join(spelled) + token


@settings(max_examples=200)
@given(data=st.data(), token=TOKENS)
def test_redact_finds_the_token_however_the_path_is_spelled(data, token):
    path = data.draw(callback_paths(token))
    redacted = logs.redact(f"POST {path}?x=1 HTTP/1.1")
    assert token not in redacted
    assert redacted.endswith("/webhooks/modelgates/…?x=1 HTTP/1.1")


@pytest.mark.parametrize(
    "run", ["/", "%2f", "%2F", "/%2F", "//webhooks//modelgate", "%2fwebhooks%2f"], ids=repr
)
def test_redact_takes_linear_time_on_long_runs_of_slashes(run):
    # Quadratic matching would take hours here: the suite's per-test timeout fails it.
    text = run * (600_000 // len(run))
    assert logs.redact(text) == text
    redacted = logs.redact(f"{text} /webhooks/modelgates/Tq8ZkP2mW7xV4nB9")
    assert redacted == f"{text} /webhooks/modelgates/…"


def test_gunicorn_error_log_redacts_the_callback_token(tmp_path):
    token = "Hq7ZkP2mW7xV4nB9rL3sJ6yT"
    path = tmp_path / "error.log"
    config = Config()
    config.set("errorlog", str(path))
    logger = logs.GunicornLogger(config)
    try:
        logger.error("Error handling request %s %s", "POST", f"/webhooks/modelgates/{token}")
        try:
            raise ValueError(f"bad /webhooks/modelgates%2F{token}")
        except ValueError:
            logger.exception("Error handling request /webhooks/modelgates/%s", token)
    finally:
        _detach_handlers(logger.error_log)
    text = path.read_text()
    assert text.count("Error handling request") == 2
    assert "ValueError: bad /webhooks/modelgates/…" in text
    assert token not in text


def test_gunicorn_error_log_with_mismatched_arguments_still_does_not_raise(capsys):
    logger = logs.GunicornLogger(Config())
    logger.error("Error handling request %s %s", "/webhooks/modelgates/tok")  # one short
    assert "not enough arguments" in capsys.readouterr().err  # reported by the handler


def test_a_refused_callback_logs_one_line_with_its_reason_and_no_token(hooks, caplog):
    token = "Tq8ZkP2mW7xV4nB9rL3sJ6yH"
    caplog.set_level(logging.INFO)
    answer = hooks.post(f"/webhooks/modelgates/{token}", data=b"{}")
    assert answer.status_code == 401
    refused = [r for r in caplog.records if r.name == "webhook_service.callbacks"]
    assert len(refused) == 1
    line = logs.TextFormatter().format(refused[0])
    assert "callback refused: 401 invalid_signature" in line
    assert "missing signature header" in line
    assert (
        token not in line
        and token not in json.loads(logs.JsonFormatter().format(refused[0]))["path"]
    )


def test_each_job_state_change_logs_one_line(client, caplog):
    caplog.set_level(logging.INFO, logger="webhook_service.jobs")
    body = {"model": "google/veo-3.1", "prompt": "waves", "duration": 4, "resolution": "720p"}
    job = client.post("/api/jobs", json=body, headers=AUTH).get_json()
    changes = [r for r in caplog.records if r.name == "webhook_service.jobs"]
    assert [r.getMessage() for r in changes] == [
        f"job {job['id']}: submitting -> pending (by submit)"
    ]
    assert changes[0].job_id == job["id"] and changes[0].status == "pending"
