"""CONTRACT 3 (the retry counter, "fail fast") and CONTRACT 4 (stuck jobs, job failures) over real HTTP.

The seed's drill first: a live worker pool whose downloads hang. The fake
clock moves past --job-timeout between plays; nothing sleeps to make a job
stuck. Hung downloads are held by the fake upstream with a --download-timeout
far longer than the test, so they stay hung while the test runs.
"""

from __future__ import annotations

import logging
import os

import pytest
from conftest import Harness, REDIS_CANNOT_FAIL_OPEN, REDIS_TTL_WINDOW, make_settings
from contract_steps import (
    JOB_TIMEOUT, PAST_JOB_TIMEOUT, cached_file, call_with_recording, jobs_of, new_business,
    play_until_cached, retry_counter, shared_harness, wait_for_job, wait_until_running,
)

from recsvc.run.app import App
from recsvc.storage.counter import CounterError
from recsvc.demo.audio import sized_wav, tune_for

RETRY_WINDOW = 600
MAX_BYTES = 4000


@pytest.fixture
def hung_pool(hanging):
    """``hung_pool(**settings)``: a live pool of 4 download threads, enough for a first job and 3 retries to hang."""
    def build(**overrides) -> Harness:
        settings = dict(workers=4, job_timeout=JOB_TIMEOUT, retry_window=RETRY_WINDOW, retry_after=3,
                        recovery_retry_after=7)
        settings.update(overrides)
        return hanging(**settings)

    return build


def play_and_hang(h: Harness, business, call_sid: str, expected_attempt: int) -> dict:
    """One play that starts a job (first or retry); returns the 202 body once a worker hangs on it."""
    answer = h.play(business.token, call_sid)
    assert answer.status == 202, answer.body
    assert answer.json["attempt"] == expected_attempt
    wait_until_running(h, business, call_sid)
    return answer.json


@pytest.fixture(scope="module")
def failing_upstream(tmp_path_factory, store_kind):
    """Live workers whose downloads end quickly (short backoff), shared by tests that never move the clock."""
    harness = shared_harness(tmp_path_factory, workers=2, download_timeout=0.3, max_recording_bytes=MAX_BYTES)
    yield from harness


# ---------------------------------------------------------------- the drill


# The counters of one process (memory://) and of the data dir's database (sqlite://) behave alike.
COUNTERS = pytest.mark.parametrize("counter", ["memory://", "sqlite://"])


@pytest.mark.sqlite_store_only(REDIS_TTL_WINDOW)
@COUNTERS
def test_hanging_jobs_are_retried_with_attempts_0_to_3_then_fail_fast_with_retry_limit_reached(hung_pool, caplog,
                                                                                               counter):
    caplog.set_level(logging.WARNING)
    h = hung_pool(counter=counter)
    acme = new_business(h)
    call_with_recording(h, acme, "CAHANG", hang=True)

    for attempt in (0, 1, 2, 3):
        body = play_and_hang(h, acme, "CAHANG", attempt)
        assert jobs_of(h, acme, "CAHANG")[0]["attempt"] == attempt
        assert retry_counter(h, acme, "CAHANG")["attempts"] == attempt
        h.advance(PAST_JOB_TIMEOUT)
    counter_before = retry_counter(h, acme, "CAHANG")

    refused = h.play(acme.token, "CAHANG")

    assert refused.status == 500
    assert refused.json["error"] == "worker_not_processing_queue"
    assert refused.json["reason"] == "retry limit reached"
    assert refused.json["attempts"] == 3
    assert refused.json["max_attempts"] == 3
    assert refused.json["retry_window_seconds"] == RETRY_WINDOW
    assert refused.json["retry_after"] == counter_before["ttl"] == RETRY_WINDOW - PAST_JOB_TIMEOUT
    assert refused.header("Retry-After") == str(counter_before["ttl"])
    assert retry_counter(h, acme, "CAHANG") == counter_before  # a refused retry does not touch the key
    jobs = jobs_of(h, acme, "CAHANG")
    assert len(jobs) == 4  # the first job and 3 retries: no fifth job
    assert [(j["status"], j["error_code"]) for j in jobs] == [("failed", "stuck")] * 4
    assert jobs[0]["id"] == body["job_id"]

    again = h.play(acme.token, "CAHANG")
    assert (again.status, again.json["reason"]) == (500, "retry limit reached")
    assert len(jobs_of(h, acme, "CAHANG")) == 4
    assert retry_counter(h, acme, "CAHANG") == counter_before


