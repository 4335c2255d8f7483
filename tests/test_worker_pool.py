"""The download workers in-process: queue order, heartbeat and liveness, lost ownership, the supervisor, storage errors.

The pool is stepped by hand (``run_once()``, ``heartbeat()``) with a fake
clock wherever a rule is about time; where threads matter (the supervisor,
a download that outlives its job) the pool runs for real against the fake
upstream on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from conftest import FakeClock, Harness, make_settings, wait_until
from recsvc.demo.audio import sized_wav, tune_for
from recsvc.storage.files import HOSTNAME, TEMP_SUFFIX, RecordingFiles
from recsvc.core.metrics import Metrics
from recsvc.storage.store import Store
from recsvc.core.worker import WorkerPool
from recsvc.run.app import App

T0 = 1_800_000_000.0


def hand_stepped_pool(app) -> WorkerPool:
    """A worker of this process that claims only when the test calls run_once()."""
    pool = WorkerPool(app.store, app.files, app.downloader, threads=1, heartbeat_interval=5, clock=app.clock,
                      metrics=app.metrics)
    pool.register()
    return pool


def temp_files(files: RecordingFiles) -> list[str]:
    return [name for _folder, _dirs, names in os.walk(files.root) for name in names if name.endswith(TEMP_SUFFIX)]


def wait_for(predicate, timeout: float = 5, what: str = "the condition") -> None:
    assert wait_until(predicate, timeout), f"{what} did not happen within {timeout}s"


# ---------------------------------------------------------------- queue order (CONTRACT 3)

def test_jobs_are_claimed_in_the_order_their_call_was_first_asked_for_and_a_retry_keeps_its_place(
        make_harness, upstream):
    h = make_harness(workers=0)
    pool = hand_stepped_pool(h.app)
    token = h.business()
    body_a, body_b = tune_for("A"), tune_for("B")
    h.put_call(token, "CA-A", upstream.set("/a.wav", status=403, body=b"denied", content_type="text/plain"))
    h.put_call(token, "CA-B", upstream.set("/b.wav", body=body_b))

    assert h.play(token, "CA-A").status == 202
    assert h.play(token, "CA-B").status == 202
    assert pool.run_once() is True
    (first_a,) = h.jobs("CA-A")
    assert (first_a["status"], first_a["error_code"]) == ("failed", "upstream_auth_failed"), "A was asked first"
    assert [j["status"] for j in h.jobs("CA-B")] == ["queued"]

    upstream.set("/a.wav", body=body_a)
    retry = h.play(token, "CA-A")
    assert retry.status == 202 and retry.json["attempt"] == 1  # row 10b: a retry job, created after B's job
    assert pool.run_once() is True
    assert h.jobs("CA-A")[0]["status"] == "completed", "the retry of A kept A's place ahead of B"
    assert [j["status"] for j in h.jobs("CA-B")] == ["queued"]
    assert pool.run_once() is True
    assert h.jobs("CA-B")[0]["status"] == "completed"
    assert pool.run_once() is False
    assert h.play(token, "CA-A").body == body_a


# ---------------------------------------------------------------- heartbeat and liveness (CONTRACT 1, 4)

@pytest.fixture
def store(tmp_path):
    opened = Store(str(tmp_path / "recsvc.sqlite3"))
    yield opened
    opened.close()


def running_job(store, call_sid: str, worker_id: str, now: float) -> int:
    with store.writing() as tx:
        if not tx.business_exists(1):
            tx.insert_business("acme", "hash-of-acme", now)
        url = f"http://127.0.0.1:9/{call_sid}.wav"
        tx.insert_call(1, call_sid, url, None, now)
        job_id = tx.insert_job(1, call_sid, url, 0, now)
        assert tx.claim_next_job(worker_id, now).id == job_id
        return job_id


def test_the_heartbeat_refreshes_the_worker_row_and_the_heartbeat_of_its_running_jobs_only(store, tmp_path):
    clock = FakeClock(T0)
    pool = WorkerPool(store, RecordingFiles(str(tmp_path)), None, threads=1, heartbeat_interval=1.0, clock=clock,
                      metrics=Metrics())
    pool.register()
    mine = running_job(store, "CA-MINE", pool.worker_id, T0)
    theirs = running_job(store, "CA-THEIRS", "another-host.example:1:00000000", T0)

    clock.advance(2.5)
    pool.heartbeat()
    with store.reading() as tx:
        rows = {row[0]: row for row in tx.all_workers()}
        assert rows[pool.worker_id][6] == T0 + 2.5
        assert (rows[pool.worker_id][1], rows[pool.worker_id][2]) == (HOSTNAME, os.getpid())
        assert rows[pool.worker_id][4] == 1.0, "the row names its own heartbeat interval"
        assert tx.get_job(mine).heartbeat_at == T0 + 2.5
        assert tx.get_job(theirs).heartbeat_at == T0, "a beat refreshes only this process's jobs"


def test_a_worker_is_live_until_its_beat_is_three_of_its_intervals_old(store, tmp_path):
    clock = FakeClock(T0)
    pool = WorkerPool(store, RecordingFiles(str(tmp_path)), None, threads=1, heartbeat_interval=1.0, clock=clock,
                      metrics=Metrics())
    pool.register()
    with store.reading() as tx:
        assert tx.live_worker(T0 + 2.9)
        assert not tx.live_worker(T0 + 3.0), "a row 3 intervals old is not live"
    clock.advance(3.0)
    pool.heartbeat()
    with store.reading() as tx:
        assert tx.live_worker(T0 + 3.0), "a beat makes it live again"


def test_liveness_is_judged_by_each_workers_own_interval(store):
    with store.writing() as tx:
        tx.upsert_worker("slow-beater", HOSTNAME, os.getpid(), 1, 10.0, T0)
    with store.reading() as tx:
        assert tx.live_worker(T0 + 29), "20 s without a beat is live for a worker beating every 10 s"
        assert not tx.live_worker(T0 + 30)


def test_a_paused_worker_is_not_live_and_claims_nothing(store, tmp_path):
    clock = FakeClock(T0)
    pool = WorkerPool(store, RecordingFiles(str(tmp_path)), None, threads=1, heartbeat_interval=1.0, clock=clock,
                      metrics=Metrics())
    pool.register()
    with store.writing() as tx:
        tx.insert_business("acme", "hash-of-acme", T0)
        tx.insert_call(1, "CA-P", "http://127.0.0.1:9/p.wav", None, T0)
        tx.insert_job(1, "CA-P", "http://127.0.0.1:9/p.wav", 0, T0)
        tx.set_paused(True)
    with store.reading() as tx:
        assert not tx.live_worker(T0)
    assert pool.run_once() is False
    with store.reading() as tx:
        assert tx.latest_job(1, "CA-P").status == "queued"


def test_a_running_job_whose_worker_stops_beating_is_stuck_after_three_of_that_workers_intervals(
        make_harness, upstream):
    h = make_harness(workers=0, heartbeat_interval=5.0, job_timeout=300)
    pool = hand_stepped_pool(h.app)
    token = h.business()
    h.put_call(token, "CA-HB", upstream.set("/hb.wav", body=sized_wav(10_000)))
    assert h.play(token, "CA-HB").status == 202
    with h.app.store.writing() as tx:  # another process claims it, beating every second, then dies
        tx.upsert_worker("another-host.example:1:00000000", "another-host.example", 1, 1, 1.0, h.clock())
        assert tx.claim_next_job("another-host.example:1:00000000", h.clock()) is not None
    h.clock.advance(3.0)
    pool.heartbeat()  # this process stays live; the other one does not beat
    assert h.app.service.cleanup() == 0, "a beat exactly 3 intervals old is not yet lost"
    h.clock.advance(0.4)
    assert h.app.service.cleanup() == 1
    job = h.jobs("CA-HB")[0]
    assert (job["status"], job["error_code"], job["error_message"]) == ("failed", "stuck",
                                                                        "worker heartbeat lost 3s ago")


# ---------------------------------------------------------------- lost ownership (CONTRACT 4)

def test_a_download_that_outlives_its_job_changes_no_row(make_harness, upstream):
    h = make_harness(workers=1, job_timeout=10)
    token = h.business()
    h.put_call(token, "CA-LATE", upstream.set("/late.wav", body=sized_wav(100_000), hang=True))
    assert h.play(token, "CA-LATE").status == 202
    assert upstream.wait_for_hits("/late.wav", 1)
    assert h.app.pool.busy == 1

    h.clock.advance(11)
    assert h.app.service.cleanup() == 1
    (stuck,) = h.jobs("CA-LATE")
    assert (stuck["status"], stuck["error_code"], stuck["error_message"]) == ("failed", "stuck",
                                                                              "running 11s without completion")
    upstream.release()
    wait_for(lambda: h.app.pool.busy == 0, what="the late download finishing")

    assert h.jobs("CA-LATE") == [stuck], "the finished download changed a job row it no longer owned"
    with h.app.store.reading() as tx:
        assert tx.get_recording(1, "CA-LATE") is None, "a recording row was written for a job not owned"
    assert h.request("GET", "/api/calls/CA-LATE", token=token).json["cached"] is False
    assert temp_files(h.app.files) == []


def test_a_job_claimed_for_this_worker_that_no_thread_holds_is_given_back_at_the_next_heartbeat(
        make_harness, upstream):
    """A claim the store ran whose reply never came (its server died in between): no thread holds the
    job, and its beats, written by this live worker, would keep it from ever looking stuck."""
    h = make_harness(workers=0)
    pool = hand_stepped_pool(h.app)
    token = h.business()
    body = tune_for("L")
    h.put_call(token, "CA-LOST", upstream.set("/lost.wav", body=body))
    assert h.play(token, "CA-LOST").status == 202
    with h.app.store.writing() as tx:  # the claim is made; its reply is lost on the way
        lost = tx.claim_next_job(pool.worker_id, h.clock())

    pool.heartbeat()

    replacement, given_back = h.jobs("CA-LOST")
    assert (given_back["id"], given_back["status"], given_back["error_code"]) == (lost.id, "failed", "orphaned")
    assert (replacement["status"], replacement["attempt"]) == ("queued", 0), "a claim that never ran is no retry"
    assert pool.run_once() is True
    answer = h.play(token, "CA-LOST")
    assert (answer.status, answer.body) == (200, body)


def test_a_download_that_outlives_its_process_stop_is_left_running_in_one_line_without_a_traceback(
        tmp_path, clock, upstream, caplog):
    app = App(make_settings(tmp_path / "data", workers=1), clock=clock).start()
    h = Harness(app, clock, upstream)
    token = h.business()
    h.put_call(token, "CA-STOP", upstream.set("/stop.wav", body=sized_wav(20_000), hang=True))
    assert h.play(token, "CA-STOP").status == 202
    assert upstream.wait_for_hits("/stop.wav", 1)

    assert app.stop(grace=0.1) is False  # the download is still held when the stop's grace ends
    upstream.release()
    wait_for(lambda: app.pool.busy == 0, what="the held download ending after the stop")

    assert "as this process stops; left running for the orphan check" in caplog.text
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


# ---------------------------------------------------------------- the supervisor

@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_download_thread_that_died_is_replaced_and_queued_jobs_still_run(make_harness, upstream):
    h = make_harness(workers=1)
    pool = h.app.pool
    claim = pool.run_once
    died = threading.Event()

    def die_once():
        if not died.is_set():
            died.set()
            raise SystemExit("a download thread dies")  # not an Exception: the thread's loop cannot catch it
        return claim()

    pool.run_once = die_once
    assert died.wait(5)
    time.sleep(0.1)
    body = tune_for("after the crash")
    token = h.business()
    h.put_call(token, "CA-SUP", upstream.set("/sup.wav", body=body))
    assert h.play(token, "CA-SUP").status == 202
    assert h.wait_for_job("CA-SUP", timeout=5)["status"] == "completed"
    assert h.play(token, "CA-SUP").body == body


# ---------------------------------------------------------------- storage_error (CONTRACT 4)

def cached_call(h, token: str, call_sid: str, body: bytes) -> None:
    h.put_call(token, call_sid, h.upstream.set(f"/{call_sid}.wav", body=body))
    h.play(token, call_sid)
    assert h.wait_for_job(call_sid)["status"] == "completed"
    assert h.play(token, call_sid).body == body


@pytest.mark.sqlite_store_only("on the Redis store the final name carries the job's id, so a folder cannot be put there beforehand")
def test_a_recording_that_cannot_be_put_in_place_fails_storage_error_and_its_temp_file_is_removed(
        make_harness, upstream):
    h = make_harness(workers=1)
    created = h.admin("POST", "/admin/businesses", {"name": "acme"}).json
    token, business_id = created["token"], created["id"]
    kept = tune_for("kept")
    cached_call(h, token, "CA-KEPT", kept)

    # The final name is taken by a folder: the rename into place fails after the whole download.
    os.makedirs(h.app.files.absolute(h.app.files.relative_path(business_id, "CA-BLOCKED", "wav")))
    h.put_call(token, "CA-BLOCKED", upstream.set("/blocked.wav", body=sized_wav(50_000)))
    assert h.play(token, "CA-BLOCKED").status == 202
    job = h.wait_for_job("CA-BLOCKED")
    assert (job["status"], job["error_code"]) == ("failed", "storage_error")
    assert upstream.hits("/blocked.wav") == 1
    assert temp_files(h.app.files) == [], "the temporary file of a failed store is left behind"
    with h.app.store.reading() as tx:
        assert tx.get_recording(business_id, "CA-BLOCKED") is None
    assert h.play(token, "CA-KEPT").body == kept, "other cached files are still served"
    assert h.request("GET", "/healthz").status == 200


def test_a_business_folder_that_cannot_be_written_fails_storage_error_and_others_are_still_served(
        make_harness, upstream):
    h = make_harness(workers=1)
    token_a = h.business("a")
    kept = tune_for("kept")
    cached_call(h, token_a, "CA-KEPT", kept)
    created = h.admin("POST", "/admin/businesses", {"name": "b"}).json
    token_b = created["token"]
    # Root ignores chmod; a file where the business folder should be refuses every write, for anyone.
    with open(os.path.join(h.app.files.root, str(created["id"])), "wb"):
        pass
    h.put_call(token_b, "CA-NOWHERE", upstream.set("/nowhere.wav", body=sized_wav(20_000)))
    assert h.play(token_b, "CA-NOWHERE").status == 202
    job = h.wait_for_job("CA-NOWHERE")
    assert (job["status"], job["error_code"]) == ("failed", "storage_error")
    assert job["error_message"]
    assert h.play(token_a, "CA-KEPT").body == kept
    assert temp_files(h.app.files) == []


def test_an_unexpected_error_in_a_download_fails_the_job_instead_of_leaving_it_running(make_harness, upstream):
    h = make_harness(workers=0)
    pool = hand_stepped_pool(h.app)
    token = h.business()
    h.put_call(token, "CA-X", upstream.set("/x.wav", body=tune_for("X")))

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    pool.downloader = type("Broken", (), {"download": staticmethod(broken)})()
    assert h.play(token, "CA-X").status == 202
    assert pool.run_once() is True
    (job,) = h.jobs("CA-X")
    assert (job["status"], job["error_code"], job["error_message"]) == (
        "failed", "download_failed", "unexpected error: RuntimeError")
    assert temp_files(h.app.files) == []
