"""CONTRACT 8 over real HTTP: one active job per call, bounded retries, no tenant leaks, signed links.

Concurrency tests release their requests together with a barrier, from
threads, against one running recsvc; the store's transactions (not luck) must
keep the promise.
"""

from __future__ import annotations

import re
import urllib.parse
from datetime import datetime, timezone

import pytest
from contract_steps import (
    PAST_JOB_TIMEOUT, at_once, call_with_recording, jobs_of, new_business, play_until_cached,
    retry_counter, shared_harness, wait_for_job, wait_until_running,
)

from conftest import REDIS_TTL_WINDOW
from recsvc.demo.audio import sized_wav, tune_for

CONCURRENT = 50


@pytest.fixture(scope="module")
def live(tmp_path_factory, store_kind):
    """Live workers and quick downloads, shared by tests that never move the clock."""
    yield from shared_harness(tmp_path_factory, workers=2, download_timeout=0.3)


# ---------------------------------------------------------------- invariant 1


def test_50_simultaneous_first_requests_for_one_call_create_exactly_one_job(hanging):
    h = hanging(workers=2)
    acme = new_business(h)
    call_with_recording(h, acme, "CARUSH", hang=True)

    answers = at_once(CONCURRENT, lambda: h.play(acme.token, "CARUSH"))

    assert {a.status for a in answers} == {202}
    assert {a.json["attempt"] for a in answers} == {0}
    jobs = jobs_of(h, acme, "CARUSH")
    assert len(jobs) == 1
    assert {a.json["job_id"] for a in answers} == {jobs[0]["id"]}


def test_50_simultaneous_first_requests_with_no_live_worker_queue_exactly_one_job(make_harness):
    h = make_harness(workers=0)
    acme = new_business(h)
    call_with_recording(h, acme, "CARUSH7")

    answers = at_once(CONCURRENT, lambda: h.play(acme.token, "CARUSH7"))

    assert {(a.status, a.json["reason"]) for a in answers} == {(500, "no live worker")}
    assert [j["status"] for j in jobs_of(h, acme, "CARUSH7")] == ["queued"]


def test_50_simultaneous_requests_on_a_stuck_job_create_exactly_one_replacement_and_one_incr(hanging):
    h = hanging(workers=3)
    acme = new_business(h)
    call_with_recording(h, acme, "CASTAMPEDE", hang=True)
    assert h.play(acme.token, "CASTAMPEDE").status == 202
    stuck = wait_until_running(h, acme, "CASTAMPEDE")
    h.advance(PAST_JOB_TIMEOUT)

    answers = at_once(CONCURRENT, lambda: h.play(acme.token, "CASTAMPEDE"))

    assert {a.status for a in answers} == {202}
    assert {a.json["attempt"] for a in answers} == {1}
    jobs = jobs_of(h, acme, "CASTAMPEDE")
    assert len(jobs) == 2
    assert jobs[1]["id"] == stuck["id"] and jobs[1]["error_code"] == "stuck"
    assert {a.json["job_id"] for a in answers} == {jobs[0]["id"]}
    assert retry_counter(h, acme, "CASTAMPEDE")["attempts"] == 1
    assert sum(a.header("Retry-After") == str(int(h.settings.recovery_retry_after)) for a in answers) == 1


# ---------------------------------------------------------------- invariant 2


def play_until_refused(h, business, call_sid: str, limit: int = 10) -> int:
    """Play as a patient player would, each time after the job ended; the number of 202s before the 500."""
    for plays in range(limit):
        answer = h.play(business.token, call_sid)
        if answer.status == 500:
            return plays
        assert answer.status == 202, answer.body
        wait_for_job(h, business, call_sid)
    raise AssertionError(f"{call_sid} was never refused in {limit} plays")


@pytest.mark.sqlite_store_only(REDIS_TTL_WINDOW)
def test_per_call_at_most_max_retry_attempts_retry_jobs_plus_the_first_between_two_quiet_windows(make_harness):
    h = make_harness(workers=2, download_timeout=0.3, max_retry_attempts=2, retry_window=600)
    acme = new_business(h)
    call_with_recording(h, acme, "CABOUND", status=503, body=b"unavailable")

    assert play_until_refused(h, acme, "CABOUND") == 1 + 2
    assert len(jobs_of(h, acme, "CABOUND")) == 3
    for _ in range(3):  # refused retries create nothing
        assert h.play(acme.token, "CABOUND").status == 500
    assert len(jobs_of(h, acme, "CABOUND")) == 3

    h.advance(601)  # a quiet window: the next cycle has its own 2 retries and no more
    assert play_until_refused(h, acme, "CABOUND") == 2
    jobs = jobs_of(h, acme, "CABOUND")
    assert len(jobs) == 3 + 2
    assert [j["attempt"] for j in reversed(jobs)] == [0, 1, 2, 1, 2]


# ---------------------------------------------------------------- invariant 7


