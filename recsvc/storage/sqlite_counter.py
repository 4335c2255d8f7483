"""The retry counter in the service's own SQLite database: ``SqliteCounter``.

Theory of operation. ``--counter sqlite://`` keeps the retry counter of
CONTRACT section 3 in the table ``retry_counters`` of ``recsvc.sqlite3``
(schema version 3, see ``recsvc.storage.store``), so every recsvc process that opens
the same data dir shares one count with no server to run. It speaks the
counter vocabulary of ``recsvc.storage.counter`` with Redis's meaning:

- a row is (key, value, expires_at); ``expires_at`` is absolute epoch seconds
  from the injected ``clock``, or NULL for no expiry, so processes that share
  the file agree on when a key dies. A row whose time has passed is absent to
  every command: GET gives None, TTL -2, INCR starts again at 1;
- INCR and INCR + EXPIRE are one UPSERT each, run inside ``BEGIN IMMEDIATE``:
  SQLite's write lock makes them atomic across threads and processes;
- a counter call made inside the store's open write transaction (the play
  request deciding row 10b) joins it instead of waiting for a lock its own
  thread holds, so the count and the retry job commit together;
- expired rows are deleted as counts go by: every INCR also deletes at most
  ``SWEEP_BATCH`` of them, the longest expired first (an index on
  ``expires_at``). An INCR adds at most one row and removes up to two dead
  ones, so dead rows never pile up, and no call pays for more than two.

SQL lives in ``recsvc.storage.store``. Every SQLite failure (locked past the busy
timeout, an unreadable file, a closed store) raises ``CounterError``, and
the caller fails open (CONTRACT 3), as it does when Redis is down.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from .counter import CounterError, entry_ttl
from .store import Store, StoreError, Tx

SWEEP_BATCH = 2


class SqliteCounter:
    """The retry counter (``recsvc.storage.counter.RetryCounter``) in a ``Store``'s database file.

    The store is the caller's: ``close()`` leaves it open, for the App closes
    it after the counter.
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock

    def __repr__(self) -> str:
        return f"SqliteCounter({self._store.path!r})"

    @contextlib.contextmanager
    def _counting(self, write: bool) -> Iterator[Tx]:
        try:
            with self._store.counting(write) as tx:
                yield tx
        except StoreError as exc:
            raise CounterError(f"the counter table of {self._store.path} did not answer: {exc}") from exc

    def incr(self, key: str) -> int:
        with self._counting(write=True) as tx:
            now = self._clock()
            tx.counter_sweep(now, SWEEP_BATCH)
            return tx.counter_incr(key, now)

    def expire(self, key: str, seconds: float) -> bool:
        with self._counting(write=True) as tx:
            now = self._clock()
            if seconds <= 0:  # Redis deletes a key given a non-positive TTL
                return tx.counter_delete(key, now)
            return tx.counter_expire(key, now, now + seconds)

    def incr_and_expire(self, key: str, seconds: float) -> int:
        # CONTRACT 3: INCR then EXPIRE at every retry (sliding window), in one statement.
        with self._counting(write=True) as tx:
            now = self._clock()
            tx.counter_sweep(now, SWEEP_BATCH)
            return tx.counter_incr_and_expire(key, now, now + seconds)

    def get(self, key: str) -> int | None:
        with self._counting(write=False) as tx:
            entry = tx.counter_entry(key, self._clock())
        return None if entry is None else entry[0]

    def ttl(self, key: str) -> int:
        with self._counting(write=False) as tx:
            now = self._clock()
            return entry_ttl(tx.counter_entry(key, now), now)

    def delete(self, key: str) -> int:
        with self._counting(write=True) as tx:
            return int(tx.counter_delete(key, self._clock()))

    def close(self) -> None:
        pass
