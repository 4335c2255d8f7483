"""CONTRACT 3 and 4 as a table: one case per row of the decision and per stuck rule."""

from __future__ import annotations

import pytest

from recsvc.contract.decision import (
    RECORDING_DOWNLOAD_FAILED, WORKER_NOT_PROCESSING_QUEUE, CallNotFound, FirstJob, InvalidCallSid, NoLiveWorker,
    NoRecordingUrl, PlayFacts, Processing, RecordingNotFoundUpstream, RetryAllowed, RetryNeeded, RetryRefused,
    ServeFile, Unauthorized, decide_play, decide_retry, stuck_reason,
)
from recsvc.contract.model import Call, Job
from recsvc.contract.settings import Settings

NOW = 10_000.0
S = Settings(job_timeout=300, heartbeat_interval=5, max_retry_attempts=3, retry_window=600)
CALL = Call(1, "CA1", "https://api.twilio.com/r.wav", created_at=0)
NO_URL = Call(1, "CA1", None, created_at=0)


def job(status="queued", *, created=NOW - 1, started=None, beat=None, code=None, attempt=0, interval=None):
    return Job(17, 1, "CA1", CALL.recording_url, status, created_at=created, started_at=started,
               heartbeat_at=beat, error_code=code, attempt=attempt, worker_heartbeat_interval=interval)


def facts(*, auth=True, valid=True, call=CALL, cached=False, latest=None, live=True):
    return PlayFacts(authenticated=auth, call_sid_valid=valid, call=call, recording_intact=cached,
                     latest_job=latest, live_worker=live)


RUNNING_OK = job("running", started=NOW - 10, beat=NOW - 1)
HUNG_QUEUED = job("queued", created=NOW - 301)
HUNG_RUNNING = job("running", started=NOW - 301, beat=NOW - 1)

PLAY_TABLE = [
    pytest.param(facts(auth=False, valid=False, call=None), Unauthorized, id="row 1: no or wrong credentials -> 401, before anything else"),
    pytest.param(facts(valid=False, call=None), InvalidCallSid, id="row 2: call_sid not matching the pattern -> 400"),
    pytest.param(facts(call=None), CallNotFound, id="row 3: no such call for this business -> 404"),
    pytest.param(facts(cached=True, latest=HUNG_RUNNING, live=False), ServeFile, id="row 4: cached and intact -> 200, whatever the jobs and workers"),
    pytest.param(facts(call=NO_URL, live=False), NoRecordingUrl, id="row 5: no recording_url -> 404, even with no live worker"),
    pytest.param(facts(latest=job("failed", code="upstream_not_found"), live=False), RecordingNotFoundUpstream,
                 id="row 6: last job failed upstream 404/410 -> 404, before the worker check"),
    pytest.param(facts(live=False), NoLiveWorker, id="row 7: no live worker -> 500, creating a job when none is active"),
    pytest.param(facts(latest=HUNG_QUEUED), RetryNeeded, id="row 8: stuck queued job -> marked failed, continue at row 10"),
    pytest.param(facts(latest=RUNNING_OK), Processing, id="row 9: active job not stuck -> 202 with that job"),
    pytest.param(facts(latest=None), FirstJob, id="row 10a: no job yet for the current URL -> 202 attempt 0, new job"),
    pytest.param(facts(latest=job("failed", code="download_failed")), RetryNeeded, id="row 10b/c: last job failed -> retry decision"),
    pytest.param(facts(latest=job("completed")), RetryNeeded, id="row 10b/c: completed but its file is gone -> retry decision"),
]


@pytest.mark.parametrize("play_facts, expected", PLAY_TABLE)
def test_play_decision_follows_the_contract_rows(play_facts, expected):
    assert type(decide_play(play_facts, NOW, S)) is expected


def test_row_7_creates_a_job_only_when_the_call_has_no_active_one():
    assert decide_play(facts(live=False), NOW, S) == NoLiveWorker(create_job=True)
    assert decide_play(facts(live=False, latest=job("failed", code="stuck")), NOW, S) == NoLiveWorker(create_job=True)
    assert decide_play(facts(live=False, latest=RUNNING_OK), NOW, S) == NoLiveWorker(create_job=False)
    assert decide_play(facts(live=False, latest=HUNG_QUEUED), NOW, S) == NoLiveWorker(create_job=False)


def test_row_8_names_the_stuck_job_and_its_reason_and_counts_as_a_stuck_failure():
    outcome = decide_play(facts(latest=HUNG_RUNNING), NOW, S)
    assert outcome.stuck == (HUNG_RUNNING, "running 301s without completion")
    assert outcome.last_failure == "stuck"


def test_row_9_reports_the_attempt_of_the_active_job():
    outcome = decide_play(facts(latest=job("queued", attempt=2)), NOW, S)
    assert outcome == Processing(job("queued", attempt=2))


def test_row_10b_c_carries_the_last_failure_code():
    assert decide_play(facts(latest=job("failed", code="invalid_audio")), NOW, S).last_failure == "invalid_audio"
    assert decide_play(facts(latest=job("completed")), NOW, S).last_failure is None


