"""The SQLite schema: its version, migrating once and from older files, and the one-active-job rule at the SQL level (invariant 1)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest

from recsvc.storage.store import MIGRATIONS, Store

T0 = 1_800_000_000.0


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "recsvc.sqlite3")


def test_a_new_database_is_at_the_version_of_the_last_migration(db_path):
    store = Store(db_path)
    try:
        assert store.schema_version() == len(MIGRATIONS)
    finally:
        store.close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


def test_opening_a_database_twice_migrates_it_once(db_path, caplog):
    caplog.set_level(logging.INFO, logger="recsvc.storage.store")
    first = Store(db_path)
    with first.writing() as tx:
        tx.insert_business("acme", "hash-of-acme", T0)
    second = Store(db_path)  # a second process on the same data dir
    try:
        migrated = [r for r in caplog.records if "migrated" in r.getMessage()]
        assert len(migrated) == len(MIGRATIONS)
        assert second.schema_version() == len(MIGRATIONS)
        with second.reading() as tx:
            assert tx.business_for_token("hash-of-acme") == 1, "the second open kept the data"
    finally:
        first.close()
        second.close()


def test_a_database_newer_than_this_release_is_refused(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        Store(db_path)


def test_a_version_2_database_gains_the_retry_counter_table_and_keeps_its_rows(db_path):
    conn = sqlite3.connect(db_path, isolation_level=None)
    for script in MIGRATIONS[:2]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO businesses (name, token_hash, created_at) VALUES ('acme', 'hash-of-acme', ?)", (T0,))
    conn.close()
    store = Store(db_path)
    try:
        assert store.schema_version() == 3
        with store.reading() as tx:
            assert tx.business_for_token("hash-of-acme") == 1
    finally:
        store.close()
    conn = sqlite3.connect(db_path)
    try:
        columns = [(row[1], row[2], row[5]) for row in conn.execute("PRAGMA table_info(retry_counters)")]
        assert columns == [("key", "TEXT", 1), ("value", "INTEGER", 0), ("expires_at", "REAL", 0)]
        indexes = [row[1] for row in conn.execute("PRAGMA index_list(retry_counters)")]
        assert "retry_counters_by_expiry" in indexes, "the sweep of expired keys needs its index"
    finally:
        conn.close()


def _job(conn, call_sid: str, status: str, business_id: int = 1) -> None:
    conn.execute("INSERT INTO jobs (business_id, call_sid, recording_url, status, attempt, queue_seq, created_at) "
                 "VALUES (?, ?, 'http://127.0.0.1:9/r.wav', ?, 0, 1, ?)", (business_id, call_sid, status, T0))


@pytest.mark.parametrize("first,second", [
    pytest.param("queued", "queued", id="two queued"),
    pytest.param("queued", "running", id="queued and running"),
    pytest.param("running", "running", id="two running"),
])
def test_the_database_itself_refuses_a_second_active_job_for_one_call(db_path, first, second):
    Store(db_path).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        _job(conn, "CA1", first)
        with pytest.raises(sqlite3.IntegrityError):
            _job(conn, "CA1", second)
    finally:
        conn.close()


def test_finished_jobs_and_other_calls_do_not_count_against_the_one_active_job(db_path):
    Store(db_path).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        for status in ("failed", "completed", "failed", "queued"):
            _job(conn, "CA1", status)
        _job(conn, "CA2", "queued")
        _job(conn, "CA1", "queued", business_id=2)  # the same call_sid of another business
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 6
    finally:
        conn.close()


def test_a_status_outside_the_four_is_refused(db_path):
    Store(db_path).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            _job(conn, "CA1", "paused")
    finally:
        conn.close()


def test_a_burst_of_readers_shares_a_few_connections(tmp_path):
    store = Store(str(tmp_path / "burst.sqlite3"))
    gate, seen = threading.Barrier(40), []

    def read() -> None:
        gate.wait(5)
        with store.reading() as tx:
            seen.append(store.open_connections)
            time.sleep(0.005)  # long enough that the 40 overlap
            tx.paused()

    threads = [threading.Thread(target=read) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(seen) == 40  # every reader got its turn
    assert max(seen) == Store.READ_CONNECTIONS + Store.WRITE_CONNECTIONS
    store.close()


def hold_every_read_connection(store, release: threading.Event) -> list[threading.Thread]:
    """Threads that each hold one of the store's read connections until ``release``."""
    holding = threading.Barrier(Store.READ_CONNECTIONS + 1)

    def hold() -> None:
        with store.reading():
            holding.wait(5)
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(Store.READ_CONNECTIONS)]
    for thread in threads:
        thread.start()
    holding.wait(5)
    return threads


def test_a_reader_that_waits_past_the_busy_timeout_gets_store_busy(tmp_path):
    from recsvc.storage.store import StoreBusy
    store = Store(str(tmp_path / "busy.sqlite3"), busy_timeout=0.2)
    release = threading.Event()
    holders = hold_every_read_connection(store, release)
    try:
        started = time.monotonic()
        with pytest.raises(StoreBusy, match="no database connection came free"):
            with store.single() as tx:
                tx.paused()
        assert 0.2 <= time.monotonic() - started < 2
    finally:
        release.set()
        for thread in holders:
            thread.join(5)
    with store.single() as tx:  # the pool is whole again
        assert tx.paused() is False
    store.close()


def test_a_read_inside_a_write_never_waits_for_the_pool(tmp_path):
    """The thread holds the write connection; with every read connection taken
    it gets an extra one at once (closed after), so it cannot wait for itself."""
    store = Store(str(tmp_path / "nested.sqlite3"), busy_timeout=5)
    release = threading.Event()
    holders = hold_every_read_connection(store, release)
    try:
        before = store.open_connections
        with store.writing() as tx:
            tx.set_paused(True)
            started = time.monotonic()
            with store.reading() as inner:
                assert inner.paused() is False  # its own snapshot: the write is not committed yet
            assert time.monotonic() - started < 1
        assert store.open_connections == before
    finally:
        release.set()
        for thread in holders:
            thread.join(5)
    with store.single() as tx:
        assert tx.paused() is True
    store.close()