def test_fail_fast_log_lines_name_the_retry_the_refusal_and_the_stuck_job(hung_pool, caplog):
    caplog.set_level(logging.WARNING)
    h = hung_pool()
    acme = new_business(h)
    call_with_recording(h, acme, "CALOG", hang=True)
    first = None
    for attempt in (0, 1, 2, 3):
        body = play_and_hang(h, acme, "CALOG", attempt)
        first = first or body
        h.advance(PAST_JOB_TIMEOUT)
    h.play(acme.token, "CALOG")

    messages = caplog.messages
    assert "[FAIL_FAST] Retry attempt 1/3 for call_sid=CALOG" in messages
    assert "[FAIL_FAST] Retry attempt 2/3 for call_sid=CALOG" in messages
    assert "[FAIL_FAST] Retry attempt 3/3 for call_sid=CALOG" in messages
    assert "[FAIL_FAST] Worker not processing queue after 3 attempts call_sid=CALOG" in messages
    assert (f"[STUCK] job={first['job_id']} call_sid=CALOG reason=running {PAST_JOB_TIMEOUT}s without completion"
            in messages)


@pytest.mark.sqlite_store_only(REDIS_TTL_WINDOW)
def test_after_a_quiet_window_a_refused_call_gets_a_fresh_cycle_starting_at_attempt_1(hung_pool):
    h = hung_pool(workers=5)
    acme = new_business(h)
    call_with_recording(h, acme, "CAQUIET", hang=True)
    for attempt in (0, 1, 2, 3):
        play_and_hang(h, acme, "CAQUIET", attempt)
        h.advance(PAST_JOB_TIMEOUT)
    assert h.play(acme.token, "CAQUIET").status == 500

    h.advance(RETRY_WINDOW)  # the key's TTL was 299 s: a whole window has passed with no retry
    assert retry_counter(h, acme, "CAQUIET")["ttl"] == -2

    answer = h.play(acme.token, "CAQUIET")
    assert answer.status == 202
    assert answer.json["attempt"] == 1
    assert answer.header("Retry-After") == "7"
    assert retry_counter(h, acme, "CAQUIET") == {"key": f"recording_retry_attempts:{acme.id}:CAQUIET",
                                                 "attempts": 1, "ttl": RETRY_WINDOW}
    assert len(jobs_of(h, acme, "CAQUIET")) == 5


@pytest.mark.sqlite_store_only(REDIS_TTL_WINDOW)
def test_the_window_slides_so_retries_five_minutes_apart_still_reach_the_limit_of_a_ten_minute_window(hung_pool):
    # With a fixed window (EXPIRE only when the key is created) the key made
    # by retry 1 at T+300 is gone at T+900, retry 3 counts 1 again and the
    # service never fails fast. EXPIRE at every retry keeps the count.
    h = hung_pool(job_timeout=290, retry_window=RETRY_WINDOW)
    acme = new_business(h)
    call_with_recording(h, acme, "CASLIDE", hang=True)
    play_and_hang(h, acme, "CASLIDE", 0)

    for attempt in (1, 2, 3):
        h.advance(300)
        play_and_hang(h, acme, "CASLIDE", attempt)
        assert retry_counter(h, acme, "CASLIDE")["ttl"] == RETRY_WINDOW  # EXPIRE restarted at this retry
    h.advance(300)

    refused = h.play(acme.token, "CASLIDE")
    assert refused.status == 500
    assert refused.json["reason"] == "retry limit reached"
    assert refused.json["attempts"] == 3
    assert refused.json["retry_after"] == RETRY_WINDOW - 300
    assert len(jobs_of(h, acme, "CASLIDE")) == 4


# ---------------------------------------------------------------- job failures (CONTRACT 4)


