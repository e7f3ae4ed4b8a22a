"""The state machine as a pure function."""

from webhook_service.jobs import Observation, transition

NOW = 1_000.0


def job(**overrides):
    row = {
        "id": "vj_1",
        "status": "pending",
        "upstream_id": "job-1",
        "generation_id": None,
        "cost": None,
        "outputs_known": 0,
    }
    return row | overrides


def seen(status, source="callback", **fields):
    return Observation(status=status, source=source, **fields)


def test_completed_with_urls_creates_one_output_per_url_and_records_the_channel():
    change = transition(job(), seen("completed", output_count=2, cost=0.5), NOW)
    assert change.new_outputs == 2
    assert change.changes["status"] == "completed"
    assert change.changes["completion_source"] == "callback"
    assert change.changes["finished_at"] == NOW
    assert change.changes["cost"] == 0.5
    assert change.changes["next_poll_at"] is None


def test_completed_without_urls_schedules_a_poll_to_learn_them():
    change = transition(job(), seen("completed"), NOW)
    assert change.new_outputs == 0
    assert change.changes["next_poll_at"] == NOW
    later = transition(job(status="completed"), seen("completed", "poll", output_count=1), NOW)
    assert later.new_outputs == 1 and "status" not in later.changes


def test_terminal_statuses_are_sticky():
    assert transition(job(status="failed"), seen("completed", output_count=1), NOW) is None
    assert transition(job(status="completed", outputs_known=1), seen("failed"), NOW) is None
    assert transition(job(status="submit_failed"), seen("completed", output_count=1), NOW) is None


def test_status_moves_forward_only():
    assert transition(job(status="in_progress"), seen("pending", "poll"), NOW) is None
    change = transition(job(status="pending"), seen("in_progress", "poll"), NOW)
    assert change.changes["status"] == "in_progress"


def test_unknown_upstream_status_changes_nothing():
    assert transition(job(), seen("queued_for_gpu", "poll"), NOW) is None


def test_failure_keeps_the_upstream_error():
    change = transition(job(), seen("failed", error="content policy"), NOW)
    assert change.changes["error"] == "content policy"
    expired = transition(job(), seen("expired"), NOW)
    assert "expired" in expired.changes["error"]


def test_a_callback_reveals_the_upstream_id_of_a_submitting_job():
    change = transition(
        job(status="submitting", upstream_id=None),
        seen("completed", upstream_id="job-9", output_count=1),
        NOW,
    )
    assert change.changes["upstream_id"] == "job-9"
    assert change.changes["submit_outcome"] == "accepted"
    assert change.changes["status"] == "completed"


def test_observation_reads_job_objects_defensively():
    parsed = Observation.from_upstream(
        {
            "id": "job-1",
            "status": "completed",
            "unsigned_urls": ["a", "b"],
            "usage": {"cost": None},
            "error": {"message": "x"},
        },
        "poll",
    )
    assert parsed.output_count == 2 and parsed.cost is None and parsed.error == "x"
    assert Observation.from_upstream({"status": "pending", "usage": "odd"}, "poll").cost is None
