"""--max-retry-attempts N allows exactly N retries per window (CONTRACT 3 rows 10b/10c), counted from none.

With a limit of 1, a call whose download keeps failing gets its first job,
one retry, and then the refusal: a counter that does not exist yet counts
as 0 retries, not 1.
"""

from __future__ import annotations

from contract_steps import call_with_recording, new_business, retry_counter, wait_for_job


def test_a_limit_of_one_allows_one_retry_then_refuses(make_harness):
    h = make_harness(max_retry_attempts=1, retry_window=600, download_timeout=0.3)
    h.app.downloader.backoff = 0.01  # three quick requests, then download_failed
    acme = new_business(h)
    call_with_recording(h, acme, "CALIM", status=500, body=b"oops")
    assert h.play(acme.token, "CALIM").json["attempt"] == 0           # row 10a
    assert wait_for_job(h, acme, "CALIM")["status"] == "failed"

    retry = h.play(acme.token, "CALIM")

    assert (retry.status, retry.json["attempt"]) == (202, 1)          # row 10b
    assert wait_for_job(h, acme, "CALIM")["status"] == "failed"
    refused = h.play(acme.token, "CALIM")
    assert (refused.status, refused.json["error"], refused.json["attempts"]) == (500, "recording_download_failed", 1)
    assert retry_counter(h, acme, "CALIM")["attempts"] == 1
