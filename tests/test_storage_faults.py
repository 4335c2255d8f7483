"""CONTRACT 3 v3, storage faults: a full disk and a read-only database under a real ``serve``, and
heartbeats that cannot be written.

The disk fills up under the running service: every answer is 503
``storage_unavailable`` with Retry-After (or a file already cached), never
500 and never "no live worker"; the log holds no traceback and no line per
try; once space is freed every call plays with its exact bytes. Mounting
needs root (CI runs as root); elsewhere the test is skipped with the reason.

The database made read-only the one real way that holds while SQLite keeps
it open: ``chattr +i``. ``mount -o remount,ro`` (and a read-only bind
remount) fails with EBUSY while files are open for writing, and root ignores
file modes, but ext4 refuses every write to an immutable file, through
descriptors opened before too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import subprocess
import time

import pytest

from conftest import FakeClock, Harness, make_settings
from processes import SERVE_ARGS, Client
from recsvc.run import app as app_module
from recsvc.storage import store as store_module
from recsvc.run.app import DATABASE_FILE, App
from recsvc.demo.audio import sized_wav
from recsvc.storage.store import Store, StoreBusy, StoreUnavailable


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs of ``size`` at ``tmp_path/data``; skipped where mounting is not allowed."""
    path = tmp_path / "data"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the data dir needs root (CI runs as root)")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path) -> None:
    """Write zeros into ``path`` until the disk says it is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(65536))
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(512))
    finally:
        os.close(fd)


def serve_with_calls(processes, data_dir, upstream, prefix: str, size: int):
    """A real ``serve`` with one call already cached and four more not asked for yet:
    (serve, client, token, cached bytes, call_sid -> bytes)."""
    serve = processes.start("serve", data_dir, *SERVE_ARGS, "--workers", "2", "--heartbeat-interval", "0.2",
                            "--job-timeout", "5", "--retry-after", "1")
    client = Client(serve.base_url())
    token = client.business()
    cached = sized_wav(size, seed="cached")
    client.put_call(token, "CA-CACHED", upstream.set("/cached.wav", body=cached))
    assert client.play_until(token, "CA-CACHED").body == cached
    bodies = {f"{prefix}-{i}": sized_wav(size, seed=str(i)) for i in range(4)}
    for sid, body in bodies.items():
        client.put_call(token, sid, upstream.set(f"/{sid}.wav", body=body))
    return serve, client, token, cached, bodies


def poll_through_the_fault(serve, client, token, cached: bytes, bodies: dict, allowed: tuple[int, ...],
                           seconds: float = 3) -> dict[int, int]:
    """Players polling a service with a storage fault for ``seconds`` (longer than 3 heartbeat
    intervals, so row 7 is on the table): every answer is in ``allowed``, a 503 is
    ``storage_unavailable``/``storage_busy`` with Retry-After, the cached call still plays, /readyz
    names the fault, and the log has no traceback and no line per try. Returns the statuses seen."""
    lines_before = len(serve.lines)
    statuses: dict[int, int] = {}
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for sid in bodies:
            answer = client.play(token, sid)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            assert answer.status in allowed, (sid, answer.status, answer.body)
            if answer.status == 503:
                assert answer.json["error"] in ("storage_unavailable", "storage_busy"), answer.body
                assert answer.header("Retry-After") == "1" and answer.json["retry_after"] == 1
        answer = client.play(token, "CA-CACHED")
        assert answer.status == 200 and answer.body == cached, "a cached file stopped being served"
        time.sleep(0.1)
    ready = client.request("GET", "/readyz")
    fault_lines = [line for line in serve.lines[lines_before:] if " recsvc.access: " not in line]
    print(f"\nduring the fault: {statuses}, {len(fault_lines)} log lines in {seconds:g} s; "
          f"/readyz {ready.status} {ready.body!r}")
    assert statuses.get(503, 0) > 0, "the fault was never answered 503"
    assert (ready.status, ready.json["status"]) == (503, "not_ready")
    assert ready.json["reason"].startswith("storage unavailable"), ready.json
    assert not [line for line in fault_lines if "Traceback" in line], "\n".join(fault_lines)
    assert len(fault_lines) < 20, "a log line per try:\n" + "\n".join(fault_lines[-40:])
    return statuses


def assert_every_call_plays(serve, client, token, bodies: dict) -> None:
    for sid, body in bodies.items():
        assert client.play_until(token, sid, timeout=15).body == body, f"{sid}: wrong bytes"
    assert client.request("GET", "/readyz").status == 200
    assert not [line for line in serve.lines if "Traceback" in line]


def test_a_full_disk_answers_503_with_retry_after_and_the_calls_play_once_space_is_freed(
        processes, small_tmpfs, upstream):
    serve, client, token, cached, bodies = serve_with_calls(processes, small_tmpfs, upstream, "CA-FULL", 300_000)
    filler = small_tmpfs / "filler"
    fill(filler)
    poll_through_the_fault(serve, client, token, cached, bodies, allowed=(202, 503))
    os.unlink(filler)
    assert_every_call_plays(serve, client, token, bodies)


# ---------------------------------------------------------------- the database made read-only


@contextlib.contextmanager
def immutable(*paths):
    """``chattr +i`` on ``paths`` for the block: the files become read-only to every process, root
    included, and ext4 refuses writes even through descriptors opened before (SQLite's open
    connections see SQLITE_IOERR_WRITE, new ones SQLITE_READONLY). Skips where chattr cannot."""
    if os.geteuid() != 0:
        pytest.skip("chattr +i (an immutable, read-only database) needs root (CI runs as root)")
    result = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=False)


def test_a_database_made_read_only_for_a_few_seconds_answers_503_then_recovers(processes, tmp_path, upstream):
    data = tmp_path / "data"
    serve, client, token, cached, bodies = serve_with_calls(processes, data, upstream, "CA-RO", 60_000)
    database = data / DATABASE_FILE
    with immutable(database, f"{database}-wal"):  # not -shm: SQLite maps it, a write there would be SIGBUS
        poll_through_the_fault(serve, client, token, cached, bodies, allowed=(503,))
    assert_every_call_plays(serve, client, token, bodies)


# ---------------------------------------------------------------- row 7 while heartbeats cannot be written


BUSY_TIMEOUT = 0.2


def test_missing_heartbeats_that_could_not_be_written_are_a_storage_fault_not_no_live_worker(
        tmp_path, upstream, monkeypatch):
    monkeypatch.setattr(app_module, "Store", functools.partial(Store, busy_timeout=BUSY_TIMEOUT))
    clock = FakeClock()
    # A heartbeat interval of 5 s: the liveness window (15 s of real time for the storage fault,
    # of fake time for the beats) is far longer than the test, however slow the machine.
    app = App(make_settings(tmp_path / "data", workers=1, heartbeat_interval=5, retry_after=3), clock=clock).start()
    h = Harness(app, clock, upstream)
    try:
        token = h.business()
        h.put_call(token, "CA-QUEUED", upstream.set("/q.wav", body=sized_wav(10_000), hang=True))
        h.put_call(token, "CA-NOJOB", upstream.set("/n.wav", body=sized_wav(10_000)))
        assert h.play(token, "CA-QUEUED").status == 202  # an active job: row 7 would create nothing
        locker = sqlite3.connect(os.path.join(tmp_path / "data", DATABASE_FILE), isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # someone else holds the write lock past the busy timeout
        try:
            clock.advance(20)  # every heartbeat is now older than 3 intervals
            with pytest.raises(StoreBusy):
                app.pool.heartbeat()
            for sid in ("CA-QUEUED", "CA-NOJOB"):
                answer = h.play(token, sid)
                assert (answer.status, answer.json["error"]) == (503, "storage_busy"), (sid, answer.body)
                assert answer.header("Retry-After") == "3"
            ready = h.request("GET", "/readyz")
            assert ready.status == 503 and ready.json["reason"].startswith("storage busy"), ready.body
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # Storage works again, the next beat is not written yet: still not "no live worker".
        answer = h.play(token, "CA-QUEUED")
        assert (answer.status, answer.json["error"]) == (503, "storage_busy"), answer.body
        app.pool.heartbeat()  # the beat is written: the worker is live
        assert h.play(token, "CA-NOJOB").status == 202
    finally:
        upstream.release()
        app.stop(grace=0.5)


# ---------------------------------------------------------------- log lines and metrics after the commit


def test_a_stuck_job_and_a_retry_that_were_not_committed_are_not_logged_or_counted(make_harness, upstream, monkeypatch,
                                                                               caplog):
    h = make_harness(workers=0, job_timeout=5)
    with h.app.store.writing() as tx:  # a live worker elsewhere that never claims
        tx.upsert_worker("elsewhere:1:00000000", "elsewhere", 1, 1, 3600.0, h.clock())
    token = h.business()
    h.put_call(token, "CA-NOCOMMIT", upstream.set("/nc.wav", body=sized_wav(10_000)))
    assert h.play(token, "CA-NOCOMMIT").status == 202
    h.clock.advance(6)  # the queued job is stuck; marking it and queueing the retry is one transaction

    def disk_full(*args, **kwargs):
        raise StoreUnavailable("database or disk is full (SQLITE_FULL)")

    monkeypatch.setattr(store_module.Tx, "insert_job", disk_full)
    with caplog.at_level(logging.WARNING):
        answer = h.play(token, "CA-NOCOMMIT")
    assert (answer.status, answer.json["error"]) == (503, "storage_unavailable")
    (job,) = h.jobs("CA-NOCOMMIT")
    assert job["status"] == "queued", "the rolled-back transaction changed the job"
    assert not [r for r in caplog.records if "[STUCK]" in r.getMessage() or "[FAIL_FAST]" in r.getMessage()]
    assert 'recsvc_stuck_jobs_total{reason="queued"} 0' in h.request("GET", "/metrics").body.decode()
    assert "recsvc_retries_total 0" in h.request("GET", "/metrics").body.decode()
    counter = h.admin("GET", "/admin/retry-counters/1/CA-NOCOMMIT").json
    assert counter["attempts"] == 0, "the retry that did not commit was still counted"

    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        assert h.play(token, "CA-NOCOMMIT").status == 202
    assert [r.getMessage() for r in caplog.records if "[STUCK]" in r.getMessage()] == [
        f"[STUCK] job={job['id']} call_sid=CA-NOCOMMIT reason=queued 6s without worker pickup"]
    assert 'recsvc_stuck_jobs_total{reason="queued"} 1' in h.request("GET", "/metrics").body.decode()
    assert h.admin("GET", "/admin/retry-counters/1/CA-NOCOMMIT").json["attempts"] == 1


def test_download_threads_that_cannot_claim_back_off_and_log_one_line_per_outage(tmp_path, upstream, monkeypatch,
                                                                                 caplog):
    monkeypatch.setattr(app_module, "Store", functools.partial(Store, busy_timeout=BUSY_TIMEOUT))
    clock = FakeClock()
    app = App(make_settings(tmp_path / "data", workers=2, heartbeat_interval=0.2), clock=clock).start()
    h = Harness(app, clock, upstream)
    try:
        token = h.business()
        body = sized_wav(10_000)
        h.put_call(token, "CA-AFTER", upstream.set("/after.wav", body=body))
        locker = sqlite3.connect(os.path.join(tmp_path / "data", DATABASE_FILE), isolation_level=None)
        with caplog.at_level(logging.INFO, logger="recsvc"):
            locker.execute("BEGIN IMMEDIATE")
            try:
                time.sleep(2.0)  # about ten claims per thread would fail in this time
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            assert h.play(token, "CA-AFTER").status == 202
            h.wait_for_job("CA-AFTER", timeout=5)
            assert h.play(token, "CA-AFTER").body == body
        worker_lines = [r.getMessage() for r in caplog.records if r.name == "recsvc.core.worker"]
        claims = [m for m in worker_lines if m.startswith("download threads cannot claim jobs")]
        assert len(claims) == 2, worker_lines  # "storage fault ..." when it starts, "works again" when it ends
        assert "storage fault" in claims[0] and "works again" in claims[1]
        # (An app of an earlier test may still be ending a hung download: its shutdown line is not a try.)
        tracebacks = [r for r in caplog.records
                      if r.exc_info and r.getMessage() != "download thread ended during shutdown"]
        assert not tracebacks, "a traceback per try"
        assert len([m for m in worker_lines if "heartbeat: storage" in m]) <= 2
    finally:
        app.stop(grace=0.5)


# ---------------------------------------------------------------- which SQLite errors are storage faults


def _sqlite_error(tmp_path, fault: str) -> sqlite3.Error:
    path = tmp_path / "fault.sqlite3"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    setup.close()
    conn = sqlite3.connect(f"file:{path}?mode=ro" if fault == "read-only" else str(path), uri=True,
                           isolation_level=None, timeout=0.05)
    holder = None
    try:
        if fault == "full":
            conn.execute("PRAGMA max_page_count = 2")
        if fault == "locked":
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
        statement = "INSERT INTO nowhere VALUES (1)" if fault == "bug" else "INSERT INTO t VALUES (zeroblob(65536))"
        conn.execute(statement)
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
        if holder is not None:
            holder.close()
    raise AssertionError(f"{fault}: no error")


@pytest.mark.parametrize("fault, expected", [
    pytest.param("read-only", StoreUnavailable, id="SQLITE_READONLY-is-storage_unavailable"),
    pytest.param("full", StoreUnavailable, id="SQLITE_FULL-is-storage_unavailable"),
    pytest.param("locked", StoreBusy, id="SQLITE_BUSY-is-storage_busy"),
    pytest.param("bug", type(None), id="a-bug-of-ours-is-not-a-storage-fault"),
])
def test_sqlite_errors_are_storage_faults_by_their_result_code(tmp_path, fault, expected):
    assert isinstance(store_module.storage_fault(_sqlite_error(tmp_path, fault)), expected)
