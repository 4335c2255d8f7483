"""CONTRACT 3 over real HTTP: every row of the play decision, and the vanished-file rule.

One test per row, named in the contract's words. The unit table in
test_decision.py proves the pure function; these prove that the running
service, its store, its workers and its HTTP rendering keep the same promise.
"""

from __future__ import annotations

import os

import pytest
from conftest import HANG_SECONDS
from contract_steps import (
    cached_file, call_with_recording, jobs_of, new_business, play_until_cached,
    retry_counter, shared_harness, wait_for_job, wait_until_running,
)

from recsvc.demo.audio import tune_for

PROCESSING_FIELDS = {"status", "job_id", "job_status", "attempt", "max_attempts", "retry_after", "message"}


@pytest.fixture(scope="module")
def no_workers(tmp_path_factory, store_kind):
    """recsvc with --workers 0, shared by the tests that never move the clock."""
    yield from shared_harness(tmp_path_factory, workers=0)


@pytest.fixture(scope="module")
def live(tmp_path_factory, store_kind):
    """recsvc with live workers, shared by the tests that never move the clock."""
    yield from shared_harness(tmp_path_factory, workers=2, retry_after=3, recovery_retry_after=7,
                              download_timeout=HANG_SECONDS)


# ---------------------------------------------------------------- row 1


@pytest.mark.parametrize("token, call_sid", [
    pytest.param(None, "CA1", id="no token"),
    pytest.param("not-a-token", "CA1", id="wrong token"),
    pytest.param("not-a-token", "a.b", id="wrong token and an invalid call_sid: row 1 wins"),
    pytest.param(None, "", id="no token and an empty call_sid: row 1 wins"),
])
def test_row_1_no_or_wrong_credentials_is_401_with_www_authenticate_bearer(no_workers, token, call_sid):
    h = no_workers
    acme = new_business(h)
    call_with_recording(h, acme, "CA1")

    answer = h.play(token, call_sid)

    assert answer.status == 401
    assert answer.header("WWW-Authenticate") == "Bearer"
    assert answer.json["error"] == "unauthorized"
    assert jobs_of(h, acme, "CA1") == []  # no side effect


# ---------------------------------------------------------------- row 2


@pytest.mark.parametrize("raw_call_sid", [
    pytest.param("CA%41", id="percent-encoded CAA is checked raw, not decoded"),
    pytest.param("C" * 65, id="65 characters"),
    pytest.param("a.b", id="a dot"),
    pytest.param("", id="empty segment"),
])
def test_row_2_call_sid_not_matching_the_pattern_on_the_raw_path_is_400_invalid_call_sid(no_workers, raw_call_sid):
    h = no_workers
    acme = new_business(h)
    call_with_recording(h, acme, "CAA")

    answer = h.play(acme.token, raw_call_sid)

    assert answer.status == 400
    assert answer.json["error"] == "invalid_call_sid"
    assert isinstance(answer.json["message"], str) and answer.json["message"]
    assert jobs_of(h, acme, "CAA") == []  # the decoded name was never looked at


# ---------------------------------------------------------------- row 3


@pytest.mark.parametrize("call_sid", [
    pytest.param("CAnowhere", id="a call that exists nowhere"),
    pytest.param("C" * 64, id="64 characters is a valid call_sid"),
])
def test_row_3_no_such_call_for_this_business_is_404_call_not_found(no_workers, call_sid):
    h = no_workers
    acme = new_business(h)

    answer = h.play(acme.token, call_sid)

    assert answer.status == 404
    assert answer.json["error"] == "call_not_found"


# ---------------------------------------------------------------- row 4


def test_row_4_cached_recording_is_200_with_the_exact_upstream_bytes_typed_from_the_bytes(live):
    h = live
    acme = new_business(h)
    wav = tune_for("row 4")
    call_with_recording(h, acme, "CA4", body=wav, content_type="application/octet-stream")

    answer = play_until_cached(h, acme, "CA4")

    assert answer.body == wav
    assert answer.header("Content-Type") == "audio/wav"
    assert answer.header("Content-Length") == str(len(wav))
    assert len(jobs_of(h, acme, "CA4")) == 1
    assert h.play(acme.token, "CA4").body == wav  # no side effect: still one job
    assert len(jobs_of(h, acme, "CA4")) == 1


# ---------------------------------------------------------------- row 5


@pytest.mark.parametrize("harness", [pytest.param("live", id="live workers"),
                                     pytest.param("no_workers", id="no live worker")])
def test_row_5_call_without_recording_url_is_404_no_recording_url(request, harness):
    h = request.getfixturevalue(harness)
    acme = new_business(h)
    assert h.put_call(acme.token, "CA5", None).status == 201

    answer = h.play(acme.token, "CA5")

    assert answer.status == 404
    assert answer.json["error"] == "no_recording_url"
    assert jobs_of(h, acme, "CA5") == []


