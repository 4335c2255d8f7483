"""The retry counter of ``--counter sqlite://``: the shared contract, then what only a shared file can get wrong.

``CounterContract`` runs against a real database file with a fake clock.
Then: two stores (two connection pools, as two processes have) and real
processes on one file count exactly and agree on TTLs; a count made inside
the service's write transaction joins it; a locked or closed database is a
CounterError, never a hang; expired rows do not pile up.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import ROOT, FakeClock
from counter_contract import KEY, LONG, OTHER, CounterContract

from recsvc.storage.counter import CounterError
from recsvc.storage.counters import open_counter
from recsvc.storage.sqlite_counter import SWEEP_BATCH, SqliteCounter
from recsvc.storage.store import Store

BUSY_TIMEOUT = 0.2  # seconds; the stores of these tests give up on a lock this soon


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "recsvc.sqlite3")


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def open_store(db_path):
    """``open_store()``: one more Store (its own connections) on the test's database file."""
    stores: list[Store] = []

    def build(busy_timeout: float = BUSY_TIMEOUT) -> Store:
        stores.append(Store(db_path, busy_timeout=busy_timeout))
        return stores[-1]

    yield build
    for store in stores:
        store.close()


def rows_in(db_path: str) -> int:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT COUNT(*) FROM retry_counters").fetchone()[0]


# ---- the contract ----


class TestSqliteCounter(CounterContract):
    @pytest.fixture
    def counter_env(self, open_store, clock):
        yield SqliteCounter(open_store(busy_timeout=5.0), clock), clock.advance


def test_the_sqlite_url_gives_a_counter_in_the_stores_database(open_store, clock, db_path):
    counter = open_counter("sqlite://", clock, store=open_store())
    assert isinstance(counter, SqliteCounter)
    counter.incr_and_expire(KEY, LONG)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT key, value, expires_at FROM retry_counters").fetchall() == [
            (KEY, 1, clock() + LONG)]


def test_the_sqlite_url_without_a_store_is_refused():
    with pytest.raises(ValueError, match="service's database"):
        open_counter("sqlite://")


# ---- expired rows ----


def test_expired_rows_are_deleted_as_later_counts_go_by(open_store, clock, db_path):
    counter = SqliteCounter(open_store(), clock)
    for n in range(1000):
        counter.incr_and_expire(f"recording_retry_attempts:7:CA{n}", 0.5)
    assert rows_in(db_path) == 1000
    clock.advance(0.75)
    for _ in range(500):
        counter.incr_and_expire(KEY, LONG)
    assert rows_in(db_path) == 1


def test_one_count_deletes_at_most_a_few_expired_rows(open_store, clock, db_path):
    counter = SqliteCounter(open_store(), clock)
    for n in range(100):
        counter.incr_and_expire(f"recording_retry_attempts:7:CA{n}", 0.5)
    clock.advance(0.75)
    counter.incr(KEY)
    assert rows_in(db_path) == 100 - SWEEP_BATCH + 1


def test_an_expired_row_is_absent_before_any_sweep_deletes_it(open_store, clock, db_path):
    counter = SqliteCounter(open_store(), clock)
    counter.incr_and_expire(KEY, 0.5)
    clock.advance(0.75)
    assert rows_in(db_path) == 1
    assert (counter.get(KEY), counter.ttl(KEY), counter.expire(KEY, LONG), counter.delete(KEY)) == (None, -2, False, 0)


# ---- one file, several connection pools and processes ----


def test_two_stores_on_one_file_share_the_count_and_its_ttl(open_store, clock):
    first, second = SqliteCounter(open_store(), clock), SqliteCounter(open_store(), clock)
    assert first.incr_and_expire(KEY, LONG) == 1
    assert second.incr_and_expire(KEY, 10) == 2
    assert first.ttl(KEY) == 10
    clock.advance(4)
    assert second.ttl(KEY) == 6
    assert first.delete(KEY) == 1
    assert second.get(KEY) is None


def test_two_stores_counting_at_once_from_8_threads_each_reach_exactly_the_sum(open_store, clock):
    counters = [SqliteCounter(open_store(busy_timeout=5.0), clock) for _ in range(2)]
    start = threading.Barrier(16)
    answers: list[int] = []
    errors: list[BaseException] = []

    def count(counter: SqliteCounter) -> None:
        try:
            start.wait(timeout=10)
            for _ in range(25):
                answers.append(counter.incr_and_expire(KEY, LONG))
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=count, args=(counters[n % 2],)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert counters[0].get(KEY) == counters[1].get(KEY) == 400
    assert sorted(answers) == list(range(1, 401)), "every INCR answered a count of its own"