def test_upstream_500_every_time_makes_3_requests_per_job_and_fails_fast_with_recording_download_failed(
        failing_upstream):
    h = failing_upstream
    acme = new_business(h)
    url = call_with_recording(h, acme, "CA500", status=500, body=b"internal error")
    path = url.removeprefix(h.upstream.base_url)

    for attempt in (0, 1, 2, 3):
        answer = h.play(acme.token, "CA500")
        assert (answer.status, answer.json["attempt"]) == (202, attempt)
        job = wait_for_job(h, acme, "CA500")
        assert (job["status"], job["error_code"]) == ("failed", "download_failed")
        assert h.upstream.hits(path) == 3 * (attempt + 1)

    for _ in range(2):
        refused = h.play(acme.token, "CA500")
        assert refused.status == 500
        assert refused.json["error"] == "recording_download_failed"
        assert refused.json["reason"] == "retry limit reached"
        assert refused.json["attempts"] == 3
        assert refused.header("Retry-After") == str(refused.json["retry_after"])
    assert len(jobs_of(h, acme, "CA500")) == 4  # 1 + 3 retries
    assert h.upstream.hits(path) == 12


@pytest.mark.parametrize("script, error_code", [
    pytest.param(dict(status=200, body=b"<!DOCTYPE html><html><body>Log in</body></html>",
                      content_type="text/html"), "invalid_audio", id="an HTML page is invalid_audio"),
    pytest.param(dict(status=401, body=b"who are you"), "upstream_auth_failed", id="401 is upstream_auth_failed"),
    pytest.param(dict(status=403, body=b"no"), "upstream_auth_failed", id="403 is upstream_auth_failed"),
    pytest.param(dict(status=200, body=sized_wav(MAX_BYTES + 1)), "too_large",
                 id="over max-recording-bytes is too_large"),
])
def test_a_download_that_cannot_become_a_recording_fails_its_job_with_the_contracts_error_code(
        failing_upstream, script, error_code):
    h = failing_upstream
    acme = new_business(h)
    call_with_recording(h, acme, "CAFAIL", **script)

    assert h.play(acme.token, "CAFAIL").status == 202

    job = wait_for_job(h, acme, "CAFAIL")
    assert (job["status"], job["error_code"]) == ("failed", error_code)
    assert job["error_message"]
    assert h.request("GET", "/api/calls/CAFAIL", token=acme.token).json["cached"] is False
    retry = h.play(acme.token, "CAFAIL")  # and the next play is a retry (row 10b), never the bytes
    assert (retry.status, retry.json["attempt"]) == (202, 1)


def test_a_recording_of_exactly_max_recording_bytes_is_stored(failing_upstream):
    h = failing_upstream
    acme = new_business(h)
    wav = sized_wav(MAX_BYTES)
    call_with_recording(h, acme, "CAMAX", body=wav)

    assert play_until_cached(h, acme, "CAMAX").body == wav


# ---------------------------------------------------------------- stuck rules (CONTRACT 4)


def test_a_job_queued_longer_than_job_timeout_is_marked_stuck_by_cleanup_with_the_queued_reason(make_harness):
    h = make_harness(workers=1, job_timeout=JOB_TIMEOUT)
    acme = new_business(h)
    call_with_recording(h, acme, "CAQ")
    h.admin("POST", "/admin/workers/pause")
    assert h.play(acme.token, "CAQ").status == 500  # row 7 queues the job; paused workers never claim it
    h.advance(PAST_JOB_TIMEOUT)

    assert h.admin("POST", "/admin/cleanup").json == {"marked_failed": 1}

    jobs = jobs_of(h, acme, "CAQ")
    assert len(jobs) == 1  # cleanup never creates jobs
    assert jobs[0]["status"] == "failed"
    assert jobs[0]["error_code"] == "stuck"
    assert jobs[0]["error_message"] == f"queued {PAST_JOB_TIMEOUT}s without worker pickup"
    assert h.admin("POST", "/admin/cleanup").json == {"marked_failed": 0}


