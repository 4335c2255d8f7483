"""CONTRACT 6 over real HTTP: the admin surface, health, metrics, calls, and the HTTP hygiene rules."""

from __future__ import annotations

import os
import re

import pytest
from conftest import ADMIN_TOKEN, REDIS_TTL_WINDOW
from contract_steps import (
    call_with_recording, jobs_of, new_business, play_until_cached, raw_exchange, shared_harness, wait_for_job,
)

from recsvc.demo.audio import sized_wav

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
JOB_FIELDS = {"id", "business_id", "call_sid", "recording_url", "status", "created_at", "started_at", "finished_at",
              "heartbeat_at", "worker_id", "error_code", "error_message"}
ALLOWED_HOST = "recordings.example.com"

ADMIN_ROUTES = [
    pytest.param("POST", "/admin/businesses", {"name": "x"}, id="POST /admin/businesses"),
    pytest.param("POST", "/admin/workers/pause", None, id="POST /admin/workers/pause"),
    pytest.param("POST", "/admin/workers/resume", None, id="POST /admin/workers/resume"),
    pytest.param("POST", "/admin/cleanup", None, id="POST /admin/cleanup"),
    pytest.param("GET", "/admin/jobs", None, id="GET /admin/jobs"),
    pytest.param("GET", "/admin/jobs?call_sid=CA1&business_id=1", None, id="GET /admin/jobs filtered"),
    pytest.param("GET", "/admin/retry-counters/1/CA1", None, id="GET /admin/retry-counters"),
]


@pytest.fixture(scope="module")
def svc_shared(tmp_path_factory, store_kind):
    """One recsvc with live workers and an admin token, for tests that change no shared state."""
    yield from shared_harness(tmp_path_factory, workers=1, download_timeout=0.3,
                              allow_upstream=("loopback", ALLOWED_HOST))


@pytest.fixture(scope="module")
def no_admin(tmp_path_factory, store_kind):
    yield from shared_harness(tmp_path_factory, workers=0, admin_token=None)


# ---------------------------------------------------------------- the admin gate


@pytest.mark.parametrize("method, path, body", ADMIN_ROUTES + [
    pytest.param("GET", "/admin", None, id="GET /admin"),
    pytest.param("GET", "/admin/no-such-thing", None, id="an unknown /admin path"),
])
def test_every_admin_path_is_404_when_no_admin_token_is_set(no_admin, method, path, body):
    unknown = no_admin.request("GET", "/no-such-path")

    for token in (ADMIN_TOKEN, None, "anything-at-all-0123456789"):
        answer = no_admin.request(method, path, token=token, body=body)
        assert answer.status == 404
        assert answer.json == unknown.json == {"error": "not_found", "message": unknown.json["message"]}
        assert answer.header("WWW-Authenticate") is None


@pytest.mark.parametrize("method, path, body", ADMIN_ROUTES)
@pytest.mark.parametrize("token", [pytest.param(None, id="no token"), pytest.param("wrong-admin-token-0000", id="wrong"),
                                   pytest.param(ADMIN_TOKEN + "x", id="admin token plus a character")])
def test_every_admin_path_is_401_with_a_wrong_admin_token(svc_shared, method, path, body, token):
    answer = svc_shared.request(method, path, token=token, body=body)

    assert answer.status == 401
    assert answer.header("WWW-Authenticate") == "Bearer"
    assert answer.json["error"] == "unauthorized"


def test_a_business_token_is_not_an_admin_token(svc_shared):
    acme = new_business(svc_shared)

    answer = svc_shared.request("GET", "/admin/jobs", token=acme.token)

    assert answer.status == 401


# ---------------------------------------------------------------- POST /admin/businesses


def test_creating_a_business_shows_its_token_once_and_stores_only_a_hash(make_harness):
    h = make_harness(workers=0)

    answer = h.admin("POST", "/admin/businesses", {"name": "Acme Telecom"})

    assert answer.status == 201
    assert set(answer.json) == {"id", "name", "token"}
    assert answer.json["name"] == "Acme Telecom"
    token = answer.json["token"]
    assert isinstance(answer.json["id"], int) and len(token) >= 16
    assert h.put_call(token, "CA1", None).status == 201  # the token works
    data_dir = h.settings.data_dir
    for folder, _dirs, names in os.walk(data_dir):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                assert token.encode() not in handle.read(), f"the token is stored in {name}"
    second = h.admin("POST", "/admin/businesses", {"name": "Acme Telecom"})
    assert second.json["token"] != token and second.json["id"] != answer.json["id"]


