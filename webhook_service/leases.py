"""Keeping running downloads' claims: one heartbeat thread per worker renews them.

A download holds a lease on its output row (owner, expiry, fence).  The heartbeat
renews each running download's lease a third of the way through it, in a thread
of its own, so a download stalled inside a read keeps (or loses) its claim on
time, not only when its next chunk arrives.  When a renewal finds the fence moved
(another worker took the output over), the download's `Lease.lost` is set and
the download stops without recording anything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .store import Store

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.5  # how often running downloads' leases are looked at


class Lease:
    """A running download's claim."""

    def __init__(self, job_id: str, index: int, fence: int, renewed_at: float) -> None:
        self.job_id, self.index, self.fence = job_id, index, fence
        self.renewed_at = renewed_at
        self.lost = threading.Event()


class LeaseKeeper:
    """Renews the leases of the downloads it is told about, until they end."""

    def __init__(
        self,
        store: Callable[[], Store],
        clock: Callable[[], float],
        lease_seconds: float,
        stopping: threading.Event,
    ) -> None:
        self._store = store
        self._clock = clock
        self.lease_seconds = lease_seconds
        self._stopping = stopping
        self._leases: dict[tuple[str, int], Lease] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def kept(self, job_id: str, index: int, fence: int) -> Iterator[Lease]:
        """Keep this claim renewed for the duration of the block."""
        lease = Lease(job_id, index, fence, self._clock())
        with self._lock:
            self._leases[(job_id, index)] = lease
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._beat, name="lease-heartbeat", daemon=True
                )
                self._thread.start()
        try:
            yield lease
        finally:
            with self._lock:
                self._leases.pop((job_id, index), None)

    def _beat(self) -> None:
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            with self._lock:
                running = list(self._leases.values())
                if not running:
                    self._thread = None
                    return
            for lease in running:
                self._renew(lease)

    def _renew(self, lease: Lease) -> None:
        now = self._clock()
        if lease.lost.is_set() or now - lease.renewed_at < self.lease_seconds / 3:
            return
        try:
            kept = self._store().renew_output_lease(
                lease.job_id, lease.index, lease.fence, now + self.lease_seconds
            )
        except Exception as error:  # the heartbeat must outlive a bad moment
            log.warning("lease renewal failed: %s", error)
            return
        if kept:
            lease.renewed_at = now
        else:
            lease.lost.set()