# ---------------------------------------------------------------- row 6


@pytest.mark.parametrize("upstream_status", [404, 410])
def test_row_6_recording_missing_upstream_is_404_recording_not_found_upstream_and_never_fetched_again(
        live, upstream_status):
    h = live
    acme = new_business(h)
    url = call_with_recording(h, acme, "CA6", status=upstream_status, body=b"gone")
    path = url.removeprefix(h.upstream.base_url)

    assert h.play(acme.token, "CA6").status == 202
    assert wait_for_job(h, acme, "CA6")["error_code"] == "upstream_not_found"

    for _ in range(3):
        answer = h.play(acme.token, "CA6")
        assert answer.status == 404
        assert answer.json["error"] == "recording_not_found_upstream"
    assert h.upstream.hits(path) == 1
    assert len(jobs_of(h, acme, "CA6")) == 1
    assert retry_counter(h, acme, "CA6") == {"key": f"recording_retry_attempts:{acme.id}:CA6",
                                             "attempts": 0, "ttl": -2}


# ---------------------------------------------------------------- row 7


def _no_live_worker(make_harness, how: str):
    # 3 x 1.5 s = 4.5 s, which a client is told as 5 (rounded up, CONTRACT 1).
    if how == "workers 0":
        return make_harness(workers=0, heartbeat_interval=1.5)
    h = make_harness(workers=2, heartbeat_interval=1.5)
    assert h.admin("POST", "/admin/workers/pause").json == {"paused": True}
    return h


@pytest.mark.parametrize("how", ["workers 0", "paused"])
def test_row_7_no_live_worker_is_500_worker_not_processing_queue_and_queues_one_job(make_harness, how):
    h = _no_live_worker(make_harness, how)
    acme = new_business(h)
    call_with_recording(h, acme, "CA7")

    answers = [h.play(acme.token, "CA7") for _ in range(3)]

    for answer in answers:
        assert answer.status == 500
        assert answer.json["error"] == "worker_not_processing_queue"
        assert answer.json["reason"] == "no live worker"
        assert answer.json["retry_after"] == 5
        assert answer.header("Retry-After") == "5"
    jobs = jobs_of(h, acme, "CA7")
    assert [(j["status"], j["attempt"]) for j in jobs] == [("queued", 0)]  # created exactly once
    assert retry_counter(h, acme, "CA7")["attempts"] == 0
    assert retry_counter(h, acme, "CA7")["ttl"] == -2


def test_row_7_the_queued_job_runs_once_a_worker_is_back(make_harness):
    h = _no_live_worker(make_harness, "paused")
    acme = new_business(h)
    wav = tune_for("row 7 back")
    call_with_recording(h, acme, "CA7", body=wav)
    assert h.play(acme.token, "CA7").status == 500

    assert h.admin("POST", "/admin/workers/resume").json == {"paused": False}

    assert wait_for_job(h, acme, "CA7")["status"] == "completed"
    answer = h.play(acme.token, "CA7")
    assert (answer.status, answer.body) == (200, wav)
    assert len(jobs_of(h, acme, "CA7")) == 1


# ---------------------------------------------------------------- row 9


def test_row_9_active_job_not_stuck_is_202_with_the_processing_body_and_retry_after(hanging):
    h = hanging(retry_after=3, recovery_retry_after=7)
    acme = new_business(h)
    call_with_recording(h, acme, "CA9", hang=True)
    first = h.play(acme.token, "CA9")
    wait_until_running(h, acme, "CA9")

    answer = h.play(acme.token, "CA9")

    assert answer.status == 202
    body = answer.json
    assert set(body) == PROCESSING_FIELDS
    assert body["status"] == "processing"
    assert body["job_id"] == first.json["job_id"]
    assert body["job_status"] == "running"
    assert body["attempt"] == 0
    assert body["max_attempts"] == 3
    assert body["retry_after"] == 3
    assert answer.header("Retry-After") == "3"
    assert isinstance(body["message"], str) and body["message"]
    assert len(jobs_of(h, acme, "CA9")) == 1


def test_row_9_attempt_is_that_jobs_attempt_number_with_the_ordinary_retry_after(hanging):
    h = hanging(retry_after=3, recovery_retry_after=7)
    h.app.downloader.backoff = 0.01  # three quick requests, then download_failed
    acme = new_business(h)
    call_with_recording(h, acme, "CA9", path="/flaky.wav", status=500, body=b"oops")
    h.play(acme.token, "CA9")
    assert wait_for_job(h, acme, "CA9")["error_code"] == "download_failed"
    h.upstream.set("/flaky.wav", hang=True, body=tune_for("x"))
    retry = h.play(acme.token, "CA9")
    assert (retry.status, retry.json["attempt"]) == (202, 1)

    answer = h.play(acme.token, "CA9")

    assert answer.status == 202
    assert answer.json["job_id"] == retry.json["job_id"]
    assert answer.json["attempt"] == 1
    assert answer.json["retry_after"] == 3
    assert answer.header("Retry-After") == "3"


