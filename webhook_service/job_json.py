"""The job as clients see it: the contract's job JSON, built from store rows.

One builder for every place a job leaves the service: the API, the dashboard and
the body of its outbound notification.  Whatever a client or upstream once sent,
the result is strict JSON: non-finite numbers become null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def iso(value: float | None) -> str | None:
    """Unix seconds as ISO-8601 UTC with milliseconds, or None."""
    if value is None:
        return None
    moment = datetime.fromtimestamp(value, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _no_constant(name: str) -> None:
    """Read a stored ``NaN``/``Infinity`` (written before values were checked) as null."""
    return None


def notification_json(notification: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The job JSON's ``notification`` member."""
    if notification is None:
        return None
    return {
        "status": notification["status"],
        "attempts": notification["sent"],
        "last_status": notification["last_status"],
        "last_error": notification["last_error"],
    }


def job_json(
    job: Mapping[str, Any],
    outputs: Sequence[Mapping[str, Any]],
    notification: Mapping[str, Any] | None,
    settled: bool,
) -> dict[str, Any]:
    """Return the contract's job JSON."""
    return {
        "id": job["id"],
        "upstream_id": job["upstream_id"],
        "status": job["status"],
        "model": job["model"],
        "prompt": job["prompt"],
        "params": json.loads(job["params"], parse_constant=_no_constant),
        "error": job["error"],
        "generation_id": job["generation_id"],
        "cost": _finite(job["cost"]),
        "completion_source": job["completion_source"],
        "created_at": iso(job["created_at"]),
        "updated_at": iso(job["updated_at"]),
        "finished_at": iso(job["finished_at"]),
        "outputs": [
            {
                "index": output["idx"],
                "status": output["status"],
                "bytes": output["bytes"],
                "sha256": output["sha256"],
                "error": output["error"],
                "url": f"/api/jobs/{job['id']}/videos/{output['idx']}",
            }
            for output in outputs
        ],
        "settled": settled,
        "notify_url": job["notify_url"],
        "notification": notification_json(notification),
    }
