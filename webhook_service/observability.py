"""Pure helpers behind the metrics, the dashboard and the status command.

`callback_lag` measures how late a callback came: from the ``created_at`` upstream
wrote into the event to the moment we received it.  `miss_rate` is the share of a
model's finished jobs that only polling finished: the callbacks ModelGates missed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

LAG_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
"""Upper bounds (seconds) of the callback lag histogram; ``+Inf`` is implied."""


def callback_lag(created_at: Any, received_at: float) -> float | None:
    """Seconds from an event's ``created_at`` (as parsed) to ``received_at``; None when unknown."""
    if not isinstance(created_at, str):
        return None
    try:
        moment = datetime.fromisoformat(created_at).timestamp()
    except (ValueError, OverflowError):  # not ISO 8601, or out of datetime's range
        return None
    if not math.isfinite(lag := received_at - moment):
        return None
    return lag


def miss_rate(finished: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: jobs finished by callback, by poll, in all, and the poll share.

    ``finished`` holds rows of `Store.metrics`' ``jobs_finished``.  As the issue
    defines it, the rate is jobs finished by poll over all finished jobs of the model.
    """
    models: dict[str, dict[str, Any]] = {}
    for row in finished:
        seen = models.setdefault(row["model"], {"callback": 0, "poll": 0, "submit": 0})
        seen[row["source"]] = seen.get(row["source"], 0) + row["count"]
    for seen in models.values():
        seen["finished"] = seen["callback"] + seen["poll"] + seen["submit"]
        seen["rate"] = seen["poll"] / seen["finished"]
    return models
