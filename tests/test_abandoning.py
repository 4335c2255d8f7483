"""CONTRACT 4 v3 in-process: a download whose job is no longer its worker's is abandoned within one
heartbeat, no try outlives the job's deadline, and a job failed ``storage_error`` is not a retry.

recsvc runs in-process on a fake clock against the fake upstream on 127.0.0.1;
the heartbeat is stepped by hand where the rule is "within one heartbeat".
"""

from __future__ import annotations

import logging
import os

from conftest import wait_until
from recsvc.demo.audio import sized_wav
from recsvc.storage.files import HOSTNAME, TEMP_SUFFIX
from recsvc.contract.model import STORAGE_ERROR

WAV = sized_wav(40_000)


def temp_files(root: str) -> list[str]:
    return [name for _folder, _dirs, names in os.walk(root) for name in names if name.endswith(TEMP_SUFFIX)]


def test_a_download_whose_job_was_failed_stuck_is_abandoned_at_the_next_heartbeat(hanging, upstream, caplog):
    h = hanging(workers=1, job_timeout=30, heartbeat_interval=60)  # the test beats by hand
    token = h.business()
    h.put_call(token, "CA-HUNG", upstream.set("/hung.wav", body=WAV, hang=True))
    assert h.play(token, "CA-HUNG").status == 202
    assert upstream.wait_for_hits("/hung.wav", 1)
    pool = h.app.pool
    assert wait_until(lambda: temp_files(h.app.files.root), 2), "the download has its temporary file"
    assert pool.busy == 1 and pool.abandoned_downloads() == 0

    h.clock.advance(31)
    assert h.app.service.cleanup() == 1  # the sweeper fails it stuck
    assert pool.abandoned_downloads() == 1, "the thread is busy on a job that is no longer its own"
    with caplog.at_level(logging.INFO, logger="recsvc.core.worker"):
        pool.heartbeat()
        assert wait_until(lambda: pool.busy == 0, 1.0), "the thread was not freed by the heartbeat"
    assert pool.abandoned_downloads() == 0
    assert temp_files(h.app.files.root) == [], "the abandoned download's temporary file was removed"
    assert upstream.hits("/hung.wav") == 1, "an abandoned job makes no further request"
    (job,) = h.jobs("CA-HUNG")
    assert (job["status"], job["error_code"]) == ("failed", "stuck"), "the worker changed no row"
    assert "recsvc_downloads_abandoned_total 1" in h.request("GET", "/metrics").body.decode()

    # The freed thread takes the next job at once.
    h.put_call(token, "CA-OK", upstream.set("/ok.wav", body=WAV))
    assert h.play(token, "CA-OK").status == 202
    h.wait_for_job("CA-OK", timeout=5)
    assert h.play(token, "CA-OK").body == WAV


def test_a_superseded_download_is_abandoned_at_the_next_heartbeat(hanging, upstream):
    h = hanging(workers=1, job_timeout=30, heartbeat_interval=60)
    token = h.business()
    h.put_call(token, "CA-NEWURL", upstream.set("/old.wav", body=WAV, hang=True))
    assert h.play(token, "CA-NEWURL").status == 202
    assert upstream.wait_for_hits("/old.wav", 1)
    h.put_call(token, "CA-NEWURL", upstream.set("/new.wav", body=WAV))
    assert h.app.pool.abandoned_downloads() == 1
    h.app.pool.heartbeat()
    assert wait_until(lambda: h.app.pool.busy == 0, 1.0)
    assert h.play(token, "CA-NEWURL").status == 202
    h.wait_for_job("CA-NEWURL", timeout=5)
    assert h.play(token, "CA-NEWURL").body == WAV


def test_a_try_running_at_the_jobs_deadline_is_cut_and_the_job_failed_stuck(hanging, upstream, caplog):
    h = hanging(workers=1, job_timeout=0.6, heartbeat_interval=60)  # download-timeout stays 10 s
    token = h.business()
    h.put_call(token, "CA-SLOW", upstream.set("/slow.wav", body=WAV, hang=True))
    with caplog.at_level(logging.WARNING, logger="recsvc.core.worker"):
        assert h.play(token, "CA-SLOW").status == 202
        job = h.wait_for_job("CA-SLOW", statuses=("failed",), timeout=3)
    assert (job["error_code"], job["error_message"]) == ("stuck", "running 0s without completion")
    assert h.app.pool.busy == 0, "the thread was held past the job's deadline"
    assert upstream.hits("/slow.wav") == 1, "no request starts after the job's deadline"
    assert any(r.getMessage().startswith(f"[STUCK] job={job['id']} call_sid=CA-SLOW reason=running")
               for r in caplog.records)
    assert temp_files(h.app.files.root) == []


def test_an_upstream_that_keeps_failing_fails_download_failed_when_the_next_try_would_start_past_the_deadline(
        make_harness, upstream):
    """At the seed's timings (job-timeout below the 1 s backoff of the default download-timeout) an
    upstream answering 500 is what the job's end says, not ``stuck``: no try can start before the
    deadline, so the job ends with the errors it saw, at once (CONTRACT 4 v3)."""
    h = make_harness(workers=1, job_timeout=0.6, heartbeat_interval=60, download_timeout=30)
    token = h.business()
    h.put_call(token, "CA-FAIL", upstream.set("/fail.wav", status=500, body=b"broken", content_type="text/plain"))
    assert h.play(token, "CA-FAIL").status == 202
    job = h.wait_for_job("CA-FAIL", statuses=("failed",), timeout=3)
    assert job["error_code"] == "download_failed", job
    assert "500" in job["error_message"], job
    assert upstream.hits("/fail.wav") == 1, "no request starts after the job's deadline"
    assert h.app.pool.busy == 0


def test_a_job_failed_storage_error_is_answered_503_and_replaced_without_counting_a_retry(make_harness, upstream):
    h = make_harness(workers=0, max_retry_attempts=2)
    with h.app.store.writing() as tx:  # a live worker elsewhere that never claims: the test plays it
        tx.upsert_worker(f"{HOSTNAME}:1:feedbeef", HOSTNAME, 1, 1, 3600.0, h.clock())
    token = h.business()
    h.put_call(token, "CA-DISK", upstream.set("/disk.wav", body=WAV))
    assert h.play(token, "CA-DISK").status == 202
    for _ in range(5):  # more than max-retry-attempts
        with h.app.store.writing() as tx:
            job = tx.latest_job(1, "CA-DISK")
            assert tx.fail_job(job.id, "queued", STORAGE_ERROR, "could not store the recording: disk full",
                               h.clock())
        answer = h.play(token, "CA-DISK")
        assert (answer.status, answer.json["error"]) == (503, "storage_unavailable"), answer.body
        assert answer.header("Retry-After") == "2"
    assert [job["attempt"] for job in h.jobs("CA-DISK")] == [0] * 6, "a storage_error counted as a retry"
    assert h.jobs("CA-DISK")[0]["status"] == "queued", "the replacement waits for the disk to work again"
    counter = h.admin("GET", "/admin/retry-counters/1/CA-DISK").json
    assert counter["attempts"] == 0, "a storage_error touched the retry counter"