@pytest.mark.parametrize("how", ["paused", "workers 0"])
def test_with_no_live_worker_the_first_request_hears_worker_not_processing_queue(make_harness, how):
    h = make_harness(workers=0 if how == "workers 0" else 2)
    if how == "paused":
        h.admin("POST", "/admin/workers/pause")
    acme = new_business(h)
    call_with_recording(h, acme, "CAFIRST")

    answer = h.play(acme.token, "CAFIRST")

    assert answer.status == 500
    assert answer.json["error"] == "worker_not_processing_queue"
    assert answer.json["reason"] == "no live worker"


def test_a_pool_paused_while_a_job_runs_is_reported_on_the_next_request_not_after_job_timeout(hanging):
    h = hanging(workers=2)
    acme = new_business(h)
    call_with_recording(h, acme, "CAPAUSE", hang=True)
    assert h.play(acme.token, "CAPAUSE").status == 202
    wait_until_running(h, acme, "CAPAUSE")

    h.admin("POST", "/admin/workers/pause")

    answer = h.play(acme.token, "CAPAUSE")
    assert (answer.status, answer.json["reason"]) == (500, "no live worker")
    assert len(jobs_of(h, acme, "CAPAUSE")) == 1  # an active job exists: none is added


def test_a_pool_that_stops_beating_is_reported_after_3_heartbeat_intervals(hanging):
    # A long interval, so the pool's own heartbeat thread stays quiet during the test.
    h = hanging(workers=2, heartbeat_interval=100, job_timeout=10_000)
    acme = new_business(h)
    call_with_recording(h, acme, "CADEAD", hang=True)
    assert h.play(acme.token, "CADEAD").status == 202
    wait_until_running(h, acme, "CADEAD")

    h.clock.advance(299)
    assert h.play(acme.token, "CADEAD").status == 202  # still within 3 x 100 s
    h.clock.advance(2)

    answer = h.play(acme.token, "CADEAD")
    assert (answer.status, answer.json["reason"], answer.json["retry_after"]) == (500, "no live worker", 300)


# ---------------------------------------------------------------- invariant 5: tenants


A_CALLS = {"CAWITHJOB": "CANOWHERE", "CACACHED": "CAABSENT"}  # A's call -> a name of the same length known nowhere
ROUTES = [
    pytest.param("GET", "/api/calls/{sid}", None, id="GET /api/calls"),
    pytest.param("PUT", "/api/calls/{sid}", "put", id="PUT /api/calls"),
    pytest.param("GET", "/api/recordings/file/{sid}", None, id="GET /api/recordings/file"),
    pytest.param("HEAD", "/api/recordings/file/{sid}", None, id="HEAD /api/recordings/file"),
    pytest.param("POST", "/api/recordings/{sid}/link", None, id="POST /api/recordings/{sid}/link"),
]


def snapshot_of(h, business, call_sids) -> dict:
    return {sid: (h.request("GET", f"/api/calls/{sid}", token=business.token).json,
                  jobs_of(h, business, sid), retry_counter(h, business, sid)) for sid in call_sids}


def comparable(answer, call_sid: str) -> tuple:
    headers = {k: v for k, v in answer.headers.items() if k not in ("date",)}
    return answer.status, headers, answer.body.replace(call_sid.encode(), b"<sid>")


@pytest.mark.parametrize("method, template, body", ROUTES)
def test_business_b_learns_nothing_of_business_as_calls_and_changes_nothing(hanging, method, template, body):
    h = hanging(workers=2)
    h.app.downloader.backoff = 0.01
    a, b = new_business(h, "A"), new_business(h, "B")
    url = call_with_recording(h, a, "CAWITHJOB", status=500, body=b"oops")  # a failed job, a retry, a counter
    h.play(a.token, "CAWITHJOB")
    wait_for_job(h, a, "CAWITHJOB")
    h.upstream.set(url.removeprefix(h.upstream.base_url), hang=True, body=b"")
    assert h.play(a.token, "CAWITHJOB").status == 202
    call_with_recording(h, a, "CACACHED", body=tune_for("A's secret"))
    play_until_cached(h, a, "CACACHED")
    before = snapshot_of(h, a, A_CALLS)
    payload = {"recording_url": h.upstream.set("/b.wav", body=tune_for("B"))} if body == "put" else None

    for a_sid, nowhere_sid in A_CALLS.items():
        on_a = h.request(method, template.format(sid=a_sid), token=b.token, body=payload)
        on_nowhere = h.request(method, template.format(sid=nowhere_sid), token=b.token, body=payload)
        assert comparable(on_a, a_sid) == comparable(on_nowhere, nowhere_sid)
        assert on_a.status in (404, 201)

    assert snapshot_of(h, a, A_CALLS) == before


def test_two_businesses_may_each_have_call_ca1_and_each_hears_its_own_recording(live):
    h = live
    a, b = new_business(h, "A"), new_business(h, "B")
    wav_a, wav_b = tune_for("A's CA1"), tune_for("B's CA1")
    url_a = call_with_recording(h, a, "CA1", body=wav_a)
    url_b = call_with_recording(h, b, "CA1", body=wav_b)

    assert play_until_cached(h, a, "CA1").body == wav_a
    assert play_until_cached(h, b, "CA1").body == wav_b
    assert h.request("GET", "/api/calls/CA1", token=a.token).json["recording_url"] == url_a
    assert h.request("GET", "/api/calls/CA1", token=b.token).json["recording_url"] == url_b
    assert h.play(a.token, "CA1").body == wav_a


