"""With ``--counter sqlite://``, two recsvc processes on one data dir share one fail-fast count
through their database file, with no server to run.

Real processes and real time with short timings (``--job-timeout 0.4``), as
for redis:// (tests/test_redis_shared.py): the same scenario, another backend.
"""

from __future__ import annotations

import sqlite3

from shared_counter import assert_retries_alternating_between_two_servers_share_one_count, counter_warnings, two_servers


def test_two_processes_share_one_fail_fast_count_in_their_database(tmp_path, upstream):
    data_dir = tmp_path / "data"
    with two_servers(data_dir, "sqlite://") as (base_a, base_b, procs):
        assert_retries_alternating_between_two_servers_share_one_count(base_a, base_b, upstream, "CAshared")
        for proc in procs:  # the count never failed open: no outage was logged
            assert counter_warnings(proc) == []
    with sqlite3.connect(data_dir / "recsvc.sqlite3") as conn:
        rows = conn.execute("SELECT key, value FROM retry_counters").fetchall()
    assert rows == [("recording_retry_attempts:1:CAshared", 3)]
