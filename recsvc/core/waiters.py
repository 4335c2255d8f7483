"""Held requests (CONTRACT 5b): wake a request waiting on a job the moment the job ends.

Theory of operation. A request with ``Prefer: wait=N`` that would be
answered 202 registers interest in its job and sleeps on an Event.

- Jobs run by this process's workers end through ``job_ended(job_id)``,
  called by the worker pool: the waiters wake at once.
- Jobs run by a separate ``recsvc worker`` process cannot call us, so one
  shared watcher thread asks the database about *all* held jobs in a single
  query every ``poll_interval`` seconds, and only while some request is held.
  A held request never queries the database itself.

A held request also checks, every quarter second, whether its client went
away, and frees its thread if so.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..storage.store import StorageOutage, Store, StoreError

log = logging.getLogger(__name__)


class _Held:
    __slots__ = ("event", "count")

    def __init__(self):
        self.event = threading.Event()
        self.count = 0


class JobWaiters:
    def __init__(self, store: Store, poll_interval: float = 0.05):
        self.store = store
        self.poll_interval = poll_interval
        self._held_lock = threading.Lock()  # guards _held and _watcher
        self._held: dict[int, _Held] = {}
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()

    def job_ended(self, job_id: int) -> None:
        with self._held_lock:
            held = self._held.get(job_id)
        if held is not None:
            held.event.set()

    def held_count(self) -> int:
        with self._held_lock:
            return sum(h.count for h in self._held.values())

    def wait(self, job_id: int, timeout: float, client_gone: Callable[[], bool] = lambda: False) -> bool:
        """Block until the job ends (True), or timeout / client gone (False)."""
        with self._held_lock:
            held = self._held.setdefault(job_id, _Held())
            held.count += 1
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="recsvc-job-watcher", daemon=True)
                self._watcher.start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if held.event.wait(min(left, 0.25)):
                    return True
                if client_gone():
                    log.info("held request for job=%d: client went away", job_id)
                    return False
        finally:
            with self._held_lock:
                held.count -= 1
                if held.count == 0:
                    self._held.pop(job_id, None)

    def _watch(self) -> None:
        """One query for every held job, for jobs ended by another process."""
        outage = StorageOutage("watching held jobs", log)
        while not self._stopping.wait(self.poll_interval):
            with self._held_lock:
                ids = [job_id for job_id, held in self._held.items() if not held.event.is_set()]
            if not ids:
                continue
            try:
                with self.store.reading() as tx:
                    ended = tx.ended_jobs(ids)
                outage.worked()
            except StoreError as exc:
                outage.failed(exc)
                continue
            except Exception:
                log.exception("job watcher query failed")
                continue
            for job_id in ended:
                self.job_ended(job_id)

    def stop(self) -> None:
        self._stopping.set()
        with self._held_lock:
            watcher = self._watcher
            for held in self._held.values():
                held.event.set()
        if watcher is not None:
            watcher.join(1.0)
