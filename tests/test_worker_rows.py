"""Worker ids and worker rows at start-up (CONTRACT 4): which rows a starting process may remove.

A worker id is ``host:pid:run``. At start, ``recover_orphans`` removes the
rows of this host's processes that are gone, and of this very pid under
another run (a restarted container reuses pids); it leaves live processes,
other hosts and its own row alone.
"""

from __future__ import annotations

import os

import pytest
from conftest import FakeClock
from test_crash_recovery import OWN_WORKER, T0, dead_pid, files, live_pid, store  # noqa: F401  (fixtures)

from recsvc.storage.files import HOSTNAME
from recsvc.core.worker import new_worker_id, parse_worker_id, recover_orphans


@pytest.mark.parametrize("worker_id, owner", [
    pytest.param("box:123:abcdef01", ("box", 123), id="host, pid and run"),
    pytest.param("a:b:c:42:abcdef01", ("a:b:c", 42), id="a host with colons keeps them"),
    pytest.param("box:pid:abcdef01", None, id="a pid that is not a number"),
    pytest.param("box:123", None, id="no run part"),
    pytest.param("somebody-else", None, id="not one of ours"),
    pytest.param("", None, id="empty"),
])
def test_a_worker_id_names_its_host_and_pid(worker_id, owner):
    assert parse_worker_id(worker_id) == owner


def test_a_new_worker_id_names_this_host_and_pid():
    assert parse_worker_id(new_worker_id()) == (HOSTNAME, os.getpid())


def test_start_up_removes_the_rows_of_this_hosts_gone_processes_and_keeps_the_rest(store, files, live_pid):  # noqa: F811
    dead = dead_pid()
    rows = {
        f"{HOSTNAME}:{dead}:aaaa0001": (HOSTNAME, dead, "gone"),
        f"{HOSTNAME}:{os.getpid()}:aaaa0002": (HOSTNAME, os.getpid(), "gone"),  # this pid, an earlier run
        f"{HOSTNAME}:{live_pid}:aaaa0003": (HOSTNAME, live_pid, "kept"),
        OWN_WORKER: (HOSTNAME, os.getpid(), "kept"),
        f"elsewhere:{dead}:aaaa0004": ("elsewhere", dead, "kept"),  # another host's pids mean nothing here
    }
    with store.writing() as tx:
        for worker_id, (host, pid, _) in rows.items():
            tx.upsert_worker(worker_id, host, pid, 1, 5.0, T0)

    recover_orphans(store, files, FakeClock(T0), OWN_WORKER)

    with store.reading() as tx:
        left = {row[0] for row in tx.all_workers()}
    assert left == {worker_id for worker_id, (*_, fate) in rows.items() if fate == "kept"}
