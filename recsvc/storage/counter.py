"""The retry counter behind fail-fast: a Redis-shaped key/value counter with TTLs.

Theory of operation. CONTRACT section 3 counts retries per call under the key
``recording_retry_attempts:{business_id}:{call_sid}`` with Redis ``INCR`` then
``EXPIRE``. Every backend here speaks that same small vocabulary, so the
in-memory one (the embedded default, ``memory://``), a Redis server
(``recsvc.storage.redis_counter``) and a table in the service's own SQLite file
(``sqlite://``, ``recsvc.storage.sqlite_counter``) are interchangeable and one test
class runs against all three:

- ``incr(key)``: add one, creating the key at 1; a key keeps its TTL.
- ``expire(key, seconds)``: (re)start the key's TTL; False when there is no key.
- ``incr_and_expire(key, seconds)``: both, in one round trip where the backend
  can; returns the value after INCR.
- ``get(key)``: the integer value, or None when absent.
- ``ttl(key)``: seconds left as Redis reports them: -2 absent, -1 no expiry.
- ``delete(key)``: 1 when a key was removed, else 0.

Counters outside the service's database (memory://, redis://) also have
``decr(key)``: a retry counted in a transaction that did not commit (a
storage fault) is taken back. ``sqlite://`` needs none: its count is part of
that transaction and rolls back with it.

Fractions of a second are allowed for ``seconds`` (the contract's durations
accept them); Redis receives them as milliseconds (PEXPIRE).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

from ..contract.model import nearest_seconds


class CounterError(Exception):
    """The counter backend could not answer: a FallbackCounter counts in the process meanwhile
    (redis://); for sqlite://, whose faults are the database's own, the caller fails open."""


class RetryCounter(Protocol):
    def incr(self, key: str) -> int: ...
    def expire(self, key: str, seconds: float) -> bool: ...
    def incr_and_expire(self, key: str, seconds: float) -> int: ...
    def get(self, key: str) -> int | None: ...
    def ttl(self, key: str) -> int: ...
    def delete(self, key: str) -> int: ...
    def close(self) -> None: ...


def retry_key(business_id: int, call_sid: str) -> str:
    """The contract's key name for a call's retry counter (CONTRACT 3)."""
    return f"recording_retry_attempts:{business_id}:{call_sid}"


def entry_ttl(entry: tuple[int, float | None] | None, now: float) -> int:
    """TTL of a live ``(value, expires_at)`` entry as Redis reports it: -2 absent (None), -1 no expiry."""
    if entry is None:
        return -2
    if entry[1] is None:
        return -1
    return nearest_seconds(entry[1] - now)  # Redis's TTL rounds to the nearest second


class MemoryCounter:
    """An in-process TTL dict with Redis semantics, the embedded default.

    Expired keys are dropped lazily on access and by a sweep every
    ``_SWEEP_EVERY`` writes, so memory stays bounded by the keys that are
    alive, not by every call ever counted.
    """

    _SWEEP_EVERY = 256

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._values_lock = threading.Lock()  # guards _values and _writes
        self._values: dict[str, tuple[int, float | None]] = {}  # key -> (value, expires_at)
        self._writes = 0

    def __len__(self) -> int:
        with self._values_lock:
            self._drop_expired(self._clock())
            return len(self._values)

    def _live(self, key: str, now: float) -> tuple[int, float | None] | None:
        entry = self._values.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= now:
            del self._values[key]
            return None
        return entry

    def _drop_expired(self, now: float) -> None:
        dead = [k for k, (_, exp) in self._values.items() if exp is not None and exp <= now]
        for key in dead:
            del self._values[key]

    def _wrote(self, now: float) -> None:
        self._writes += 1
        if self._writes % self._SWEEP_EVERY == 0:
            self._drop_expired(now)

    def incr(self, key: str) -> int:
        with self._values_lock:
            now = self._clock()
            entry = self._live(key, now)
            value, expires_at = entry if entry else (0, None)
            self._values[key] = (value + 1, expires_at)
            self._wrote(now)
            return value + 1

    def expire(self, key: str, seconds: float) -> bool:
        with self._values_lock:
            now = self._clock()
            entry = self._live(key, now)
            if entry is None:
                return False
            if seconds <= 0:  # Redis deletes a key given a non-positive TTL
                del self._values[key]
            else:
                self._values[key] = (entry[0], now + seconds)
            return True

    def incr_and_expire(self, key: str, seconds: float) -> int:
        with self._values_lock:
            now = self._clock()
            entry = self._live(key, now)
            value = (entry[0] if entry else 0) + 1
            self._values[key] = (value, now + seconds)
            self._wrote(now)
            return value

    def decr(self, key: str) -> int:
        """Redis DECR: take one back (a retry whose transaction did not commit); the key keeps its TTL."""
        with self._values_lock:
            now = self._clock()
            entry = self._live(key, now)
            value, expires_at = entry if entry else (0, None)
            self._values[key] = (value - 1, expires_at)
            return value - 1

    def get(self, key: str) -> int | None:
        with self._values_lock:
            entry = self._live(key, self._clock())
            return None if entry is None else entry[0]

    def ttl(self, key: str) -> int:
        with self._values_lock:
            now = self._clock()
            return entry_ttl(self._live(key, now), now)

    def delete(self, key: str) -> int:
        with self._values_lock:
            entry = self._live(key, self._clock())
            if entry is None:
                return 0
            del self._values[key]
            return 1

    def close(self) -> None:
        pass