@pytest.mark.parametrize("body", [
    pytest.param({}, id="no name"), pytest.param({"name": ""}, id="empty name"),
    pytest.param({"name": 7}, id="a number"), pytest.param(b"not json", id="not JSON"),
])
def test_creating_a_business_without_a_name_is_400(svc_shared, body):
    answer = svc_shared.admin("POST", "/admin/businesses", body)

    assert answer.status == 400
    assert answer.json["error"]


# ---------------------------------------------------------------- pause, resume, readiness


def test_pause_and_resume_answer_the_flag_and_readyz_follows_it(make_harness):
    h = make_harness(workers=1)
    assert h.request("GET", "/readyz").json == {"status": "ready"}

    paused = h.admin("POST", "/admin/workers/pause")
    not_ready = h.request("GET", "/readyz")
    resumed = h.admin("POST", "/admin/workers/resume")
    ready = h.request("GET", "/readyz")

    assert (paused.status, paused.json) == (200, {"paused": True})
    assert not_ready.status == 503
    assert not_ready.json["status"] == "not_ready" and not_ready.json["reason"]
    assert (resumed.status, resumed.json) == (200, {"paused": False})
    assert (ready.status, ready.json) == (200, {"status": "ready"})


def test_readyz_is_503_not_ready_with_no_worker(no_admin):
    answer = no_admin.request("GET", "/readyz")

    assert answer.status == 503
    assert answer.json["status"] == "not_ready"
    assert isinstance(answer.json["reason"], str) and answer.json["reason"]


def test_healthz_is_200_ok_whatever_the_workers(no_admin, svc_shared):
    for h in (no_admin, svc_shared):
        answer = h.request("GET", "/healthz")
        assert (answer.status, answer.json) == (200, {"status": "ok"})


# ---------------------------------------------------------------- GET /admin/jobs, retry counters


def test_admin_jobs_are_newest_first_with_the_fields_of_contract_1_and_filter_by_business(svc_shared):
    h = svc_shared
    a, b = new_business(h, "A"), new_business(h, "B")
    for business in (a, b, a):
        call_with_recording(h, business, "CAJOBS", body=sized_wav(500, str(business.id)))
        h.play(business.token, "CAJOBS")
        wait_for_job(h, business, "CAJOBS")
    h.put_call(a.token, "CAJOBS", h.upstream.set(f"/{a.id}/other.wav", body=sized_wav(600)))
    h.play(a.token, "CAJOBS")
    wait_for_job(h, a, "CAJOBS")

    every = h.admin("GET", "/admin/jobs?call_sid=CAJOBS").json["jobs"]
    only_a = h.admin("GET", f"/admin/jobs?call_sid=CAJOBS&business_id={a.id}").json["jobs"]

    assert [j["id"] for j in every] == sorted((j["id"] for j in every), reverse=True)
    assert {j["business_id"] for j in every} == {a.id, b.id}
    assert [j["id"] for j in only_a] == [j["id"] for j in every if j["business_id"] == a.id]
    assert len(only_a) == 2
    for job in every:
        assert JOB_FIELDS <= set(job)
        assert job["call_sid"] == "CAJOBS"
        assert job["status"] == "completed" and job["error_code"] is None and job["error_message"] is None
        for field in ("created_at", "started_at", "finished_at", "heartbeat_at"):
            assert ISO_UTC.match(job[field]), (field, job[field])
        assert job["worker_id"]
    assert h.admin("GET", "/admin/jobs").json["jobs"][0]["id"] == every[0]["id"]


@pytest.mark.sqlite_store_only(REDIS_TTL_WINDOW)
def test_retry_counter_shape_is_key_attempts_ttl_as_redis_says(make_harness):
    h = make_harness(workers=1, download_timeout=0.3, retry_window=600)
    acme = new_business(h)
    call_with_recording(h, acme, "CACTR", status=500, body=b"oops")
    absent = h.admin("GET", f"/admin/retry-counters/{acme.id}/CACTR")
    h.play(acme.token, "CACTR")
    wait_for_job(h, acme, "CACTR")
    h.play(acme.token, "CACTR")
    h.advance(10)

    counted = h.admin("GET", f"/admin/retry-counters/{acme.id}/CACTR")

    key = f"recording_retry_attempts:{acme.id}:CACTR"
    assert (absent.status, absent.json) == (200, {"key": key, "attempts": 0, "ttl": -2})
    assert (counted.status, counted.json) == (200, {"key": key, "attempts": 1, "ttl": 590})


