"""GET /metrics: Prometheus text exposition, read from the database at scrape time.

Nothing is counted in process memory: every value is a query of the shared
database, so each gunicorn worker (and each web machine) answers the same numbers
and a restart loses nothing.  Counters are monotonic because the rows they count
only ever gain a final state (a stored event, a finished job, a downloaded output,
an attempt made).  Callbacks refused before storing (401, 413, 503) leave no row
and are not counted here; the logs carry one line for each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from .. import context
from ..observability import LAG_BUCKETS
from ..store import Store
from .auth import require_bearer

bp = Blueprint("metrics", __name__)

PREFIX = "webhook_service_"
VERDICTS = ("applied", "unchanged", "waiting", "ignored", "mismatch", "rejected", "error")


class StoreCollector(Collector):
    """Every series, computed from one `Store.metrics` read."""

    def __init__(self, store: Store, now: float) -> None:
        self.store = store
        self.now = now

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families."""
        data: dict[str, Any] = self.store.metrics(self.now, LAG_BUCKETS)
        callbacks = CounterMetricFamily(
            PREFIX + "callbacks",
            "Callbacks stored, by the verdict they got.",
            labels=["verdict"],
        )
        for verdict, count in sorted({**dict.fromkeys(VERDICTS, 0), **data["callbacks"]}.items()):
            callbacks.add_metric([verdict], count)
        yield callbacks

        finished = CounterMetricFamily(
            PREFIX + "jobs_finished",
            "Jobs that reached a terminal status, by model, status and the road that "
            "ended them (callback, poll, or submit when no upstream answer did).",
            labels=["model", "status", "source"],
        )
        for row in data["jobs_finished"]:
            finished.add_metric([row["model"], row["status"], row["source"]], row["count"])
        yield finished

        lag = data["lag"]
        buckets = [
            (str(bound), count) for bound, count in zip(LAG_BUCKETS, lag["buckets"], strict=True)
        ]
        yield HistogramMetricFamily(
            PREFIX + "callback_lag_seconds",
            "Seconds from the event's created_at upstream to its receipt here.",
            buckets=[*buckets, ("+Inf", lag["count"])],
            sum_value=lag["sum"],
        )

        downloads = CounterMetricFamily(
            PREFIX + "downloads",
            "Outputs downloaded and verified, given up (failed), and failed attempts (error).",
            labels=["outcome"],
        )
        for outcome, count in data["downloads"].items():
            downloads.add_metric([outcome], count)
        yield downloads
        yield CounterMetricFamily(
            PREFIX + "download_bytes",
            "Bytes of every downloaded and verified output.",
            value=data["download_bytes"],
        )

        notifications = CounterMetricFamily(
            PREFIX + "notifications",
            "Notification attempts: delivered (a 2xx answer) or failed.",
            labels=["outcome"],
        )
        for outcome, count in data["notifications"].items():
            notifications.add_metric([outcome], count)
        yield notifications

        for name, what in (
            ("polls", "Jobs whose poll is due and not claimed by a worker."),
            ("downloads", "Outputs whose download is due and not claimed by a worker."),
            ("notifications", "Notifications whose next attempt is due and not claimed."),
        ):
            yield GaugeMetricFamily(PREFIX + f"due_{name}", what, value=data["due"][name])


def exposition(store: Store, now: float) -> bytes:
    """Return the text exposition of every series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, now))
    return generate_latest(registry)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus scrape endpoint (bearer token as for /api)."""
    require_bearer()
    body = exposition(context.store(), time.time())
    return Response(
        body, content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "private, no-store"}
    )