COUNTING_PROCESS = textwrap.dedent("""
    import sys, time
    from recsvc.storage.sqlite_counter import SqliteCounter
    from recsvc.storage.store import Store
    path, start_at, times = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    store = Store(path)
    counter = SqliteCounter(store)
    time.sleep(max(0.0, start_at - time.time()))  # every process starts counting at once
    print(" ".join(str(counter.incr_and_expire("recording_retry_attempts:7:CA1", 100)) for _ in range(times)))
    store.close()
""")


def test_four_processes_counting_at_once_reach_exactly_the_sum(open_store, db_path):
    open_store()  # the schema exists before the processes race to open it
    start_at = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", COUNTING_PROCESS, db_path, str(start_at), "100"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": ROOT}) for _ in range(4)]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        answers += [int(n) for n in out.split()]
    assert sorted(answers) == list(range(1, 401)), "every INCR answered a count of its own"
    assert SqliteCounter(open_store()).get(KEY) == 400


# ---- inside the service's write transaction ----


def test_a_count_inside_the_stores_write_transaction_joins_it_instead_of_waiting_for_its_lock(open_store, clock):
    store = open_store(busy_timeout=5.0)
    counter = SqliteCounter(store, clock)
    started = time.monotonic()
    with store.writing():
        assert counter.get(KEY) is None
        assert counter.incr_and_expire(KEY, LONG) == 1
        assert counter.ttl(KEY) == LONG
    assert time.monotonic() - started < 1.0, "the count waited for the lock its own thread held"
    assert SqliteCounter(open_store(), clock).get(KEY) == 1


def test_a_count_inside_a_rolled_back_write_transaction_is_undone_with_it(open_store, clock):
    store = open_store()
    counter = SqliteCounter(store, clock)
    counter.incr_and_expire(KEY, LONG)
    with pytest.raises(ZeroDivisionError):
        with store.writing():
            assert counter.incr_and_expire(KEY, LONG) == 2
            1 / 0
    assert counter.get(KEY) == 1


def test_another_threads_write_transaction_is_not_joined(open_store, clock):
    store = open_store()
    counter = SqliteCounter(store, clock)
    inside, done = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with store.writing():
            inside.set()
            done.wait(10)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert inside.wait(10)
        with pytest.raises(CounterError):
            counter.incr(KEY)
    finally:
        done.set()
        holder.join(10)
    assert counter.incr(KEY) == 1


# ---- a database that does not answer ----


@pytest.fixture
def locked(open_store, clock, db_path):
    """A counter, and another connection holding the database's write lock (BEGIN EXCLUSIVE) until the test ends."""
    counter = SqliteCounter(open_store(), clock)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    yield counter, conn
    conn.rollback()
    conn.close()


@pytest.mark.parametrize("method, args", [
    pytest.param("incr", (KEY,), id="INCR"),
    pytest.param("incr_and_expire", (KEY, LONG), id="INCR-and-EXPIRE"),
    pytest.param("expire", (KEY, LONG), id="EXPIRE"),
    pytest.param("delete", (KEY,), id="DEL"),
])
def test_a_write_to_a_database_locked_past_the_busy_timeout_is_a_counter_error(locked, method, args):
    counter, _ = locked
    started = time.monotonic()
    with pytest.raises(CounterError, match="locked"):
        getattr(counter, method)(*args)
    assert BUSY_TIMEOUT <= time.monotonic() - started < BUSY_TIMEOUT + 1.0


def test_a_locked_database_still_answers_reads_and_counts_again_once_released(locked):
    counter, lock_holder = locked
    assert (counter.get(KEY), counter.ttl(KEY)) == (None, -2)  # WAL: readers never wait for the writer
    with pytest.raises(CounterError):
        counter.incr(KEY)
    lock_holder.rollback()
    assert counter.incr(KEY) == 1
    assert counter.incr(OTHER) == 1


def test_any_other_sqlite_error_is_a_counter_error(open_store, clock, db_path):
    counter = SqliteCounter(open_store(), clock)
    counter.incr(KEY)
    with sqlite3.connect(db_path) as conn:
        conn.execute("DROP TABLE retry_counters")
    for name, args in [("incr", (KEY,)), ("incr_and_expire", (KEY, LONG)), ("expire", (KEY, LONG)),
                       ("get", (KEY,)), ("ttl", (KEY,)), ("delete", (KEY,))]:
        with pytest.raises(CounterError, match="no such table"):
            getattr(counter, name)(*args)
