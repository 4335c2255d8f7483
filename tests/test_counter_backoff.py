"""While the shared counter is unreachable, the fallback asks it again at most once per ``retry_every`` (1 s by default).

Every request during an outage would otherwise pay a failed connection to the
shared counter; the fallback answers from its own count meanwhile.
"""

from __future__ import annotations

from recsvc.storage.counter import CounterError, MemoryCounter
from recsvc.storage.fallback_counter import FallbackCounter


class Unreachable:
    """A shared counter that never answers, counting how often it was asked."""
    address = "redis://127.0.0.1:1/0"

    def __init__(self):
        self.asked = 0

    def __getattr__(self, name):
        def refuse(*args):
            self.asked += 1
            raise CounterError("connection refused")
        return refuse


def test_an_unreachable_shared_counter_is_asked_again_only_after_retry_every():
    now = [1000.0]
    shared = Unreachable()
    counter = FallbackCounter(shared, MemoryCounter(lambda: now[0]), monotonic=lambda: now[0])

    assert [counter.incr_and_expire("k", 60) for _ in range(3)] == [1, 2, 3]
    assert shared.asked == 1

    now[0] += 0.5
    counter.get("k")
    assert shared.asked == 1

    now[0] += 0.5
    assert counter.get("k") == 3
    assert shared.asked == 2
