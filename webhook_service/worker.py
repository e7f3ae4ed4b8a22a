"""The worker: polls jobs whose callback is overdue, downloads every output, and sends
the notifications of settled jobs.

Work is claimed from the store with leases (owner, expiry, and a fence that grows
with every claim), so any number of worker processes, on any machines, can share
the database: a claim whose lease ran out is picked up again, and a stalled
worker's late writes are refused because its fence is old.  `run_once(now)` does
one round and is what tests drive; `run` is the process loop that stops cleanly
on SIGTERM, and waits for new work with `Store.wait_for_change` in between.

A poll answer goes through the same state machine as a callback.  Jobs left in
``submitting`` are settled here and never resubmitted.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any

from . import jobs
from .config import Settings
from .downloads import DownloadAborted, fetch
from .leases import LeaseKeeper
from .media import MediaStorage, PartialObject, open_media
from .modelgates import APIError, ModelGatesClient, ModelGatesError, RequestRefused
from .notifications.sender import Sender
from .store import Store, StoreUnavailable, open_store
from .submission import in_flight_deadline, record_held

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
POLL_CAP_SECONDS = 300.0
DOWNLOAD_CAP_SECONDS = 600.0
NOT_FOUND_LIMIT = 3
POLLS_PER_ROUND = 50
IDLE_SECONDS = 0.5
SHUTDOWN_GRACE_SECONDS = 6.0
SENDERS = 4  # notifications sent at once
RECORD_RETRY_SECONDS = 0.5  # between tries to record a stored output while the database is away


def poll_delay(
    polls: int,
    base: float,
    rand: Callable[[], float],
    retry_after: float | None = None,
    cap: float = POLL_CAP_SECONDS,
) -> float:
    """Seconds until the next poll: doubling from ``base`` to ``cap``, ±20 % jitter."""
    delay = min(cap, base * 2 ** min(polls, 16)) * (0.8 + 0.4 * rand())
    return max(delay, retry_after or 0.0)


def download_delay(
    attempts: int, rand: Callable[[], float], retry_after: float | None = None
) -> float:
    """Seconds until the next download attempt: 1 s doubling to 10 min, with jitter."""
    delay = min(DOWNLOAD_CAP_SECONDS, 2.0 ** min(attempts, 16)) * (0.5 + rand() / 2)
    return max(delay, retry_after or 0.0)


class Worker:
    """Claims due polls and downloads; one instance per worker process."""

    def __init__(
        self,
        settings: Settings,
        client: ModelGatesClient,
        *,
        concurrency: int = 4,
        lease_seconds: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        owner: str | None = None,
        media: MediaStorage | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.rand = rand
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.stopping = threading.Event()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="download")
        self._in_flight: dict[Future[None], dict[str, Any]] = {}
        self._round = (0.0, 0.0)  # (the round's `now`, the clock when it started)
        self.media = media or open_media(settings)
        self.leases = LeaseKeeper(
            lambda: self.store, lambda: self.clock(), lease_seconds, self.stopping
        )
        self.sender = Sender(settings, self.owner, clock=lambda: self.clock(), rand=rand)
        self._send_pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="notify")
        self._sending: dict[Future[Any], dict[str, Any]] = {}

    @property
    def store(self) -> Store:
        """This thread's store connection."""
        if not hasattr(self._local, "store"):
            self._local.store = open_store(self.settings)
        opened: Store = self._local.store
        return opened

    def run_once(self, now: float | None = None, wait: bool = True) -> int:
        """Do one round of due work; return how many items were claimed."""
        now = self.clock() if now is None else now
        self._round = (now, self.clock())
        until = now + self.lease_seconds
        claimed = self.store.claim_due_jobs(self.owner, now, until, POLLS_PER_ROUND)
        for job in claimed:
            if self.stopping.is_set():
                self.store.finish_job_claim(job["id"], job["fence"], {})
                continue
            self._poll_one(job, now)
        for future in [f for f in self._in_flight if f.done()]:
            if future.exception() is not None:  # the claim expires; another round retries
                log.error("download failed unexpectedly", exc_info=future.exception())
            del self._in_flight[future]
        free = self.concurrency - len(self._in_flight)
        outputs = []
        if free > 0 and not self.stopping.is_set():
            now = self._now()  # outputs the polls just created are due
            outputs = self.store.claim_due_outputs(self.owner, now, now + self.lease_seconds, free)
            for output in outputs:
                self._in_flight[self._pool.submit(self._download, output)] = output
        notifications = self._claim_notifications()
        if wait:
            for future in wait_for([*self._in_flight, *self._sending]).done:
                future.result()
            self._in_flight.clear()
            self._sending.clear()
        return len(claimed) + len(outputs) + len(notifications)

    def _claim_notifications(self) -> list[dict[str, Any]]:
        for future in [f for f in self._sending if f.done()]:
            if future.exception() is not None:  # the claim expires; another round retries
                log.error("notification failed unexpectedly", exc_info=future.exception())
            del self._sending[future]
        free = SENDERS - len(self._sending)
        if free <= 0 or self.stopping.is_set() or not self.sender.enabled:
            return []
        now = self._now()
        # The lease outlasts an attempt's whole timeout: no one else claims it mid-send.
        until = now + max(self.lease_seconds, 2 * self.sender.timeout)
        claims = self.store.claim_due_notifications(self.owner, now, until, free)
        for claim in claims:
            self._sending[self._send_pool.submit(self._send, claim)] = claim
        return claims

    def _send(self, claim: dict[str, Any]) -> None:
        self.sender.send(self.store, claim)

    def run(self) -> bool:
        """Work until `stop` is called; return False if a download would not let go.

        In-flight downloads notice the stop between chunks, delete their temporary
        file and release their claim.  One stuck in a read past the grace period has
        its claim released here, so another worker can take it at once.
        """
        log.info("worker %s started", self.owner)
        try:
            record_held(self.store, self.settings)
        except Exception as error:
            log.warning("held submits not recorded yet: %s", error)
        while not self.stopping.is_set():
            try:
                busy = self.run_once(wait=False)
            except Exception:
                log.exception("worker round failed; retrying")
                busy = 0
            if not busy:
                try:  # woken within milliseconds when a callback or download commits
                    self.store.wait_for_change(IDLE_SECONDS, self.stopping.is_set)
                except Exception as error:
                    log.warning("waiting for work failed: %s", error)
                    self.stopping.wait(IDLE_SECONDS)
        stuck = wait_for(self._in_flight, timeout=SHUTDOWN_GRACE_SECONDS).not_done
        sending = wait_for(self._sending, timeout=1.0).not_done
        try:  # release what is stuck; if the database is away, the leases run out instead
            for future in stuck:
                output = self._in_flight[future]
                self.store.finish_output_claim(
                    output["job_id"], output["idx"], output["fence"], {"status": "pending"}
                )
            for future in sending:  # a stuck attempt keeps its number: the next one is new
                claim = self._sending[future]
                self.store.finish_notification_claim(claim["job_id"], claim["fence"], {})
        except Exception as error:
            log.warning("could not release claims at stop: %s", error)
        self._pool.shutdown(wait=not stuck, cancel_futures=True)
        self._send_pool.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped%s", self.owner, f", abandoning {len(stuck)}" if stuck else "")
        return not stuck

    def stop(self) -> None:
        """Stop claiming; in-flight downloads release their claims and return."""
        self.stopping.set()

    # Polls --------------------------------------------------------------------

    def _now(self) -> float:
        """The round's time, moved on by the time spent in the round so far."""
        round_now, round_clock = self._round
        return round_now + max(0.0, self.clock() - round_clock)

    def _poll_one(self, job: dict[str, Any], now: float) -> None:
        """Poll one claimed job; whatever goes wrong, the round goes on to the next."""
        # A round's claims share one lease: renew this one, and skip it if it was taken over.
        now = self._now()
        if not self.store.renew_job_lease(job["id"], job["fence"], now + self.lease_seconds):
            log.info("poll claim on %s was taken over; skipping it", job["id"])
            return
        try:
            self._poll(job, now)
        except StoreUnavailable:
            raise  # the database is gone: end the round, the run loop retries
        except Exception:
            log.exception("poll of %s failed unexpectedly; polling it again later", job["id"])
            delay = poll_delay(job["polls"], self.settings.poll_interval_seconds, self.rand)
            self.store.finish_job_claim(
                job["id"], job["fence"], {"next_poll_at": now + delay, "polls": job["polls"] + 1}
            )

    def _poll(self, job: dict[str, Any], now: float) -> None:
        if not job["upstream_id"]:
            with self.store.transaction():
                # Decide on the current row: a callback may have settled it since the claim.
                fresh = self.store.job(job["id"])
                assert fresh is not None
                if fresh["fence"] != job["fence"]:
                    return  # another worker claimed it since: its decision stands
                changes: dict[str, Any] = {}  # revealed meanwhile: its new schedule stands
                if fresh["status"] == jobs.SUBMITTING and not fresh["upstream_id"]:
                    changes = self._settle_submit(fresh, now)
                elif not fresh["upstream_id"]:
                    changes = {"next_poll_at": None}  # ended without an upstream job
                self.store.finish_job_claim(job["id"], job["fence"], changes)
                jobs.queue_notification(self.store, job["id"], now)
            return
        retry_after, not_found = None, 0
        seen: jobs.Observation | None = None
        try:
            answer = self.client.get_job(job["upstream_id"])
        except RequestRefused as error:
            if error.status != 404:
                retry_after = error.retry_after
            else:
                not_found = job["poll_not_found"] + 1
                if not_found >= NOT_FOUND_LIMIT:
                    seen = jobs.Observation(
                        "failed",
                        "poll",
                        error=f"ModelGates does not know job "
                        f"{job['upstream_id']} (404 on {not_found} polls)",
                    )
        except ModelGatesError as error:
            retry_after = error.retry_after if isinstance(error, APIError) else None
            log.warning("poll of %s failed: %s", job["id"], error)
        else:
            seen = jobs.Observation.from_upstream({**answer, "id": job["upstream_id"]}, "poll")
        now = self._now()  # the poll may have taken a while
        with self.store.transaction():
            fresh = self.store.job(job["id"])
            assert fresh is not None
            if fresh["fence"] != job["fence"]:
                log.info("poll claim on %s was lost during the poll; not recording it", job["id"])
                return
            if seen is not None and jobs.apply_observation(self.store, fresh, seen, now):
                fresh = self.store.job(job["id"])
                assert fresh is not None
            delay = poll_delay(
                job["polls"], self.settings.poll_interval_seconds, self.rand, retry_after
            )
            self.store.finish_job_claim(
                job["id"],
                job["fence"],
                {
                    "next_poll_at": None if jobs.upstream_done(fresh) else now + delay,
                    "polls": job["polls"] + 1,
                    "poll_not_found": not_found,
                },
            )

    def _settle_submit(self, job: dict[str, Any], now: float) -> dict[str, Any]:
        """Decide what becomes of a job whose submit answer was never recorded."""
        deadline = job["created_at"] + self.settings.submit_timeout_seconds
        if now >= deadline:
            return jobs.fail_submission(
                "no callback revealed the upstream job within SUBMIT_TIMEOUT_SECONDS "
                f"({job['error'] or 'submit outcome unknown'}); it was not resubmitted",
                now,
            )
        if job["submit_outcome"] is None and now >= in_flight_deadline(self.settings, job):
            return {
                "submit_outcome": "ambiguous",
                "updated_at": now,
                "next_poll_at": deadline,
                "error": "the submitting process stopped before upstream answered",
            }
        if job["submit_outcome"] is not None:  # ambiguous: only the deadline is left to wait for
            return {"next_poll_at": deadline}
        return {"next_poll_at": min(deadline, max(now, in_flight_deadline(self.settings, job)))}

    # Downloads ------------------------------------------------------------------

    def _download(self, output: dict[str, Any]) -> None:
        store, fence = self.store, output["fence"]
        job_id, index = output["job_id"], output["idx"]
        job = store.job(job_id)
        assert job is not None and job["upstream_id"]
        with store.transaction():  # fenced first: a stale claim must not touch the parts
            claimed = store.update_output(job_id, index, {"status": "downloading"}, fence)
        if not claimed:
            log.warning("download %s/%s dropped: its claim was taken over", job_id, index)
            return
        try:
            self.media.remove_stale(job_id, index)
            target = self.media.open_partial(job_id, index, fence)
        except OSError as error:
            log.error("cannot store %s/%s: %s", job_id, index, error)
            self._failed_attempt(
                output, f"cannot store the video in {self.media.describe()}: {error}"
            )
            return
        try:
            with self.leases.kept(job_id, index, fence) as lease:

                def keep_going() -> bool:
                    return not (self.stopping.is_set() or lease.lost.is_set())

                fetch(self.client, job["upstream_id"], index, target, keep_going)
                # The heartbeat renews while bytes flow; this closes the gap before commit.
                if not store.renew_output_lease(
                    job_id, index, fence, self.clock() + self.lease_seconds
                ):
                    raise DownloadAborted("claim lost before commit")
                target.commit()
        except DownloadAborted as aborted:
            target.discard()
            if store.finish_output_claim(job_id, index, fence, {"status": "pending"}):
                log.info("download %s/%s abandoned: %s", job_id, index, aborted)
            else:
                log.warning("download %s/%s dropped: its claim was taken over", job_id, index)
            return
        except (ModelGatesError, OSError) as error:
            target.discard()
            gone = isinstance(error, RequestRefused) and error.status in (404, 410)
            self._failed_attempt(output, str(error), gone and self._expired_upstream(job))
            return
        except BaseException:  # the database went away, a bug: leave no part behind
            target.discard()
            raise
        recorded = self._record_download(output, target)
        if recorded:
            log.info(
                "downloaded %s/%s: %d bytes sha256 %s", job_id, index, target.size, target.sha256
            )
        else:  # the same bytes under the same name: the worker that took over records them
            log.warning("downloaded %s/%s but its claim was taken over meanwhile", job_id, index)

    def _record_download(self, output: dict[str, Any], target: PartialObject) -> bool:
        """Record a stored output, retrying while the database is away and the lease holds.

        Giving up early would have the output fetched from upstream a second time.
        """
        job_id, index, fence = output["job_id"], output["idx"], output["fence"]
        holds_until = self.clock() + self.lease_seconds
        while True:
            now = self.clock()
            try:
                with self.store.transaction():
                    recorded = self.store.finish_output_claim(
                        job_id,
                        index,
                        fence,
                        {
                            "status": "downloaded",
                            "bytes": target.size,
                            "sha256": target.sha256,
                            "file_name": self.media.name(job_id, index),
                            "error": None,
                            "next_attempt_at": None,
                            "updated_at": now,
                        },
                    )
                    if recorded:
                        jobs.queue_notification(self.store, job_id, now)
                return recorded
            except StoreUnavailable as error:
                if self.clock() >= holds_until or self.stopping.wait(RECORD_RETRY_SECONDS):
                    raise
                log.warning("recording download %s/%s failed (%s); retrying", job_id, index, error)

    def _failed_attempt(self, output: dict[str, Any], error: str, expired: bool = False) -> None:
        now = self.clock()
        since = output["failing_since"] or now
        changes: dict[str, Any]
        if expired:
            changes = {
                "status": "failed",
                "error": f"the job expired upstream: {error}",
                "next_attempt_at": None,
            }
        elif now - since >= self.settings.download_give_up_seconds:
            changes = {
                "status": "failed",
                "next_attempt_at": None,
                "error": f"gave up after DOWNLOAD_GIVE_UP_SECONDS: {error}",
            }
        else:
            changes = {
                "status": "pending",
                "error": error,
                "next_attempt_at": now + download_delay(output["attempts"], self.rand),
            }
        log.warning("download %s/%s failed: %s", output["job_id"], output["idx"], error)
        with self.store.transaction():
            finished = self.store.finish_output_claim(
                output["job_id"],
                output["idx"],
                output["fence"],
                {
                    **changes,
                    "attempts": output["attempts"] + 1,
                    "failing_since": since,
                    "updated_at": now,
                },
            )
            if finished and changes["status"] == "failed":
                jobs.queue_notification(self.store, output["job_id"], now)

    def _expired_upstream(self, job: dict[str, Any]) -> bool:
        """Ask upstream whether the job's outputs are gone for good."""
        try:
            return self.client.get_job(job["upstream_id"]).get("status") == "expired"
        except ModelGatesError:
            return False
