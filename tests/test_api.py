"""The REST API against the sandbox upstream over loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from conftest import API_TOKEN, AUTH

from webhook_service import create_app

VALID = {
    "model": "google/veo-3.1",
    "prompt": "a lighthouse at dusk",
    "duration": 8,
    "resolution": "720p",
    "aspect_ratio": "16:9",
}


def submits(sandbox) -> int:
    return sandbox.stats()["submits"]


def job_count(store) -> int:
    return sum(store.count_jobs_by_status().values())


def assert_nothing_happened(store, sandbox):
    assert job_count(store) == 0
    assert submits(sandbox) == 0


def test_healthz_answers_without_auth(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_healthz_is_503_when_the_database_is_gone(env, tmp_path):
    app = create_app({**env, "TESTING": True})
    db = tmp_path / "db.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.mkdir()
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"


def test_submit_records_the_job_and_sends_a_per_job_https_callback(client, store, sandbox):
    response = client.post("/api/jobs", json=VALID, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert response.headers["Location"] == f"/api/jobs/{job['id']}"
    assert job["status"] == "pending" and job["upstream_id"].startswith("job-")
    assert job["params"] == VALID and job["model"] == VALID["model"]
    assert job["outputs"] == [] and job["finished_at"] is None
    row = store.job(job["id"])
    upstream = sandbox.job(job["upstream_id"])
    assert (
        upstream["callback_url"]
        == f"http://127.0.0.1:9/webhooks/modelgates/{row['callback_token']}"
    )
    assert client.get(f"/api/jobs/{job['id']}", headers=AUTH).get_json() == job


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {API_TOKEN}"},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_unknown_token_is_401_and_nothing_is_stored(client, store, sandbox, headers):
    response = client.post("/api/jobs", json=VALID, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/api/jobs", headers=headers).status_code == 401
    assert_nothing_happened(store, sandbox)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"])
def test_malformed_json_or_a_non_object_is_400(client, store, sandbox, body):
    response = client.post("/api/jobs", data=body, headers=AUTH, content_type="application/json")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "bad_request" and error["message"]
    assert_nothing_happened(store, sandbox)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"colour": "red"}, "colour"),
        ({"callback_url": "https://evil.example/hook"}, "callback_url"),
        ({"duration": "8"}, "duration"),
        ({"duration": 8.0}, "duration"),
        ({"duration": True}, "duration"),
        ({"seed": "42"}, "seed"),
        ({"generate_audio": "true"}, "generate_audio"),
        ({"prompt": 5}, "prompt"),
        ({"aspect_ratio": "5:4"}, "aspect_ratio"),
        ({"resolution": "8000"}, "resolution"),
        ({"size": "1280*720"}, "size"),
        ({"model": None}, "model"),
        (
            {
                "frame_images": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x/a.png"},
                        "frame_type": "middle_frame",
                    }
                ]
            },
            "frame_images.0.frame_type",
        ),
        (
            {
                "frame_images": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "ftp://x/a.png"},
                        "frame_type": "first_frame",
                    }
                ]
            },
            "frame_images.0.image_url.url",
        ),
        (
            {"input_references": [{"type": "image_url", "video_url": {"url": "https://x/v"}}]},
            "input_references.0._schema",
        ),
        ({"provider": {"options": "fast"}}, "provider.options"),
    ],
)
def test_field_errors_are_422_with_details_per_field(client, store, sandbox, change, field):
    response = client.post("/api/jobs", json={**VALID, **change}, headers=AUTH)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["details"], error["details"]
    assert_nothing_happened(store, sandbox)


def test_prompt_is_required_unless_frame_images_are_given(client, store, sandbox):
    body = {key: value for key, value in VALID.items() if key != "prompt"}
    response = client.post("/api/jobs", json=body, headers=AUTH)
    assert response.status_code == 422
    assert "prompt" in response.get_json()["error"]["details"]
    assert_nothing_happened(store, sandbox)
    frames = [
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
            "frame_type": "first_frame",
        }
    ]
    response = client.post("/api/jobs", json={**body, "frame_images": frames}, headers=AUTH)
    assert response.status_code == 202, response.get_json()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"duration": 5}, "duration"),
        ({"resolution": "4K"}, "resolution"),
        ({"aspect_ratio": "1:1"}, "aspect_ratio"),
        ({"size": "640x480"}, "size"),
        (
            {
                "model": "sandbox/tiny",
                "duration": 4,
                "resolution": "480p",
                "frame_images": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x/a.png"},
                        "frame_type": "last_frame",
                    }
                ],
            },
            "frame_images",
        ),
        (
            {"model": "sandbox/tiny", "duration": 4, "resolution": "480p", "generate_audio": False},
            "generate_audio",
        ),
        ({"model": "sandbox/tiny", "duration": 4, "resolution": "480p", "seed": 1}, "seed"),
    ],
)
def test_values_the_model_does_not_support_are_422_before_any_submit(
    client, store, sandbox, change, field
):
    response = client.post("/api/jobs", json={**VALID, **change}, headers=AUTH)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["error"]["details"]
    assert_nothing_happened(store, sandbox)


def test_unknown_model_is_422_unknown_model(client, store, sandbox):
    response = client.post("/api/jobs", json={**VALID, "model": "acme/nothing"}, headers=AUTH)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "unknown_model"
    assert_nothing_happened(store, sandbox)


def test_body_over_50_mib_is_413(client, store, sandbox):
    huge = json.dumps({**VALID, "prompt": "x" * (50 * 1024 * 1024 + 1)})
    response = client.post("/api/jobs", data=huge, headers=AUTH, content_type="application/json")
    assert response.status_code == 413
    assert_nothing_happened(store, sandbox)


def test_same_idempotency_key_and_body_returns_the_job_without_resubmitting(client, sandbox):
    headers = {**AUTH, "Idempotency-Key": "order-17"}
    first = client.post("/api/jobs", json=VALID, headers=headers)
    reordered = dict(reversed(list(VALID.items())))
    second = client.post("/api/jobs", json=reordered, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert second.get_json()["id"] == first.get_json()["id"]
    assert second.headers["Location"] == first.headers["Location"]
    assert submits(sandbox) == 1


def test_idempotency_keys_are_scoped_to_the_api_token(client, sandbox):
    client.post("/api/jobs", json=VALID, headers={**AUTH, "Idempotency-Key": "k"})
    other = {"Authorization": "Bearer second-token", "Idempotency-Key": "k"}
    assert client.post("/api/jobs", json=VALID, headers=other).status_code == 202
    assert submits(sandbox) == 2


def test_same_idempotency_key_with_another_body_is_409(client, store, sandbox):
    headers = {**AUTH, "Idempotency-Key": "order-18"}
    first = client.post("/api/jobs", json=VALID, headers=headers).get_json()
    response = client.post("/api/jobs", json={**VALID, "duration": 4}, headers=headers)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "idempotency_key_reused"
    assert job_count(store) == 1 and submits(sandbox) == 1
    assert store.job(first["id"])["params"] == json.dumps(VALID, sort_keys=True)


def test_idempotency_key_still_in_flight_is_409(app, store, sandbox):
    sandbox.add_fault(endpoint="submit", status=202, hang_seconds=1.5)
    headers = {**AUTH, "Idempotency-Key": "slow"}
    answers = {}

    def first():
        answers["first"] = app.test_client().post("/api/jobs", json=VALID, headers=headers)

    thread = threading.Thread(target=first)
    thread.start()
    deadline = threading.Event()
    for _ in range(100):
        if job_count(store):
            break
        deadline.wait(0.02)
    second = app.test_client().post("/api/jobs", json=VALID, headers=headers)
    thread.join(10)
    assert second.status_code == 409
    assert second.get_json()["error"]["code"] == "idempotency_key_in_progress"
    assert answers["first"].status_code == 202
    assert submits(sandbox) == 1


@pytest.mark.parametrize(
    "status, answer, code",
    [
        (400, 422, "upstream_rejected"),
        (401, 502, "upstream_auth_failed"),
        (402, 402, "payment_required"),
        (403, 502, "upstream_refused"),
        (404, 422, "unknown_model"),
        (413, 413, "payload_too_large"),
    ],
)
def test_upstream_refusals_end_the_job_as_submit_failed(
    client, store, sandbox, status, answer, code
):
    sandbox.add_fault(endpoint="submit", status=status)
    response = client.post("/api/jobs", json=VALID, headers=AUTH)
    assert response.status_code == answer
    error = response.get_json()["error"]
    assert error["code"] == code
    job = store.job(error["details"]["job_id"])
    assert job["status"] == "submit_failed" and job["finished_at"] is not None
    assert str(status) in job["error"]
    assert submits(sandbox) == 1


def test_upstream_429_is_503_with_retry_after(client, store, sandbox):
    sandbox.add_fault(endpoint="submit", status=429, retry_after=17)
    response = client.post("/api/jobs", json=VALID, headers=AUTH)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "17"
    job = store.job(response.get_json()["error"]["details"]["job_id"])
    assert job["status"] == "submit_failed"
    assert submits(sandbox) == 1


def test_upstream_500_leaves_the_job_submitting_and_is_never_resubmitted(client, store, sandbox):
    sandbox.add_fault(endpoint="submit", status=500, after_create=True)
    headers = {**AUTH, "Idempotency-Key": "ambiguous"}
    response = client.post("/api/jobs", json=VALID, headers=headers)
    assert response.status_code == 502
    error = response.get_json()["error"]
    job = store.job(error["details"]["job_id"])
    assert job["status"] == "submitting" and job["submit_outcome"] == "ambiguous"
    assert "500" in job["error"]
    again = client.post("/api/jobs", json=VALID, headers=headers)
    assert again.status_code == 200 and again.get_json()["id"] == job["id"]
    assert submits(sandbox) == 1


def test_upstream_timeout_is_502_and_the_job_stays_submitting(env, sandbox):
    app = create_app({**env, "MODELGATES_TIMEOUT_SECONDS": "0.5", "TESTING": True})
    sandbox.add_fault(endpoint="submit", status=202, hang_seconds=2)
    response = app.test_client().post("/api/jobs", json=VALID, headers=AUTH)
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "upstream_timeout"
    job_id = response.get_json()["error"]["details"]["job_id"]
    job = app.test_client().get(f"/api/jobs/{job_id}", headers=AUTH).get_json()
    assert job["status"] == "submitting" and job["upstream_id"] is None
    assert submits(sandbox) == 1


def test_connection_refused_is_502_and_recorded(env, tmp_path):
    app = create_app({**env, "MODELGATES_BASE_URL": "http://127.0.0.1:9/api/v1", "TESTING": True})
    response = app.test_client().post("/api/jobs", json=VALID, headers=AUTH)
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "upstream_unreachable"
    job = app.test_client().get(f"/api/jobs/{error['details']['job_id']}", headers=AUTH).get_json()
    assert job["status"] == "submit_failed" and "ConnectError" in job["error"]


@pytest.mark.parametrize("missing", ["MODELGATES_API_KEY", "PUBLIC_BASE_URL"])
def test_submit_is_503_when_not_configured(env, sandbox, missing):
    app = create_app({**{k: v for k, v in env.items() if k != missing}, "TESTING": True})
    response = app.test_client().post("/api/jobs", json=VALID, headers=AUTH)
    assert response.status_code == 503
    assert missing in response.get_json()["error"]["message"]
    assert submits(sandbox) == 0


def test_no_api_tokens_configured_means_401_for_everyone(env):
    app = create_app(
        {**{k: v for k, v in env.items() if k != "SERVICE_API_TOKENS"}, "TESTING": True}
    )
    assert app.test_client().get("/api/jobs", headers=AUTH).status_code == 401


def test_list_jobs_pages_newest_first_with_a_cursor_and_filters(client):
    ids = [
        client.post("/api/jobs", json={**VALID, "prompt": f"shot {n}"}, headers=AUTH).get_json()[
            "id"
        ]
        for n in range(5)
    ]
    first = client.get("/api/jobs?limit=2", headers=AUTH).get_json()
    assert [job["id"] for job in first["jobs"]] == ids[::-1][:2]
    second = client.get(f"/api/jobs?limit=2&cursor={first['next_cursor']}", headers=AUTH).get_json()
    third = client.get(f"/api/jobs?limit=2&cursor={second['next_cursor']}", headers=AUTH).get_json()
    assert [job["id"] for job in second["jobs"] + third["jobs"]] == ids[::-1][2:]
    assert third["next_cursor"] is None
    assert len(client.get("/api/jobs?status=pending", headers=AUTH).get_json()["jobs"]) == 5
    assert client.get("/api/jobs?status=completed", headers=AUTH).get_json()["jobs"] == []


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=ten", "cursor=!!", "status=done"])
def test_list_jobs_rejects_bad_parameters_with_422(client, query):
    response = client.get(f"/api/jobs?{query}", headers=AUTH)
    assert response.status_code == 422


def test_unknown_job_and_video_are_404(client):
    assert client.get("/api/jobs/vj_missing", headers=AUTH).status_code == 404
    assert client.get("/api/jobs/vj_missing/videos/0", headers=AUTH).status_code == 404


def test_video_of_an_unfinished_job_is_409(client):
    job = client.post("/api/jobs", json=VALID, headers=AUTH).get_json()
    response = client.get(f"/api/jobs/{job['id']}/videos/0", headers=AUTH)
    assert response.status_code == 409


def test_models_lists_upstream_data(client):
    response = client.get("/api/models", headers=AUTH)
    assert response.status_code == 200
    assert {"google/veo-3.1", "sandbox/tiny"} <= {m["id"] for m in response.get_json()["data"]}


def test_unknown_routes_answer_the_json_error_shape(client):
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert set(response.get_json()["error"]) == {"code", "message", "details"}


def test_nan_and_infinity_are_not_json(client, store, sandbox):
    body = json.dumps(VALID)[:-1] + ', "seed": NaN}'
    response = client.post("/api/jobs", data=body, headers=AUTH, content_type="application/json")
    assert response.status_code == 400
    assert_nothing_happened(store, sandbox)


def test_out_of_range_cursor_and_index_are_client_errors(client):
    job = client.post("/api/jobs", json=VALID, headers=AUTH).get_json()
    huge = base64.urlsafe_b64encode(b"seq:99999999999999999999999").decode()
    assert client.get(f"/api/jobs?cursor={huge}", headers=AUTH).status_code == 422
    url = f"/api/jobs/{job['id']}/videos/99999999999999999999"
    assert client.get(url, headers=AUTH).status_code in (404, 409)


def test_every_api_path_needs_a_token_even_unknown_ones(client):
    assert client.get("/api/nope").status_code == 401
    assert client.delete("/api/jobs").status_code == 401
    assert client.get("/api/nope", headers=AUTH).status_code == 404


def _downloaded_video(store, media_dir, job_id="vj_video", data=b"\x00\x00\x00\x18ftypmp42" * 64):
    """A completed job whose output 0 is downloaded: the row and the file."""
    now = time.time()
    store.insert_job(
        {
            "id": job_id,
            "upstream_id": f"up-{job_id}",
            "callback_token": f"tok-{job_id}",
            "client": "c",
            "request_hash": "h",
            "status": "completed",
            "model": "google/veo-3.1",
            "prompt": "p",
            "params": {"model": "google/veo-3.1"},
            "created_at": now,
            "updated_at": now,
            "finished_at": now,
            "outputs_known": 1,
        }
    )
    store.create_outputs(job_id, 1, now)
    digest = hashlib.sha256(data).hexdigest()
    store.update_output(job_id, 0, {"status": "downloaded", "bytes": len(data), "sha256": digest})
    path = Path(media_dir) / job_id / "0.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"/api/jobs/{job_id}/videos/0", path, data, digest


def _never_shared(response) -> None:
    directives = {part.strip().lower() for part in response.headers["Cache-Control"].split(",")}
    assert "public" not in directives
    assert directives & {"private", "no-store"}


def test_every_video_answer_is_private_whole_ranged_revalidated_or_refused(client, store, env):
    url, _, data, digest = _downloaded_video(store, env["MEDIA_DIR"])
    whole = client.get(url, headers=AUTH)
    assert whole.status_code == 200 and whole.data == data
    ranged = client.get(url, headers={**AUTH, "Range": "bytes=4-7"})
    assert ranged.status_code == 206 and ranged.data == b"ftyp"
    same = client.get(url, headers={**AUTH, "If-None-Match": f'"{digest}"'})
    assert same.status_code == 304
    past_the_end = client.get(url, headers={**AUTH, "Range": f"bytes={len(data) + 10}-"})
    assert past_the_end.status_code == 416
    assert past_the_end.headers["Content-Range"] == f"bytes */{len(data)}"
    missing_index = client.get(url[:-1] + "1", headers=AUTH)
    for response in (whole, ranged, same, past_the_end, missing_index):
        _never_shared(response)


def test_a_downloaded_video_missing_from_disk_is_409_output_missing(client, store, env, caplog):
    url, path, _, _ = _downloaded_video(store, env["MEDIA_DIR"])
    path.unlink()
    response = client.get(url, headers=AUTH)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "output_missing"
    assert error["details"] == {"job_id": "vj_video", "index": 0}
    _never_shared(response)
    assert "missing" in caplog.text


@pytest.mark.parametrize("index", ["9" * 5000, "99999999999999999999", "%EF%BC%91", "-1", "0x1"])
def test_a_video_index_no_job_has_is_404_never_500(client, store, env, index):
    url, _, _, _ = _downloaded_video(store, env["MEDIA_DIR"])
    response = client.get(url[: -len("0")] + index, headers=AUTH)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_rows_holding_non_finite_numbers_are_listed_as_strict_json(client, store):
    now = time.time()
    store.insert_job(
        {
            "id": "vj_old",
            "callback_token": "tok-old",
            "client": "c",
            "request_hash": "h",
            "status": "completed",
            "model": "m",
            "params": {"model": "m", "provider": {"options": {"x": {"y": float("inf")}}}},
            "cost": float("inf"),
            "created_at": now,
            "updated_at": now,
        }
    )

    def refuse(name):
        raise AssertionError(f"{name} in the answer")

    listed = json.loads(client.get("/api/jobs", headers=AUTH).data, parse_constant=refuse)
    (job,) = listed["jobs"]
    assert job["cost"] is None and job["params"]["provider"]["options"]["x"]["y"] is None


def test_a_401_says_which_scheme_to_use(client):
    response = client.get("/api/jobs")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
