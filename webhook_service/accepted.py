"""Accepted submits the database could not record yet: held on disk until it can.

Once upstream answers 202 the job is paid for, and its upstream id must survive
a database that stays locked or unreachable past its timeout.  `record` keeps
trying for a while; if the database is still unavailable the answer is written
to ``<folder>/<job id>.json`` (fsynced, renamed into place) and a background
thread keeps trying until it is recorded.  Whatever is left in the folder when a
process starts is recorded then (`drain`).  A callback bearing the job's token
also reveals the upstream id, so a spool lost with its machine is a second line
of defence gone, not the only one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
_drainers: dict[str, threading.Thread] = {}
_drainers_lock = threading.Lock()

Record = Callable[[Store, str, Mapping[str, Any]], object]


def hold(folder: Path, job_id: str, answer: Mapping[str, Any]) -> Path:
    """Write upstream's answer for ``job_id`` durably into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{job_id}.json"
    partial = folder / f".{job_id}.json.tmp"
    with open(partial, "w", encoding="utf-8") as file:
        json.dump({"job_id": job_id, "answer": dict(answer)}, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, final)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return final


def held(folder: Path) -> list[tuple[str, dict[str, Any], Path]]:
    """Return (job id, answer, file) for every submit waiting to be recorded."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            found.append((str(entry["job_id"]), dict(entry["answer"]), path))
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.error("unreadable held submit %s: %s", path.name, error)
    return found


def drain(folder: Path, store: Store, record: Record, kept: set[Path] | None = None) -> int:
    """Record every held submit the database takes now; return how many wait for it.

    A file is removed only once its job row holds the upstream id.  One that can
    never be recorded here (its job is not in this database, say) is logged, left on
    disk for an operator, added to ``kept`` and not counted.
    """
    kept = set() if kept is None else kept
    left = 0
    for job_id, answer, path in held(folder):
        if path in kept:
            continue
        try:
            record(store, job_id, answer)
            job = store.job(job_id)
        except StoreUnavailable:
            left += 1
            continue
        except Exception:
            log.exception("held submit %s (upstream id %s) not recorded", job_id, answer.get("id"))
            kept.add(path)
            continue
        if job is None or job["upstream_id"] != answer.get("id"):
            log.error(
                "held submit %s (upstream id %s): the job row does not take it; %s kept",
                job_id,
                answer.get("id"),
                path,
            )
            kept.add(path)
            continue
        path.unlink(missing_ok=True)
        log.info("recorded held submit of %s (upstream id %s)", job_id, answer.get("id"))
    return left


def drain_in_background(
    folder: Path,
    open_store: Callable[[], Store],
    record: Record,
    sleep: Callable[[float], None] = time.sleep,
) -> threading.Thread:
    """Keep draining ``folder`` from one daemon thread per folder until it is empty."""
    key = str(folder.absolute())
    with _drainers_lock:
        running = _drainers.get(key)
        if running is not None and running.is_alive():
            return running

        def loop() -> None:
            store: Store | None = None
            kept: set[Path] = set()
            while True:
                try:
                    store = store or open_store()
                    if drain(folder, store, record, kept) == 0:
                        with _drainers_lock:  # a submit held meanwhile finds no thread
                            if all(path in kept for _, _, path in held(folder)):
                                del _drainers[key]
                                return
                        continue
                except StoreUnavailable:
                    pass
                except Exception:
                    log.exception("recording held submits failed; trying again")
                sleep(RETRY_SECONDS)

        thread = threading.Thread(target=loop, name="held-submits", daemon=True)
        _drainers[key] = thread
        thread.start()
        return thread
