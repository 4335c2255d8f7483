"""The retry counter a ``--counter`` URL names: memory://, redis:// or sqlite:// (CONTRACT 3).

The interface and the in-process counter are ``recsvc.storage.counter``; each backend
imports that module, and this one imports them all, so no import runs in a circle.
"""

from __future__ import annotations

import time
from typing import Callable

from .counter import MemoryCounter, RetryCounter
from .fallback_counter import FallbackCounter
from .redis_counter import RedisCounter
from .sqlite_counter import SqliteCounter
from .store import Store


def open_counter(url: str, clock: Callable[[], float] = time.time, *, store: Store | None = None,
                 on_outage: Callable[[], None] = lambda: None) -> RetryCounter:
    """Build the counter named by ``--counter`` (validated by settings).

    ``redis://[:password@]host:port/db`` gives a RedisCounter behind a
    FallbackCounter (CONTRACT 3: the limit holds while Redis is unreachable;
    ``on_outage`` is told when an outage starts); it connects on first use,
    and keeps time by the server's clock, not ``clock``. A bad
    redis:// URL raises ValueError saying what is wrong. ``sqlite://`` gives a
    SqliteCounter in ``store``'s database, the one the service itself uses.
    """
    if url == "memory://":
        return MemoryCounter(clock)
    if url.startswith("redis://"):
        return FallbackCounter(RedisCounter(url), MemoryCounter(clock), on_outage=on_outage)
    if url == "sqlite://":
        if store is None:
            raise ValueError("sqlite:// keeps the counter in the service's database: pass its store")
        return SqliteCounter(store, clock)
    raise ValueError(f"unsupported counter URL {url!r}")