# ---------------------------------------------------------------- row 10a


def test_row_10a_no_job_yet_is_202_attempt_0_creating_a_job_without_touching_the_counter(hanging):
    h = hanging(retry_after=3, recovery_retry_after=7)
    acme = new_business(h)
    call_with_recording(h, acme, "CA10", hang=True)

    answer = h.play(acme.token, "CA10")

    assert answer.status == 202
    assert set(answer.json) == PROCESSING_FIELDS
    assert answer.json["attempt"] == 0
    assert answer.json["retry_after"] == 3
    assert answer.header("Retry-After") == "3"
    jobs = jobs_of(h, acme, "CA10")
    assert [j["id"] for j in jobs] == [answer.json["job_id"]]
    assert jobs[0]["attempt"] == 0
    assert retry_counter(h, acme, "CA10")["ttl"] == -2


# ---------------------------------------------------------------- row 10b


def test_row_10b_last_job_failed_is_202_with_recovery_retry_after_and_attempt_the_counter_after_incr(make_harness):
    h = make_harness(retry_after=3, recovery_retry_after=7, retry_window=600, download_timeout=0.3)
    acme = new_business(h)
    call_with_recording(h, acme, "CA10", status=500, body=b"oops")
    h.play(acme.token, "CA10")

    for expected_attempt in (1, 2):
        assert wait_for_job(h, acme, "CA10")["status"] == "failed"
        answer = h.play(acme.token, "CA10")
        assert answer.status == 202
        assert set(answer.json) == PROCESSING_FIELDS
        assert answer.json["attempt"] == expected_attempt
        assert answer.json["retry_after"] == 7
        assert answer.header("Retry-After") == "7"
        counter = retry_counter(h, acme, "CA10")
        assert counter["attempts"] == expected_attempt
        assert counter["ttl"] == 600
        assert jobs_of(h, acme, "CA10")[0]["id"] == answer.json["job_id"]
    assert len(jobs_of(h, acme, "CA10")) == 3


# ---------------------------------------------------------------- the vanished file


def _delete(path: str) -> None:
    os.unlink(path)


def _truncate(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def _grow(path: str) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\0" * 10)


@pytest.mark.parametrize("damage", [
    pytest.param(_delete, id="file vanished"),
    pytest.param(_truncate, id="file shorter than its recorded size"),
    pytest.param(_grow, id="file longer than its recorded size"),
])
def test_cached_file_vanished_or_of_another_size_costs_one_retry_then_serves_the_right_bytes(live, damage):
    h = live
    acme = new_business(h)
    wav = tune_for("vanishing")
    url = call_with_recording(h, acme, "CAV", body=wav)
    path = url.removeprefix(h.upstream.base_url)
    assert play_until_cached(h, acme, "CAV").body == wav
    h.upstream.set(path, body=wav, hang=True)  # hold the next download, so the dropped row can be seen
    damage(cached_file(h, acme, "CAV"))

    answer = h.play(acme.token, "CAV")

    assert answer.status == 202
    assert answer.json["attempt"] == 1
    assert answer.header("Retry-After") == "7"
    assert retry_counter(h, acme, "CAV")["attempts"] == 1
    assert h.request("GET", "/api/calls/CAV", token=acme.token).json["cached"] is False
    h.upstream.set(path, body=wav)
    h.upstream.release()
    assert wait_for_job(h, acme, "CAV")["status"] == "completed"
    again = h.play(acme.token, "CAV")
    assert (again.status, again.body) == (200, wav)
    assert len(jobs_of(h, acme, "CAV")) == 2


def test_the_processing_body_is_compact_json_of_exactly_its_values():
    import json

    from recsvc.http.api import processing_body

    expected = {"status": "processing", "job_id": 7, "job_status": "running", "attempt": 1, "max_attempts": 3,
                "retry_after": 2, "message": "The recording is being prepared; ask again in 2 seconds."}
    for _ in range(2):  # made once, then remembered: the same bytes
        assert processing_body(7, "running", 1, 3, 2) == json.dumps(expected, separators=(",", ":")).encode()
    assert json.loads(processing_body(7, "queued", 1, 3, 2))["job_status"] == "queued"
    assert json.loads(processing_body(7, "running", True, 3, 2))["attempt"] is True  # not the body of attempt 1