# ---------------------------------------------------------------- signed links (CONTRACT 6)


LINK = re.compile(r"^/api/recordings/file/(?P<sid>[A-Za-z0-9_-]+)\?exp=(?P<exp>\d+)&sig=(?P<sig>[0-9a-f]+)$")


def link_for(h, business, call_sid: str) -> str:
    answer = h.request("POST", f"/api/recordings/{call_sid}/link", token=business.token)
    assert answer.status == 200, answer.body
    assert LINK.match(answer.json["url"]), answer.json["url"]
    return answer.json["url"]


def with_query(link: str, **changes) -> str:
    path, _, query = link.partition("?")
    fields = dict(urllib.parse.parse_qsl(query))
    fields.update(changes)
    return f"{path}?{urllib.parse.urlencode(fields)}"


@pytest.mark.parametrize("recording", [
    pytest.param("cached", id="a cached recording"),
    pytest.param(None, id="a call without recording_url"),
])
def test_a_signed_link_answers_without_a_bearer_header_exactly_as_the_bearer_request(live, recording):
    h = live
    acme = new_business(h)
    call_sid = f"CALINK{recording or 'none'}"
    if recording:
        call_with_recording(h, acme, call_sid, body=sized_wav(3000, "link"))
        play_until_cached(h, acme, call_sid)
    else:
        h.put_call(acme.token, call_sid, None)
    link = link_for(h, acme, call_sid)

    by_link = h.request("GET", link)
    by_bearer = h.play(acme.token, call_sid)

    assert comparable(by_link, call_sid) == comparable(by_bearer, call_sid)
    assert by_link.status == (200 if recording else 404)


def test_a_signed_link_expires_15_minutes_after_it_was_made(live):
    h = live
    acme = new_business(h)
    h.put_call(acme.token, "CAEXP", None)
    answer = h.request("POST", "/api/recordings/CAEXP/link", token=acme.token)

    exp = int(LINK.match(answer.json["url"])["exp"])
    assert exp == int(h.clock()) + 15 * 60
    expires_at = answer.json["expires_at"]
    assert expires_at.endswith("Z")
    assert datetime.fromisoformat(expires_at.removesuffix("Z")).replace(tzinfo=timezone.utc).timestamp() == exp


def test_an_expired_signed_link_is_401(make_harness):
    h = make_harness(workers=0)
    acme = new_business(h)
    h.put_call(acme.token, "CAOLD", None)
    link = link_for(h, acme, "CAOLD")
    assert h.request("GET", link).status == 404  # valid now: the call has no recording

    h.advance(15 * 60 + 1)

    answer = h.request("GET", link)
    assert answer.status == 401
    assert answer.header("WWW-Authenticate") == "Bearer"
    assert answer.json["error"] == "unauthorized"


def _other_sig(link: str) -> str:
    sig = LINK.match(link)["sig"]
    return with_query(link, sig=("0" if sig[0] != "0" else "1") + sig[1:])


ALTERED = [
    pytest.param(_other_sig, id="altered sig"),
    pytest.param(lambda link: with_query(link, exp=str(int(LINK.match(link)["exp"]) + 60)), id="altered exp"),
    pytest.param(lambda link: with_query(link, sig=""), id="empty sig"),
    pytest.param(lambda link: link.split("&sig=")[0], id="no sig"),
    pytest.param(lambda link: link.replace("/CAMINE?", "/CAOTHER?"), id="moved to another call of the same business"),
    pytest.param(lambda link: link.replace("/CAMINE?", "/CANOWHERE?"), id="moved to a call that exists nowhere"),
    pytest.param(lambda link: link.replace("/CAMINE?", "/CAOFB?"), id="moved to another business's call"),
]


@pytest.mark.parametrize("alter", ALTERED)
def test_an_altered_signed_link_is_401(live, alter):
    h = live
    a, b = new_business(h, "A"), new_business(h, "B")
    for business, call_sid in ((a, "CAMINE"), (a, "CAOTHER"), (b, "CAOFB")):
        h.put_call(business.token, call_sid, None)
    link = link_for(h, a, "CAMINE")

    answer = h.request("GET", alter(link))

    assert answer.status == 401
    assert answer.header("WWW-Authenticate") == "Bearer"
    assert answer.json["error"] == "unauthorized"


def test_a_link_of_business_a_never_reaches_business_bs_call_of_the_same_name(live):
    h = live
    a, b = new_business(h, "A"), new_business(h, "B")
    wav_a, wav_b = sized_wav(2000, "A"), sized_wav(2100, "B")
    call_with_recording(h, a, "CATWIN", body=wav_a)
    call_with_recording(h, b, "CATWIN", body=wav_b)
    play_until_cached(h, a, "CATWIN")
    link = link_for(h, a, "CATWIN")

    answer = h.request("GET", link)

    assert (answer.status, answer.body) == (200, wav_a)
    assert jobs_of(h, b, "CATWIN") == []  # B's call was not touched: no job was made for it