def test_a_job_running_longer_than_job_timeout_is_marked_stuck_by_cleanup_with_the_running_reason(hung_pool):
    h = hung_pool()
    acme = new_business(h)
    call_with_recording(h, acme, "CAR", hang=True)
    play_and_hang(h, acme, "CAR", 0)
    h.advance(PAST_JOB_TIMEOUT)

    assert h.admin("POST", "/admin/cleanup").json == {"marked_failed": 1}

    jobs = jobs_of(h, acme, "CAR")
    assert len(jobs) == 1
    assert (jobs[0]["status"], jobs[0]["error_code"]) == ("failed", "stuck")
    assert jobs[0]["error_message"] == f"running {PAST_JOB_TIMEOUT}s without completion"
    assert retry_counter(h, acme, "CAR")["ttl"] == -2  # marking stuck is not a retry


def test_a_running_job_whose_worker_heartbeat_is_lost_is_marked_stuck_with_the_heartbeat_reason(hung_pool):
    # A long job timeout and a long interval, so only the heartbeat rule can
    # fire and the pool's own heartbeat thread does not beat during the test.
    h = hung_pool(job_timeout=1000, heartbeat_interval=100)
    acme = new_business(h)
    call_with_recording(h, acme, "CAHB", hang=True)
    play_and_hang(h, acme, "CAHB", 0)
    h.clock.advance(301)  # no beat: 301 s > 3 x 100 s

    assert h.admin("POST", "/admin/cleanup").json == {"marked_failed": 1}

    job = jobs_of(h, acme, "CAHB")[0]
    assert (job["status"], job["error_code"]) == ("failed", "stuck")
    assert job["error_message"] == "worker heartbeat lost 301s ago"


def test_a_play_that_finds_a_stuck_job_marks_it_failed_and_answers_the_retry(hung_pool):
    h = hung_pool()
    acme = new_business(h)
    call_with_recording(h, acme, "CAP", hang=True)
    first = play_and_hang(h, acme, "CAP", 0)
    h.advance(PAST_JOB_TIMEOUT)

    answer = h.play(acme.token, "CAP")

    assert (answer.status, answer.json["attempt"]) == (202, 1)
    assert answer.json["job_id"] != first["job_id"]
    stuck = [j for j in jobs_of(h, acme, "CAP") if j["id"] == first["job_id"]][0]
    assert (stuck["status"], stuck["error_code"]) == ("failed", "stuck")
    assert stuck["error_message"] == f"running {PAST_JOB_TIMEOUT}s without completion"


def test_cleanup_marks_only_stuck_jobs_and_never_creates_one(hung_pool):
    h = hung_pool()
    acme = new_business(h)
    for call_sid in ("CAOLD1", "CAOLD2"):
        call_with_recording(h, acme, call_sid, hang=True)
        play_and_hang(h, acme, call_sid, 0)
    h.advance(PAST_JOB_TIMEOUT)
    call_with_recording(h, acme, "CAFRESH", hang=True)
    play_and_hang(h, acme, "CAFRESH", 0)
    all_jobs_before = h.admin("GET", "/admin/jobs").json["jobs"]

    assert h.admin("POST", "/admin/cleanup").json == {"marked_failed": 2}

    all_jobs_after = h.admin("GET", "/admin/jobs").json["jobs"]
    assert [j["id"] for j in all_jobs_after] == [j["id"] for j in all_jobs_before]
    assert {j["call_sid"]: j["status"] for j in all_jobs_after} == {
        "CAOLD1": "failed", "CAOLD2": "failed", "CAFRESH": "running"}


# ---------------------------------------------------------------- the counter fails open


class BrokenCounter:
    """A retry counter whose backend is down: every command raises CounterError."""

    def _down(self, *args, **kwargs):
        raise CounterError("connection refused")

    incr = expire = incr_and_expire = get = ttl = delete = _down

    def close(self) -> None:
        pass


@pytest.fixture
def broken_counter_harness(tmp_path, clock, upstream):
    settings = make_settings(tmp_path / "data", workers=2, download_timeout=0.3, recovery_retry_after=7)
    app = App(settings, clock=clock, counter=BrokenCounter()).start()
    yield Harness(app, clock, upstream)
    app.stop(grace=0.5)