RETRY_TABLE = [
    pytest.param(0, None, "stuck", RetryAllowed(), id="row 10b: counter absent -> retry"),
    pytest.param(2, 100, "download_failed", RetryAllowed(), id="row 10b: counter below max -> retry"),
    pytest.param(None, None, "stuck", RetryAllowed(), id="row 10b: counter unavailable -> retry (fail open)"),
    pytest.param(3, 598, "stuck", RetryRefused(WORKER_NOT_PROCESSING_QUEUE, 3, 598),
                 id="row 10c: at max after stuck -> 500 worker_not_processing_queue, retry_after = TTL"),
    pytest.param(3, 12, "download_failed", RetryRefused(RECORDING_DOWNLOAD_FAILED, 3, 12),
                 id="row 10c: at max after a download failure -> 500 recording_download_failed"),
    pytest.param(3, 12, None, RetryRefused(RECORDING_DOWNLOAD_FAILED, 3, 12),
                 id="row 10c: at max after a lost file -> 500 recording_download_failed"),
    pytest.param(3, -1, "stuck", RetryRefused(WORKER_NOT_PROCESSING_QUEUE, 3, 600),
                 id="row 10c: a key without TTL -> retry_after is the window"),
    pytest.param(3, 0, "stuck", RetryRefused(WORKER_NOT_PROCESSING_QUEUE, 3, 600),
                 id="row 10c: retry_after is at least 1"),
    pytest.param(3, 1, "stuck", RetryRefused(WORKER_NOT_PROCESSING_QUEUE, 3, 1),
                 id="row 10c: a key with one second left -> retry_after 1"),
]


@pytest.mark.parametrize("attempts, ttl, last_failure, expected", RETRY_TABLE)
def test_retry_decision_follows_rows_10b_and_10c(attempts, ttl, last_failure, expected):
    assert decide_retry(attempts, ttl, last_failure, S) == expected


STUCK_TABLE = [
    pytest.param(job("queued", created=NOW - 312), "queued 312s without worker pickup", id="queued longer than job-timeout"),
    pytest.param(job("queued", created=NOW - 300), None, id="queued exactly job-timeout is not stuck"),
    pytest.param(job("running", started=NOW - 400, beat=NOW), "running 400s without completion",
                 id="running longer than job-timeout, heartbeat fresh"),
    pytest.param(job("running", started=NOW - 300, beat=NOW), None, id="running exactly job-timeout is not stuck"),
    pytest.param(job("running", started=None, beat=NOW), "marked running but no started_at", id="running without started_at"),
    pytest.param(job("running", started=NOW - 60, beat=NOW - 16), "worker heartbeat lost 16s ago",
                 id="heartbeat older than 3 intervals"),
    pytest.param(job("running", started=NOW - 60, beat=NOW - 15), None, id="heartbeat exactly 3 intervals old is alive"),
    pytest.param(job("running", started=NOW - 60, beat=NOW - 16, interval=10), None,
                 id="heartbeat judged by the running worker's own interval"),
    pytest.param(job("running", started=NOW - 400, beat=NOW - 100), "running 400s without completion",
                 id="the first rule that holds names the reason"),
    pytest.param(job("completed", created=NOW - 9999), None, id="finished jobs are never stuck"),
    pytest.param(job("failed", created=NOW - 9999), None, id="failed jobs are never stuck"),
]


@pytest.mark.parametrize("the_job, reason", STUCK_TABLE)
def test_stuck_rules_of_section_4(the_job, reason):
    assert stuck_reason(the_job, NOW, S) == reason


EXCUSED_TABLE = [
    pytest.param(job("running", started=NOW - 60, beat=NOW - 16), None,
                 id="beats missing through a storage fault are not judged"),
    pytest.param(job("running", started=NOW - 400, beat=NOW - 100), "running 400s without completion",
                 id="the job's own deadline still is"),
    pytest.param(job("queued", created=NOW - 312), "queued 312s without worker pickup",
                 id="a queued job has no beats to excuse"),
]


@pytest.mark.parametrize("the_job, reason", EXCUSED_TABLE)
def test_stuck_rules_within_the_liveness_window_of_a_storage_fault(the_job, reason):
    assert stuck_reason(the_job, NOW, S, beats_excused=True) == reason


def test_a_play_within_the_liveness_window_of_a_storage_fault_keeps_the_job_whose_beats_are_missing():
    late = job("running", started=NOW - 60, beat=NOW - 16)
    excused = PlayFacts(authenticated=True, call_sid_valid=True, call=CALL, recording_intact=False,
                        latest_job=late, live_worker=True, beats_excused=True)
    assert decide_play(excused, NOW, S) == Processing(late)
    assert isinstance(decide_play(facts(latest=late), NOW, S), RetryNeeded)


def test_reason_seconds_are_whole_and_rounded_so_a_fractional_timeout_never_reads_zero():
    short = Settings(job_timeout=0.5, heartbeat_interval=0.2)
    assert stuck_reason(job("running", started=NOW - 0.6, beat=NOW), NOW, short) == "running 1s without completion"
    assert stuck_reason(job("queued", created=NOW - 312.4), NOW, S) == "queued 312s without worker pickup"
