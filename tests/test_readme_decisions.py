"""Decisions README states where the contract is silent, each held to its word.

- Failing open: while the counter backend is down, a retry job gets the
  previous job's attempt + 1, and there is no limit, so attempt passes
  max_attempts.
- ``GET /admin/jobs`` returns at most 200 jobs, newest first.
- A business token is 32 random bytes, URL-safe.
"""

from __future__ import annotations

import base64

from conftest import Harness, make_settings
from contract_steps import call_with_recording, jobs_of, new_business, wait_for_job
from test_fail_fast import BrokenCounter

from recsvc.run.app import App
from recsvc.core.service import new_token


def test_while_the_counter_is_down_each_retry_is_its_predecessors_attempt_plus_one_past_the_limit(
        tmp_path, clock, upstream):
    settings = make_settings(tmp_path / "data", workers=2, download_timeout=0.3, max_retry_attempts=1)
    app = App(settings, clock=clock, counter=BrokenCounter()).start()
    try:
        h = Harness(app, clock, upstream)
        h.app.downloader.backoff = 0.01  # three quick requests, then download_failed
        acme = new_business(h)
        call_with_recording(h, acme, "CAOPEN", status=500, body=b"oops")
        attempts = []
        for _ in range(3):
            attempts.append(h.play(acme.token, "CAOPEN").json["attempt"])
            assert wait_for_job(h, acme, "CAOPEN")["status"] == "failed"
        assert attempts == [0, 1, 2]
        assert [j["attempt"] for j in jobs_of(h, acme, "CAOPEN")] == [2, 1, 0]
    finally:
        app.stop(grace=0.5)


def test_the_jobs_view_lists_at_most_200_jobs_newest_first(make_harness):
    h = make_harness(workers=0)
    acme = new_business(h)
    url = call_with_recording(h, acme, "CAMANY")
    ids = []
    with h.app.store.writing() as tx:
        for _ in range(201):  # one active job per call at a time: each ends before the next
            ids.append(tx.insert_job(acme.id, "CAMANY", url, 0, h.clock()))
            tx.fail_job(ids[-1], "queued", "download_failed", "upstream answered 500", h.clock())
    listed = [j["id"] for j in jobs_of(h, acme, "CAMANY")]
    assert listed == sorted(ids, reverse=True)[:200]


def test_a_business_token_is_rs_and_32_random_bytes_url_safe():
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        prefix, body = token[:3], token[3:]
        assert prefix == "rs_"
        assert len(base64.urlsafe_b64decode(body + "=")) == 32