# ---------------------------------------------------------------- /metrics


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample, 0 when absent; labels must match exactly."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        found = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        assert found, f"not Prometheus text: {line!r}"
        sample_labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found[2] or ""))
        if found[1] == name and sample_labels == {k: str(v) for k, v in labels.items()}:
            return float(found[3])
    return 0.0


def test_metrics_is_prometheus_text_that_moves_with_requests_and_jobs(make_harness):
    h = make_harness(workers=1)
    acme = new_business(h)
    call_with_recording(h, acme, "CAMET", body=sized_wav(800))
    before = h.request("GET", "/metrics")

    play_until_cached(h, acme, "CAMET")

    after = h.request("GET", "/metrics")
    assert after.status == 200
    assert after.header("Content-Type").startswith("text/plain")
    text, old = after.body.decode(), before.body.decode()
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or re.match(r"^\w+(\{.*\})? \S+$", line), line
    for family in ("recsvc_http_requests_total", "recsvc_jobs", "recsvc_stuck_jobs_total",
                   "recsvc_fail_fast_trips_total", "recsvc_queue_depth", "recsvc_job_duration_seconds"):
        assert f"# TYPE {family} " in text, family
    played = dict(route="recording_file", method="GET", status="202")
    assert metric(text, "recsvc_http_requests_total", **played) == metric(old, "recsvc_http_requests_total", **played) + 1
    served = dict(played, status="200")
    assert metric(text, "recsvc_http_requests_total", **served) == metric(old, "recsvc_http_requests_total", **served) + 1
    assert metric(text, "recsvc_jobs", status="completed") == metric(old, "recsvc_jobs", status="completed") + 1
    assert metric(text, "recsvc_job_duration_seconds_count") == metric(old, "recsvc_job_duration_seconds_count") + 1


# ---------------------------------------------------------------- HTTP hygiene


@pytest.mark.parametrize("token", [pytest.param(None, id="no credentials"), pytest.param("business", id="a business token"),
                                   pytest.param(ADMIN_TOKEN, id="the admin token")])
@pytest.mark.parametrize("path", ["/no-such-path", "/api", "/api/calls", "/api/calls/CA1/extra", "/api/recordings/file"])
def test_any_other_path_is_404_not_found_with_or_without_credentials(svc_shared, token, path):
    if token == "business":
        token = new_business(svc_shared).token

    answer = svc_shared.request("GET", path, token=token)

    assert answer.status == 404
    assert answer.json["error"] == "not_found"


@pytest.mark.parametrize("method, path, allow", [
    pytest.param("DELETE", "/api/calls/CA1", {"GET", "HEAD", "PUT"}, id="DELETE a call"),
    pytest.param("POST", "/api/calls/CA1", {"GET", "HEAD", "PUT"}, id="POST a call"),
    pytest.param("PUT", "/api/recordings/file/CA1", {"GET", "HEAD"}, id="PUT a recording file"),
    pytest.param("OPTIONS", "/api/recordings/file/CA1", {"GET", "HEAD"}, id="OPTIONS a recording file"),
    pytest.param("GET", "/api/recordings/CA1/link", {"POST"}, id="GET a link"),
    pytest.param("PATCH", "/healthz", {"GET", "HEAD"}, id="PATCH /healthz"),
    pytest.param("GET", "/admin/cleanup", {"POST"}, id="GET /admin/cleanup"),
    pytest.param("DELETE", "/admin/jobs", {"GET", "HEAD"}, id="DELETE /admin/jobs"),
    pytest.param("PUT", "/api/recordings/file/link", {"GET", "HEAD", "POST"}, id="PUT a path two routes match"),
])
def test_a_known_path_with_another_standard_method_is_405_with_allow(svc_shared, method, path, allow):
    answer = svc_shared.request(method, path, body=b"" if method in ("POST", "PUT", "PATCH") else None)

    assert answer.status == 405
    assert {m.strip() for m in answer.header("Allow").split(",")} == allow


