"""The retry counter's expiry boundary, to the tick, on the backends that keep time by ``clock``.

Redis drops a key the moment its TTL reaches 0. The in-memory and SQLite
counters must agree: one tick before the deadline the key still counts, at
the deadline it is gone (GET none, TTL -2, the next INCR starts again at 1).
The fake clock makes "the deadline" exact; Redis keeps its own clock, so it
is not in this table.
"""

from __future__ import annotations

import tracemalloc

import pytest
from conftest import FakeClock
from counter_contract import KEY

from recsvc.storage.counter import MemoryCounter
from recsvc.storage.sqlite_counter import SqliteCounter
from recsvc.storage.store import Store

WINDOW = 5.0
TICK = 0.001  # one fake-clock tick: far below a window, far above float error at these magnitudes


@pytest.fixture(params=["memory", "sqlite"])
def counter_env(request, tmp_path):
    clock = FakeClock()
    if request.param == "memory":
        yield MemoryCounter(clock), clock
        return
    store = Store(str(tmp_path / "recsvc.sqlite3"), busy_timeout=0.2)
    try:
        yield SqliteCounter(store, clock), clock
    finally:
        store.close()


def test_one_tick_before_its_ttl_runs_out_a_key_still_counts(counter_env):
    counter, clock = counter_env
    counter.incr_and_expire(KEY, WINDOW)
    clock.advance(WINDOW - TICK)
    assert counter.get(KEY) == 1
    assert counter.ttl(KEY) == 0  # 1 ms left rounds to 0, as Redis's TTL would say
    assert counter.incr(KEY) == 2


@pytest.mark.parametrize("ask", ["get", "ttl", "incr", "expire", "delete"])
def test_a_key_whose_ttl_just_reached_0_is_gone(counter_env, ask):
    counter, clock = counter_env
    counter.incr_and_expire(KEY, WINDOW)
    counter.incr_and_expire(KEY, WINDOW)
    clock.advance(WINDOW)
    answer = {"get": lambda: counter.get(KEY), "ttl": lambda: counter.ttl(KEY), "incr": lambda: counter.incr(KEY),
              "expire": lambda: counter.expire(KEY, WINDOW), "delete": lambda: counter.delete(KEY)}[ask]()
    assert answer == {"get": None, "ttl": -2, "incr": 1, "expire": False, "delete": 0}[ask]


def test_a_key_whose_ttl_just_reached_0_is_not_counted_in_memory():
    clock = FakeClock()
    counter = MemoryCounter(clock)
    counter.incr_and_expire(KEY, WINDOW)
    clock.advance(WINDOW)
    assert len(counter) == 0


@pytest.mark.parametrize("left, ttl", [
    pytest.param(0.5, 1, id="half a second left reads 1"),
    pytest.param(0.499, 0, id="just under half a second left reads 0"),
    pytest.param(1.5, 2, id="one and a half seconds left read 2"),
])
def test_ttl_rounds_what_is_left_to_the_nearest_second_as_redis_does(counter_env, left, ttl):
    counter, clock = counter_env
    counter.incr_and_expire(KEY, WINDOW)
    clock.advance(WINDOW - left)
    assert counter.ttl(KEY) == ttl


def test_memory_holds_only_live_keys_even_when_dead_ones_are_never_asked_for_again():
    clock = FakeClock()
    counter = MemoryCounter(clock)
    tracemalloc.start()
    try:
        for n in range(20_000):  # each key dies before the next is written
            counter.incr_and_expire(f"recording_retry_attempts:7:CA{n}", 1)
            clock.advance(2)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grown < 1_000_000, f"{grown} bytes held for keys that are all dead"
