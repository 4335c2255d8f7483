"""A job that row 7 queues is not a retry: it keeps its predecessor's attempt (README, "The attempt of a job").

A call whose download failed twice has a latest job of attempt 1. When no
worker is live, the next request answers row 7 and queues a job for when a
worker is back; that job is attempt 1 too, and the retry counter is left
where it was (invariant 2 counts retries of row 10b only).
"""

from __future__ import annotations

from contract_steps import call_with_recording, jobs_of, new_business, retry_counter, wait_for_job


def test_the_job_row_7_queues_keeps_its_predecessors_attempt_and_leaves_the_counter_alone(make_harness):
    h = make_harness(workers=2, heartbeat_interval=1.5, retry_window=600, download_timeout=0.3)
    h.app.downloader.backoff = 0.01  # three quick requests, then download_failed
    acme = new_business(h)
    call_with_recording(h, acme, "CA7A", status=500, body=b"oops")
    assert h.play(acme.token, "CA7A").json["attempt"] == 0
    assert wait_for_job(h, acme, "CA7A")["status"] == "failed"
    assert h.play(acme.token, "CA7A").json["attempt"] == 1            # row 10b
    assert wait_for_job(h, acme, "CA7A")["status"] == "failed"
    assert h.admin("POST", "/admin/workers/pause").json == {"paused": True}

    answer = h.play(acme.token, "CA7A")

    assert (answer.status, answer.json["error"]) == (500, "worker_not_processing_queue")  # row 7
    assert [(j["status"], j["attempt"]) for j in jobs_of(h, acme, "CA7A")] == [
        ("queued", 1), ("failed", 1), ("failed", 0)]
    assert retry_counter(h, acme, "CA7A")["attempts"] == 1