@pytest.mark.sqlite_store_only(REDIS_CANNOT_FAIL_OPEN)
def test_a_failing_retry_counter_allows_the_retry_and_logs_a_warning(broken_counter_harness, caplog):
    caplog.set_level(logging.WARNING)
    h = broken_counter_harness
    acme = new_business(h)
    call_with_recording(h, acme, "CACTR", status=500, body=b"oops")
    assert h.play(acme.token, "CACTR").status == 202
    assert wait_for_job(h, acme, "CACTR")["error_code"] == "download_failed"
    caplog.clear()

    answer = h.play(acme.token, "CACTR")

    assert answer.status == 202
    assert answer.header("Retry-After") == "7"
    assert len(jobs_of(h, acme, "CACTR")) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "counter" in r.getMessage()]
    assert warnings, caplog.messages


# ---------------------------------------------------------------- a new recording_url


@pytest.mark.sqlite_store_only("it is run with each --counter backend, which the Redis store replaces by its own")
@COUNTERS
def test_a_new_recording_url_supersedes_the_active_job_deletes_the_counter_and_restarts_at_attempt_0(hung_pool,
                                                                                                     counter):
    h = hung_pool(counter=counter)
    h.app.downloader.backoff = 0.01
    acme = new_business(h)
    old_url = call_with_recording(h, acme, "CANEW", path="/old.wav", status=500, body=b"oops")
    h.play(acme.token, "CANEW")
    assert wait_for_job(h, acme, "CANEW")["error_code"] == "download_failed"
    h.upstream.set("/old.wav", hang=True, body=b"")
    active = play_and_hang(h, acme, "CANEW", 1)
    assert retry_counter(h, acme, "CANEW")["attempts"] == 1
    new_wav = tune_for("the new recording")
    new_url = h.upstream.set("/new.wav", body=new_wav)

    assert h.put_call(acme.token, "CANEW", new_url).status == 200

    superseded = [j for j in jobs_of(h, acme, "CANEW") if j["id"] == active["job_id"]][0]
    assert (superseded["status"], superseded["error_code"]) == ("failed", "superseded")
    assert superseded["recording_url"] == old_url
    assert retry_counter(h, acme, "CANEW") == {"key": f"recording_retry_attempts:{acme.id}:CANEW",
                                               "attempts": 0, "ttl": -2}
    answer = h.play(acme.token, "CANEW")
    assert (answer.status, answer.json["attempt"]) == (202, 0)
    job = wait_for_job(h, acme, "CANEW")
    assert (job["recording_url"], job["status"]) == (new_url, "completed")
    assert h.play(acme.token, "CANEW").body == new_wav


def test_a_new_recording_url_drops_the_cached_recording(failing_upstream):
    h = failing_upstream
    acme = new_business(h)
    old_wav, new_wav = sized_wav(1000, "old"), sized_wav(1200, "new")
    call_with_recording(h, acme, "CADROP", body=old_wav)
    assert play_until_cached(h, acme, "CADROP").body == old_wav
    old_file = cached_file(h, acme, "CADROP")
    new_url = h.upstream.set(f"/{acme.id}/CADROP-new.wav", body=new_wav)

    updated = h.put_call(acme.token, "CADROP", new_url)

    assert updated.status == 200
    assert updated.json["cached"] is False
    assert updated.json["recording_url"] == new_url
    assert not os.path.exists(old_file)
    answer = h.play(acme.token, "CADROP")
    assert (answer.status, answer.json["attempt"]) == (202, 0)  # row 10a: a fresh history, not a retry
    assert play_until_cached(h, acme, "CADROP").body == new_wav


def test_giving_a_call_the_same_recording_url_again_keeps_its_cached_recording(failing_upstream):
    h = failing_upstream
    acme = new_business(h)
    wav = sized_wav(1000, "same")
    url = call_with_recording(h, acme, "CASAME", body=wav)
    play_until_cached(h, acme, "CASAME")

    assert h.put_call(acme.token, "CASAME", url).status == 200

    answer = h.play(acme.token, "CASAME")
    assert (answer.status, answer.body) == (200, wav)
    assert len(jobs_of(h, acme, "CASAME")) == 1
