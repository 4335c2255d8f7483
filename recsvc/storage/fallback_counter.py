"""A shared retry counter that keeps the limit while its backend is unreachable: ``FallbackCounter``.

Theory of operation. CONTRACT 3 v3: while a shared counter (``redis://``) is
unreachable, the service neither fails closed nor lets a call retry without
limit; it counts in a process-local TTL counter with the same semantics
until the backend answers again.

``FallbackCounter`` speaks the counter vocabulary of ``recsvc.storage.counter`` over
two counters: the shared one, and a ``MemoryCounter`` of this process that
mirrors every write made here, outage or not. So

- while the shared counter answers, a value is the larger of the two: a
  backend that came back empty (a restarted Redis keeps nothing) cannot
  hand this process's calls a fresh set of retries within their window;
- while it does not, the local counter answers alone, with Redis's
  semantics (INCR + EXPIRE, sliding window), so the limit still holds;
- during an outage the shared counter is asked again at most once every
  ``retry_every`` seconds, so a server that hangs costs one timeout per
  interval, not one per request.

One warning when an outage starts and one when it ends (the Redis client
itself logs nothing about it), ``in_fallback`` for a gauge, and ``outages``
counted. Never raises CounterError: that is the point.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

from .counter import CounterError, MemoryCounter, RetryCounter

log = logging.getLogger(__name__)

T = TypeVar("T")


class FallbackCounter:
    def __init__(self, shared: RetryCounter, local: MemoryCounter, *, retry_every: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_outage: Callable[[], None] = lambda: None):
        self.shared = shared
        self.local = local
        self.retry_every = retry_every
        self._monotonic = monotonic
        self._on_outage = on_outage
        self._state_lock = threading.Lock()  # guards _down_since, _next_try and outages
        self._down_since: float | None = None
        self._next_try = 0.0
        self.outages = 0
        self.name = str(getattr(shared, "address", shared))  # never a password: RedisAddress hides it

    def __repr__(self) -> str:
        return f"FallbackCounter({self.shared!r})"

    @property
    def in_fallback(self) -> bool:
        """True while the shared counter is unreachable and this process counts alone."""
        return self._down_since is not None

    # -- the counter vocabulary (recsvc.storage.counter) --

    def incr(self, key: str) -> int:
        local = self.local.incr(key)
        shared = self._shared(lambda: self.shared.incr(key))
        return local if shared is None else max(local, shared)

    def expire(self, key: str, seconds: float) -> bool:
        local = self.local.expire(key, seconds)
        shared = self._shared(lambda: self.shared.expire(key, seconds))
        return local if shared is None else shared or local

    def incr_and_expire(self, key: str, seconds: float) -> int:
        local = self.local.incr_and_expire(key, seconds)
        shared = self._shared(lambda: self.shared.incr_and_expire(key, seconds))
        return local if shared is None else max(local, shared)

    def decr(self, key: str) -> int:
        local = self.local.decr(key)
        shared = self._shared(lambda: self.shared.decr(key))
        return local if shared is None else max(local, shared)

    def get(self, key: str) -> int | None:
        values = [v for v in (self.local.get(key), self._shared(lambda: self.shared.get(key))) if v is not None]
        return max(values) if values else None

    def ttl(self, key: str) -> int:
        """The longer of the two windows left (Redis's -2 absent and -1 no expiry sort below any)."""
        local = self.local.ttl(key)
        shared = self._shared(lambda: self.shared.ttl(key))
        return local if shared is None else max(local, shared)

    def delete(self, key: str) -> int:
        local = self.local.delete(key)
        shared = self._shared(lambda: self.shared.delete(key))
        return local if shared is None else max(local, shared)

    def close(self) -> None:
        self.shared.close()

    # -- the outage --

    def _shared(self, command: Callable[[], T]) -> T | None:
        """The shared counter's answer, or None while it is unreachable."""
        if self._down_since is not None and self._monotonic() < self._next_try:
            return None
        try:
            answer = command()
        except CounterError as exc:
            self._failed(exc)
            return None
        if self._down_since is not None:
            self._answered()
        return answer

    def _failed(self, exc: CounterError) -> None:
        now = self._monotonic()
        with self._state_lock:
            first = self._down_since is None
            if first:
                self._down_since = now
                self.outages += 1
            self._next_try = now + self.retry_every
        if first:
            self._on_outage()
            log.warning("retry counter %s unreachable (%s); counting retries in this process until it answers",
                        self.name, exc)

    def _answered(self) -> None:
        with self._state_lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("retry counter %s answers again after %.1fs; counts made meanwhile still hold "
                        "for their window", self.name, self._monotonic() - since)
