"""The upstream model list, cached per process: what submits are checked against.

A submit's values are checked against the model's capabilities before anything
is spent.  The list is refetched after a TTL; when that fails, a stale copy beats
none (upstream being briefly unreachable should not refuse every submit).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .modelgates import ModelGatesClient, ModelGatesError

log = logging.getLogger(__name__)

MODELS_TTL_SECONDS = 300.0


class ModelCatalog:
    """The upstream model list, cached per process; a stale copy beats none."""

    def __init__(
        self,
        client: Callable[[], ModelGatesClient],
        ttl: float = MODELS_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._models: list[dict[str, Any]] | None = None
        self._fetched_at = 0.0

    def models(self) -> list[dict[str, Any]]:
        """Return the model list, fetching it when the copy is older than the TTL.

        One thread refreshes; while it waits on upstream the others use the stale
        copy instead of queueing behind it (only the very first fetch is waited for).
        """
        fresh = self._models is not None and self._clock() - self._fetched_at <= self._ttl
        if fresh or not self._lock.acquire(blocking=self._models is None):
            assert self._models is not None
            return self._models
        try:
            if self._models is None or self._clock() - self._fetched_at > self._ttl:
                try:
                    self._models = self._client().list_models()
                    self._fetched_at = self._clock()
                except ModelGatesError:
                    if self._models is None:
                        raise
                    log.warning("model list refresh failed; using the copy from before")
            return self._models
        finally:
            self._lock.release()

    def find(self, model_id: str) -> dict[str, Any] | None:
        """Return one model's entry, or None if upstream does not list it."""
        for model in self.models():
            if model.get("id") == model_id or model.get("canonical_slug") == model_id:
                return model
        return None
