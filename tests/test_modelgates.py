"""The ModelGates client against httpx.MockTransport (narrow cases)."""

import httpx
import pytest

from webhook_service.modelgates import (
    APIError,
    ModelGatesClient,
    RateLimited,
    RequestRefused,
    ServerError,
    TransportError,
    retry_delay,
)

BASE = "https://upstream.test/api/v1"


def envelope(status, message="nope", **metadata):
    return {
        "error": {"code": status, "message": message, "metadata": metadata or None},
        "user_id": None,
    }


class Upstream:
    """Scripted answers, and a record of every request."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request):
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def client_for(upstream, **kwargs):
    sleeps = []
    client = ModelGatesClient(
        BASE,
        "sk-secret",
        referer="https://videos.example",
        title="Example",
        transport=httpx.MockTransport(upstream),
        sleep=sleeps.append,
        **kwargs,
    )
    return client, sleeps


def test_submit_sends_key_and_attribution_headers():
    upstream = Upstream(httpx.Response(202, json={"id": "job-1", "status": "pending"}))
    client, _ = client_for(upstream)
    assert client.submit({"model": "m", "prompt": "p"})["id"] == "job-1"
    sent = upstream.requests[0]
    assert sent.headers["Authorization"] == "Bearer sk-secret"
    assert sent.headers["HTTP-Referer"] == "https://videos.example"
    assert sent.headers["X-OpenRouter-Title"] == "Example"
    assert "sk-secret" not in repr(client)


@pytest.mark.parametrize(
    "status, kind",
    [
        (400, RequestRefused),
        (401, RequestRefused),
        (402, RequestRefused),
        (404, RequestRefused),
        (413, RequestRefused),
        (429, RateLimited),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_error_envelopes_map_to_the_exception_tree_and_post_is_never_retried(status, kind):
    upstream = Upstream(
        httpx.Response(
            status, json=envelope(status, "why", error_type="x"), headers={"Retry-After": "2"}
        )
    )
    client, sleeps = client_for(upstream)
    with pytest.raises(kind) as caught:
        client.submit({"model": "m"})
    assert caught.value.status == status
    assert caught.value.message == "why"
    assert caught.value.metadata == {"error_type": "x"}
    assert caught.value.retry_after == 2
    assert len(upstream.requests) == 1 and sleeps == []


@pytest.mark.parametrize(
    "failure, sent",
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("reset"), True),
    ],
)
def test_transport_failures_say_whether_the_request_may_have_arrived(failure, sent):
    upstream = Upstream(failure)
    client, _ = client_for(upstream)
    with pytest.raises(TransportError) as caught:
        client.submit({"model": "m"})
    assert caught.value.sent is sent
    assert len(upstream.requests) == 1


def test_get_retries_5xx_and_429_with_backoff_and_retry_after():
    upstream = Upstream(
        httpx.Response(500, json=envelope(500)),
        httpx.Response(429, json=envelope(429), headers={"Retry-After": "1"}),
        httpx.Response(200, json={"id": "job-1", "status": "in_progress"}),
    )
    client, sleeps = client_for(upstream)
    assert client.get_job("job-1")["status"] == "in_progress"
    assert len(upstream.requests) == 3
    assert 0.25 <= sleeps[0] <= 0.5 and sleeps[1] == 1


def test_get_gives_up_after_the_retry_budget():
    upstream = Upstream(httpx.Response(502, text="bad gateway"))
    client, sleeps = client_for(upstream)
    with pytest.raises(ServerError):
        client.get_job("job-1")
    assert len(upstream.requests) == 3 and len(sleeps) == 2


def test_long_retry_after_goes_back_to_the_caller_instead_of_blocking():
    upstream = Upstream(httpx.Response(429, json=envelope(429), headers={"Retry-After": "60"}))
    client, sleeps = client_for(upstream)
    with pytest.raises(RateLimited) as caught:
        client.get_job("job-1")
    assert caught.value.retry_after == 60 and sleeps == []


def test_retry_policy_is_a_pure_function():
    fixed = lambda: 0.5  # noqa: E731
    assert retry_delay("POST", 1, ServerError(500, "x")) is None
    assert retry_delay("POST", 1, TransportError("refused", sent=False)) is None
    assert retry_delay("GET", 1, RequestRefused(404, "x")) is None
    assert retry_delay("GET", 1, TransportError("reset", sent=True), fixed) == 0.375
    assert retry_delay("GET", 2, ServerError(500, "x"), fixed) == 0.75
    assert retry_delay("GET", 1, RateLimited(429, "x", retry_after=7)) == 7
    assert retry_delay("GET", 3, ServerError(500, "x")) is None


def test_upstream_ids_are_quoted_into_one_path_segment():
    upstream = Upstream(httpx.Response(200, json={"id": "x", "status": "pending"}))
    client, _ = client_for(upstream)
    client.get_job("../models")
    assert upstream.requests[0].url.raw_path == b"/api/v1/videos/..%2Fmodels"


def test_content_follows_same_origin_redirects_only():
    upstream = Upstream(
        httpx.Response(302, headers={"Location": "/api/v1/blobs/1"}),
        httpx.Response(200, content=b"video"),
    )
    client, _ = client_for(upstream)
    with client.stream_content("job-1", 0) as response:
        assert response.read() == b"video"
    assert str(upstream.requests[1].url) == "https://upstream.test/api/v1/blobs/1"

    elsewhere = Upstream(httpx.Response(302, headers={"Location": "https://cdn.test/v.mp4"}))
    client, _ = client_for(elsewhere)
    with pytest.raises(APIError, match="another origin"):
        with client.stream_content("job-1", 0):
            pass
    assert len(elsewhere.requests) == 1


def test_content_resume_sends_a_range_and_errors_raise():
    upstream = Upstream(
        httpx.Response(206, content=b"deo"), httpx.Response(404, json=envelope(404))
    )
    client, _ = client_for(upstream)
    with client.stream_content("job-1", 2, start=2) as response:
        assert response.status_code == 206
    assert upstream.requests[0].headers["Range"] == "bytes=2-"
    assert upstream.requests[0].url.params["index"] == "2"
    with pytest.raises(RequestRefused):
        with client.stream_content("job-1", 0):
            pass


def test_models_without_a_data_array_are_an_upstream_error():
    client, _ = client_for(Upstream(httpx.Response(200, json={"models": []})))
    with pytest.raises(ServerError):
        client.list_models()
