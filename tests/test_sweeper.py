"""The sweeper thread of CONTRACT 4: every job-timeout / 2 seconds (at most 60) it marks stuck
active jobs failed on its own, without any request, and never creates a job."""

from __future__ import annotations

import pytest
from conftest import wait_until

from recsvc.contract.settings import Settings


@pytest.mark.parametrize("job_timeout, interval", [
    pytest.param(300, 60, id="default job-timeout: at most 60 s"),
    pytest.param(10, 5, id="job-timeout / 2"),
    pytest.param(0.4, 0.2, id="fractional job-timeout"),
])
def test_the_sweep_interval_is_half_the_job_timeout_and_at_most_a_minute(job_timeout, interval):
    assert Settings(job_timeout=job_timeout).sweep_interval == interval


def test_the_sweeper_marks_a_stuck_job_failed_without_any_request_and_creates_nothing(hanging, upstream):
    h = hanging(job_timeout=0.4)  # the sweeper runs every 0.2 real seconds
    token = h.business()
    h.put_call(token, "CAswept", upstream.set("/swept.wav", hang=True))
    assert h.play(token, "CAswept").status == 202
    assert upstream.wait_for_hits("/swept.wav", 1)
    h.advance(1)  # past job-timeout on the fake clock; no request follows
    assert wait_until(lambda: h.jobs("CAswept")[0]["status"] == "failed", 3), h.jobs("CAswept")
    (job,) = h.jobs("CAswept")
    assert (job["error_code"], job["error_message"]) == ("stuck", "running 1s without completion")
    assert h.admin("GET", "/admin/retry-counters/1/CAswept").json["attempts"] == 0