def test_a_call_named_file_gets_a_signed_link_that_plays_it(svc_shared):
    h = svc_shared
    acme = new_business(h)
    call_with_recording(h, acme, "file")
    cached = play_until_cached(h, acme, "file")

    link = h.request("POST", "/api/recordings/file/link", token=acme.token, body=b"")
    played = h.request("GET", link.json["url"])

    assert link.status == 200, link.body
    assert link.json["url"].startswith("/api/recordings/file/file?")
    assert (played.status, played.body) == (200, cached.body)


@pytest.mark.parametrize("path", ["/api/calls/CA1", "/healthz", "/no-such-path"])
def test_an_unknown_method_is_501(svc_shared, path):
    answer = svc_shared.request("BREW", path)

    assert answer.status == 501


# ---------------------------------------------------------------- PUT /api/calls


def test_put_call_creates_with_201_then_updates_with_200_and_answers_the_call(svc_shared):
    h = svc_shared
    acme = new_business(h)
    first_url = f"https://{ALLOWED_HOST}/r/1.wav"

    created = h.put_call(acme.token, "CAPUT", first_url)
    updated = h.put_call(acme.token, "CAPUT", None)
    read = h.request("GET", "/api/calls/CAPUT", token=acme.token)

    assert created.status == 201
    assert set(created.json) == {"call_sid", "recording_url", "created_at", "cached", "latest_job"}
    assert (created.json["call_sid"], created.json["recording_url"]) == ("CAPUT", first_url)
    assert ISO_UTC.match(created.json["created_at"])
    assert (created.json["cached"], created.json["latest_job"]) == (False, None)
    assert updated.status == 200
    assert updated.json["recording_url"] is None
    assert updated.json["created_at"] == created.json["created_at"]
    assert (read.status, read.json) == (200, updated.json)
    assert jobs_of(h, acme, "CAPUT") == []  # storing a call downloads nothing


@pytest.mark.parametrize("url", [
    pytest.param(f"http://{ALLOWED_HOST}/r.wav", id="http on an allowed non-loopback host"),
    pytest.param("https://not-allowed.example.net/r.wav", id="a host not in allow-upstream"),
    pytest.param("ftp://127.0.0.1/r.wav", id="ftp to loopback"),
    pytest.param(f"ftp://{ALLOWED_HOST}/r.wav", id="ftp to an allowed host"),
    pytest.param(f"https://{ALLOWED_HOST}.evil.example/r.wav", id="an allowed host as a prefix"),
])
def test_a_recording_url_outside_the_allowlist_is_422_recording_url_not_allowed(svc_shared, url):
    acme = new_business(svc_shared)

    answer = svc_shared.put_call(acme.token, "CA422", url)

    assert answer.status == 422
    assert answer.json["error"] == "recording_url_not_allowed"
    assert svc_shared.request("GET", "/api/calls/CA422", token=acme.token).status == 404  # nothing stored


@pytest.mark.parametrize("body", [
    pytest.param(b"recording_url=https://x", id="not JSON"),
    pytest.param(b"[]", id="a JSON array"),
    pytest.param({}, id="no recording_url"),
    pytest.param({"url": "https://recordings.example.com/r.wav"}, id="a misspelt recording_url"),
    pytest.param({"recording_url": 5}, id="a number"),
])
def test_a_put_call_body_that_is_not_a_call_is_400(svc_shared, body):
    acme = new_business(svc_shared)

    answer = svc_shared.request("PUT", "/api/calls/CA400", token=acme.token, body=body)

    assert answer.status == 400
    assert answer.json["error"]
    assert svc_shared.request("GET", "/api/calls/CA400", token=acme.token).status == 404


@pytest.mark.parametrize("method, path", [("PUT", "/api/calls/CA411"), ("POST", "/api/recordings/CA411/link"),
                                          ("POST", "/admin/businesses")])
def test_a_put_or_post_without_content_length_is_411(svc_shared, method, path):
    acme = new_business(svc_shared)
    host, port = svc_shared.app.address
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {acme.token}\r\n"
            "Content-Type: application/json\r\nConnection: close\r\n\r\n")

    status, _ = raw_exchange(svc_shared, head.encode())

    assert status == 411
    assert svc_shared.request("GET", "/api/calls/CA411", token=acme.token).status == 404
