"""A play that marks a job stuck wakes the requests held on that job (CONTRACT 4 and 5b).

A request held by ``Prefer: wait`` sleeps until its job ends. Jobs that end in
a worker of this process wake it directly; so must a job that a play request
fails as stuck (row 8). The database watcher that catches jobs ended by other
processes is slowed to a minute here, so only the direct wake can answer the
held request in time.
"""

from __future__ import annotations

import threading
import time

from conftest import wait_until
from contract_steps import call_with_recording, jobs_of, new_business, wait_until_running

HOLD = 8  # seconds the held request asks for; the wake must come long before


def test_a_request_held_on_a_job_that_a_play_marks_stuck_is_answered_at_once(hanging):
    h = hanging(max_retry_attempts=0)  # row 10c after row 8: the stuck job is failed, no new job is made
    acme = new_business(h)
    call_with_recording(h, acme, "CAHELD", hang=True)
    assert h.play(acme.token, "CAHELD").status == 202
    stuck_job = wait_until_running(h, acme, "CAHELD")
    h.app.waiters.poll_interval = 60
    held: list = []

    def hold() -> None:
        answer = h.play(acme.token, "CAHELD", headers={"Prefer": f"wait={HOLD}"})
        held.append((answer, time.monotonic()))

    holder = threading.Thread(target=hold)
    holder.start()
    assert wait_until(lambda: h.app.waiters.held_count() == 1, 5)
    h.advance(h.settings.job_timeout + 1)

    refused = h.play(acme.token, "CAHELD")
    marked = time.monotonic()

    holder.join(HOLD + 5)
    assert (refused.status, refused.json["error"]) == (500, "worker_not_processing_queue")
    assert jobs_of(h, acme, "CAHELD")[0]["id"] == stuck_job["id"]
    assert jobs_of(h, acme, "CAHELD")[0]["error_code"] == "stuck"
    answer, answered = held[0]
    assert (answer.status, answer.header("Preference-Applied")) == (202, f"wait={HOLD}")
    assert answered - marked < 2, f"the held request slept {answered - marked:.1f}s after its job was failed"
