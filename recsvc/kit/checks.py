"""The conformance kit's checks: black-box promises of CONTRACT 3, 5, 6 and 7, one small function each.

Theory of operation. A check is a function of a ``Target`` (where the
implementation listens, its tokens, and the calls known to be in each state)
registered with ``@check(id, contract reference, *needs)`` and named for the
promise it checks. It returns quietly on PASS, raises ``Fail(reason)``, or
``Skip(reason)``. ``needs`` names what it must have: a call state (``ready``,
``pending``, ``no_url``, ``missing``), ``admin`` (the admin token),
``upstream`` (a URL that serves audio) or ``own_upstream`` (the kit's loopback
upstream, which it can script to hang or answer 404). ``CHECKS`` keeps registration order, which is the
run order: provisioning first (it fills in call states with --admin-token),
then reads, then the drills that pause the workers.

Requests go out, and answers are judged, through ``recsvc.kit.target``
(``Target.ask`` and the ``expect_*`` assertions).
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from typing import Callable

from ..player.client import CallNotFound, ClientError, RecordingNotFound, RecordingTimeout
from .target import (
    Answer, Fail, Skip, Target, expect, expect_error, expect_header, expect_retry_after, expect_status,
)

AUDIO_MAGIC = {"audio/wav": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WAVE",
               "audio/mpeg": lambda b: b[:3] == b"ID3" or (len(b) > 1 and b[0] == 0xFF and b[1] & 0xE0 == 0xE0),
               "audio/ogg": lambda b: b[:4] == b"OggS",
               "audio/flac": lambda b: b[:4] == b"fLaC"}
PROCESSING_FIELDS = ("status", "job_id", "job_status", "attempt", "max_attempts", "retry_after", "message")
JOB_FIELDS = ("id", "business_id", "call_sid", "recording_url", "status", "created_at", "started_at",
              "finished_at", "heartbeat_at", "worker_id", "error_code", "error_message")
HOP_HEADERS = {"date", "connection", "keep-alive"}  # may differ between two answers; not part of the promise


@dataclass(frozen=True)
class Check:
    id: str
    ref: str
    needs: tuple[str, ...]
    run: Callable[["Target"], None]


CHECKS: list[Check] = []


def check(check_id: str, ref: str, *needs: str):
    def register(run: Callable[["Target"], None]):
        CHECKS.append(Check(check_id, ref, needs, run))
        return run
    return register


# ---------------------------------------------------------------- assertions on the ready call

def expect_partial(t: Target, range_header: str, first: int, last: int) -> None:
    """CONTRACT 5: one range is a 206 with exactly those bytes and their Content-Range."""
    whole = t.ready().body
    answer = t.play("ready", headers={"Range": range_header})
    expect_status(answer, 206)
    expect(answer.body == whole[first:last + 1], f"{range_header}: the bytes are not bytes {first}-{last} of the file")
    expect_header(answer, "Content-Range", re.escape(f"bytes {first}-{last}/{len(whole)}"))
    expect(answer.header("content-length") == str(last - first + 1), f"{range_header}: Content-Length is not {last - first + 1}")


def _comparable(answer: Answer) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in answer.headers if k.lower() not in HOP_HEADERS)


# ---------------------------------------------------------------- provisioning (with --admin-token)

@check("admin.wrong_token_401", "CONTRACT 6 admin", "admin")
def a_wrong_admin_token_is_401(t):
    answer = t.ask("POST", "/admin/cleanup", token="conformance-wrong-admin-token")
    expect_error(answer, 401, "unauthorized")
    expect_header(answer, "WWW-Authenticate", r"Bearer.*")


@check("admin.create_business", "CONTRACT 6 admin", "admin")
def creating_a_business_is_201_with_id_token_and_name(t):
    answer = t.admin("POST", "/admin/businesses", {"name": f"conformance kit {t.run_id}"})
    expect_status(answer, 201)
    body = answer.json()
    expect(isinstance(body.get("id"), int) and isinstance(body.get("token"), str) and body["token"],
           "the body lacks an integer id or a token")
    expect(body.get("name") == f"conformance kit {t.run_id}", "the body does not repeat the name")
    t.notes["business"] = (body["id"], body["token"])


def kit_business(t: Target) -> tuple[int, str]:
    if "business" not in t.notes:
        raise Skip("needs the kit's own business (admin.create_business)")
    return t.notes["business"]


@check("calls.url_not_allowed_422", "CONTRACT 6 PUT /api/calls", "admin")
def a_recording_url_off_the_allowlist_is_422(t):
    _, token = kit_business(t)
    answer = t.ask("PUT", f"/api/calls/{t.new_sid('refused')}", token=token,
                   body={"recording_url": "https://recsvc-conformance.invalid/recording.wav"})
    expect_error(answer, 422, "recording_url_not_allowed")


@check("provision.no_url_call", "CONTRACT 6 PUT /api/calls: 201 then 200", "admin")
def a_call_without_url_is_created_201_then_updated_200(t):
    _, token = kit_business(t)
    sid = t.new_sid("nourl")
    for status in (201, 200):
        answer = t.ask("PUT", f"/api/calls/{sid}", token=token, body={"recording_url": None})
        expect_status(answer, status)
    body = answer.json()
    expect(body.get("call_sid") == sid and body.get("recording_url") is None, "the call is not answered as JSON")
    t.calls.setdefault("no_url", (token, sid))


def put_call(t: Target, label: str, url: str) -> str:
    _, token = kit_business(t)
    sid = t.new_sid(label)
    answer = t.ask("PUT", f"/api/calls/{sid}", token=token, body={"recording_url": url})
    if answer.status == 422:
        raise Skip(f"the target refuses {url}: allow its host (recsvc: --allow-upstream loopback) or give --upstream-url")
    expect_status(answer, 201)
    return sid


@check("provision.ready_call", "CONTRACT 3 row 10a, 7", "admin", "upstream")
def a_new_call_is_202_attempt_0_then_plays(t):
    _, token = kit_business(t)
    sid = put_call(t, "ready", t.upstream_url)
    first = t.ask("GET", f"/api/recordings/file/{sid}", token=token)
    expect_status(first, 202)
    expect(first.json().get("attempt") == 0, "the first play of a new call is not attempt 0 (row 10a)")
    try:
        t.client(token, max_wait=30).wait_for_recording(sid)
    except Exception as exc:
        raise Fail(f"the new call never played: {exc}") from None
    t.calls.setdefault("ready", (token, sid))
    t.notes["kit_ready_sid"] = sid


@check("provision.pending_call", "CONTRACT 3 row 9", "admin", "own_upstream")
def a_call_with_a_hanging_url_stays_pending(t):
    _, token = kit_business(t)
    url = t.own_upstream.set("/conformance/hangs.wav", hang=True)
    sid = put_call(t, "pending", url)
    expect_status(t.ask("GET", f"/api/recordings/file/{sid}", token=token), 202)
    t.calls.setdefault("pending", (token, sid))


# ---------------------------------------------------------------- CONTRACT 3: credentials and call_sid

@check("auth.missing_401", "CONTRACT 3 row 1")
def a_play_without_token_is_401(t):
    answer = t.ask("GET", "/api/recordings/file/conformance-probe", token=None)
    expect_error(answer, 401, "unauthorized")
    expect_header(answer, "WWW-Authenticate", r"Bearer.*")


@check("auth.wrong_token_401", "CONTRACT 3 row 1")
def a_play_with_a_wrong_token_is_401(t):
    answer = t.ask("GET", "/api/recordings/file/conformance-probe", token="conformance-wrong-token")
    expect_error(answer, 401, "unauthorized")
    expect_header(answer, "WWW-Authenticate", r"Bearer.*")


@check("auth.before_call_sid", "CONTRACT 3 rows 1-2 (first matching row wins)")
def credentials_are_judged_before_the_call_sid(t):
    expect_error(t.ask("GET", "/api/recordings/file/bad.sid", token=None), 401, "unauthorized")


@check("call_sid.invalid_400", "CONTRACT 3 row 2")
def an_invalid_call_sid_is_400(t):
    for raw in ("bad.sid", "a" * 65, "bad%2Fsid", "sp%20ace"):
        try:
            expect_error(t.ask("GET", f"/api/recordings/file/{raw}"), 400, "invalid_call_sid")
        except Fail as exc:
            raise Fail(f"{raw[:20]!r}: {exc}") from None


@check("call_sid.raw_path_400", "CONTRACT 3 row 2 (checked before any decoding)")
def the_call_sid_is_judged_on_the_raw_path(t):
    expect_error(t.ask("GET", "/api/recordings/file/%41BC"), 400, "invalid_call_sid")


@check("call_sid.64_chars_accepted", "CONTRACT 3 rows 2-3")
def a_call_sid_of_64_characters_is_accepted(t):
    expect_error(t.ask("GET", f"/api/recordings/file/{'Z' * 56}{t.run_id}"), 404, "call_not_found")


@check("missing.call_not_found_404", "CONTRACT 3 row 3", "missing")
def an_unknown_call_is_404_call_not_found(t):
    expect_error(t.play("missing"), 404, "call_not_found")


@check("no_url.no_recording_url_404", "CONTRACT 3 row 5", "no_url")
def a_call_without_url_is_404_no_recording_url(t):
    expect_error(t.play("no_url"), 404, "no_recording_url")


@check("isolation.other_business_404", "CONTRACT 1, 8.5", "ready")
def a_call_of_another_business_is_404_call_not_found(t):
    owner, sid = t.call("ready")
    if owner == t.token:
        raise Skip("needs a ready call of another business (--admin-token provisions one)")
    expect_error(t.ask("GET", f"/api/recordings/file/{sid}"), 404, "call_not_found")


# ---------------------------------------------------------------- CONTRACT 5: serving the file

@check("ready.200_audio", "CONTRACT 3 row 4, 5 Content-Type", "ready")
def a_ready_call_is_200_with_audio_bytes_of_their_type(t):
    answer = t.ready()
    content_type = (answer.header("content-type") or "").split(";")[0].strip().lower()
    expect(content_type in AUDIO_MAGIC, f"Content-Type {content_type or 'missing'} is not an audio type of CONTRACT 5")
    expect(AUDIO_MAGIC[content_type](answer.body), f"the bytes do not start as {content_type} does")


@check("ready.content_length", "CONTRACT 5", "ready")
def a_ready_file_has_its_content_length(t):
    answer = t.ready()
    expect(answer.header("content-length") == str(len(answer.body)),
           f"Content-Length {answer.header('content-length')} but {len(answer.body)} bytes came")


@check("ready.accept_ranges", "CONTRACT 5", "ready")
def a_ready_file_accepts_byte_ranges(t):
    expect_header(t.ready(), "Accept-Ranges", "bytes")


@check("ready.strong_etag", "CONTRACT 5", "ready")
def a_ready_file_has_a_strong_etag(t):
    expect_header(t.ready(), "ETag", r'"[\x21\x23-\x7e]*"')


@check("ready.cache_control", "CONTRACT 5", "ready")
def a_ready_file_is_cached_privately_for_an_hour(t):
    expect_header(t.ready(), "Cache-Control", re.escape("private, max-age=3600"))


@check("ready.last_modified", "CONTRACT 5", "ready")
def a_ready_file_has_a_last_modified_date(t):
    value = t.ready().header("last-modified")
    expect(value is not None, "no Last-Modified header")
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise Fail(f"Last-Modified {value!r} is not an HTTP date") from None


@check("ready.range_closed_206", "CONTRACT 5 bytes=a-b", "ready")
def a_closed_range_is_206_with_those_bytes(t):
    last = min(len(t.ready().body) - 1, 10)
    expect_partial(t, f"bytes=1-{last}", 1, last)


@check("ready.range_open_206", "CONTRACT 5 bytes=a-", "ready")
def an_open_range_is_206_to_the_end(t):
    size = len(t.ready().body)
    expect_partial(t, f"bytes={size - 3}-", size - 3, size - 1)


@check("ready.range_suffix_206", "CONTRACT 5 bytes=-n", "ready")
def a_suffix_range_is_206_with_the_last_bytes(t):
    size = len(t.ready().body)
    expect_partial(t, "bytes=-5", size - 5, size - 1)


@check("ready.range_unsatisfiable_416", "CONTRACT 5", "ready")
def a_range_past_the_end_is_416(t):
    size = len(t.ready().body)
    answer = t.play("ready", headers={"Range": f"bytes={size}-"})
    expect_status(answer, 416)
    expect_header(answer, "Content-Range", re.escape(f"bytes */{size}"))


@check("ready.several_ranges_200", "CONTRACT 5", "ready")
def several_ranges_are_answered_200_whole(t):
    answer = t.play("ready", headers={"Range": "bytes=0-0,2-2"})
    expect_status(answer, 200)
    expect(answer.body == t.ready().body, "the body is not the whole file")


@check("ready.if_range_stale_200", "CONTRACT 5", "ready")
def a_stale_if_range_is_answered_200_whole(t):
    answer = t.play("ready", headers={"Range": "bytes=0-0", "If-Range": '"conformance-stale"'})
    expect_status(answer, 200)
    expect(answer.body == t.ready().body, "the body is not the whole file")


@check("ready.if_range_current_206", "CONTRACT 5, RFC 9110 13.1.5", "ready")
def a_current_if_range_is_answered_206(t):
    expect_partial_if_range = {"Range": "bytes=0-3", "If-Range": t.ready().header("etag") or ""}
    answer = t.play("ready", headers=expect_partial_if_range)
    expect_status(answer, 206)
    expect(answer.body == t.ready().body[:4], "the bytes are not bytes 0-3")


@check("ready.if_none_match_304", "CONTRACT 5", "ready")
def a_matching_if_none_match_is_304(t):
    etag = t.ready().header("etag")
    expect(etag is not None, "no ETag to send back")
    answer = t.play("ready", headers={"If-None-Match": etag})
    expect_status(answer, 304)
    expect(answer.body == b"", f"304 carried {len(answer.body)} body bytes")


@check("ready.head_equals_get", "CONTRACT 5", "ready")
def head_answers_the_headers_of_get(t):
    head = t.play("ready", method="HEAD")
    expect_status(head, 200)
    expect(head.body == b"", "HEAD carried a body")
    get, head_headers = _comparable(t.ready()), _comparable(head)
    expect(get == head_headers, f"headers differ: GET only {sorted(set(get) - set(head_headers))}, "
                                f"HEAD only {sorted(set(head_headers) - set(get))}")


@check("link.plays_without_headers", "CONTRACT 6 signed link, 3 credentials", "ready")
def a_signed_link_plays_without_headers(t):
    token, sid = t.call("ready")
    answer = t.ask("POST", f"/api/recordings/{sid}/link", token=token)
    expect_status(answer, 200)
    body = answer.json()
    url = body.get("url")
    expect(isinstance(url, str) and url.startswith(f"/api/recordings/file/{sid}?"), f"url {url!r} is not a link to the file")
    expect(isinstance(body.get("expires_at"), str), "no expires_at")
    played = t.ask("GET", url, token=None)
    expect_status(played, 200)
    expect(played.body == t.ready().body, "the link plays other bytes than the bearer request")
    t.notes["link"] = url


@check("link.altered_401", "CONTRACT 6 signed link", "ready")
def an_altered_signed_link_is_401(t):
    url = t.notes.get("link")
    if url is None:
        raise Skip("needs link.plays_without_headers")
    altered = url[:-1] + ("0" if url[-1] != "0" else "1")
    expect_error(t.ask("GET", altered, token=None), 401, "unauthorized")


# ---------------------------------------------------------------- CONTRACT 3 rows 9-10 and 5b: processing

@check("pending.202_retry_after", "CONTRACT 3 processing body", "pending")
def a_pending_call_is_202_with_retry_after(t):
    answer = t.play("pending")
    expect_status(answer, 202)
    expect_retry_after(answer)


@check("pending.processing_body", "CONTRACT 3 processing body", "pending")
def a_pending_call_has_the_processing_body(t):
    answer = t.play("pending")
    expect_status(answer, 202)
    body = answer.json()
    missing = [name for name in PROCESSING_FIELDS if name not in body]
    expect(not missing, f"the body lacks {missing}")
    expect(body["status"] == "processing", f"status is {body['status']!r}, not 'processing'")
    expect(body["job_status"] in ("queued", "running"), f"job_status {body['job_status']!r} is not active")
    for name, least in (("attempt", 0), ("max_attempts", 1), ("retry_after", 1), ("job_id", None)):
        value = body[name]
        expect(isinstance(value, int) and not isinstance(value, bool), f"{name} is not an integer")
        expect(least is None or value >= least, f"{name} is {value}, under {least}")
    expect(str(body["retry_after"]) == answer.header("retry-after"),
           f"retry_after {body['retry_after']} is not the Retry-After header {answer.header('retry-after')!r}")


@check("pending.prefer_wait_applied", "CONTRACT 5b", "pending")
def a_held_pending_call_says_preference_applied(t):
    answer = t.play("pending", headers={"Prefer": "wait=1"})
    expect(answer.status in (200, 202, 206), f"answered {answer.status} to a held request")
    applied = int(expect_header(answer, "Preference-Applied", r"wait=([0-9]+)").removeprefix("wait="))
    expect(applied <= 1, f"Preference-Applied wait={applied} is more than was asked")
    expect(answer.seconds < 1 + 5, f"held {answer.seconds:.1f}s for wait=1")


# ---------------------------------------------------------------- CONTRACT 6: HTTP hygiene

@check("http.unknown_path_404", "CONTRACT 6 hygiene")
def an_unknown_path_is_404(t):
    for token in (None, t.token):
        expect_error(t.ask("GET", f"/conformance/no/such/path/{t.run_id}", token=token), 404, "not_found")


@check("http.method_not_allowed_405", "CONTRACT 6 hygiene")
def a_wrong_method_is_405_with_allow(t):
    answer = t.ask("DELETE", "/api/recordings/file/conformance-probe")
    expect_error(answer, 405, None)
    allow = {m.strip().upper() for m in (answer.header("allow") or "").split(",")}
    expect({"GET", "HEAD"} <= allow and "DELETE" not in allow, f"Allow is {answer.header('allow')!r}")


@check("http.unknown_method_501", "CONTRACT 6 hygiene")
def an_unknown_method_is_501(t):
    expect_error(t.ask("BREW", "/healthz", token=None), 501, None)


@check("open.healthz", "CONTRACT 6 open")
def healthz_is_200_ok_without_credentials(t):
    answer = t.ask("GET", "/healthz", token=None)
    expect_status(answer, 200)
    expect(answer.json().get("status") == "ok", "status is not 'ok'")


# ---------------------------------------------------------------- CONTRACT 7: the player

@check("client.plays_ready", "CONTRACT 7 200 -> play", "ready")
def the_player_plays_a_ready_call(t):
    token, sid = t.call("ready")
    recording = t.client(token).wait_for_recording(sid)
    expect(recording.body == t.ready().body, "the player got other bytes than a plain GET")
    expect(recording.requests == 1, f"a ready recording took {recording.requests} requests")


def expect_player_stops(t: Target, token: str | None, sid: str, kind: type, code: str | None) -> None:
    try:
        recording = t.client(token).wait_for_recording(sid)
    except kind as stop:
        expect(stop.requests == 1, f"the player stopped after {stop.requests} requests, not 1")
        expect(code is None or stop.error_code == code, f"the player stopped on {stop.error_code!r}, not {code!r}")
        return
    except Exception as stop:
        raise Fail(f"the player stopped with {getattr(stop, 'outcome', type(stop).__name__)}: {stop}") from None
    raise Fail(f"the player played {len(recording.body)} bytes")


@check("client.no_url_stops_not_found", "CONTRACT 7 404 -> not_found", "no_url")
def the_player_stops_not_found_on_a_call_without_url(t):
    expect_player_stops(t, *t.call("no_url"), RecordingNotFound, "no_recording_url")


@check("client.missing_stops_call_not_found", "CONTRACT 7 404 call_not_found -> call_not_found", "missing")
def the_player_stops_call_not_found_on_an_unknown_call(t):
    expect_player_stops(t, *t.call("missing"), CallNotFound, "call_not_found")


@check("client.wrong_token_stops_error", "CONTRACT 7 401 -> error")
def the_player_stops_with_an_error_on_a_wrong_token(t):
    expect_player_stops(t, "conformance-wrong-token", "conformance-probe", ClientError, "unauthorized")


@check("client.pending_stops_on_time", "CONTRACT 7 timeout, 8.3", "pending")
def the_player_gives_up_on_a_pending_call_on_time(t):
    token, sid = t.call("pending")
    started = time.monotonic()
    try:
        t.client(token, max_wait=1).wait_for_recording(sid)
    except RecordingTimeout:
        pass
    except Exception as stop:
        raise Fail(f"the player stopped with {getattr(stop, 'outcome', type(stop).__name__)}: {stop}") from None
    elapsed = time.monotonic() - started
    expect(elapsed < 1 + 5, f"a player with max_wait 1 s took {elapsed:.1f}s")


# ---------------------------------------------------------------- drills (with --admin-token)

@check("drill.no_live_worker_500", "CONTRACT 3 row 7, 8.7", "admin", "upstream")
def paused_workers_make_a_play_500_and_queue_one_job(t):
    business_id, token = kit_business(t)
    sid = put_call(t, "offline", t.upstream_url)
    paused = t.admin("POST", "/admin/workers/pause")
    try:
        expect_status(paused, 200)
        expect(paused.json().get("paused") is True, "pause did not answer {\"paused\": true}")
        answer = t.ask("GET", f"/api/recordings/file/{sid}", token=token)
        body = expect_error(answer, 500, "worker_not_processing_queue")
        expect(body.get("reason") == "no live worker", f"reason is {body.get('reason')!r}, not 'no live worker'")
        expect(str(body.get("retry_after")) == str(expect_retry_after(answer)), "retry_after is not the Retry-After header")
        jobs = t.admin("GET", f"/admin/jobs?call_sid={sid}&business_id={business_id}").json().get("jobs")
        expect(isinstance(jobs, list) and len(jobs) == 1 and jobs[0].get("status") == "queued",
               f"row 7 left jobs {jobs!r}, not one queued job")
    finally:
        resumed = t.admin("POST", "/admin/workers/resume")
    expect_status(resumed, 200)
    expect(resumed.json().get("paused") is False, "resume did not answer {\"paused\": false}")
    t.notes["offline_sid"] = sid


@check("drill.resumed_worker_runs_queued_job", "CONTRACT 8.6", "admin", "upstream")
def a_resumed_worker_runs_the_queued_job(t):
    if "offline_sid" not in t.notes:
        raise Skip("needs drill.no_live_worker_500")
    _, token = kit_business(t)
    try:
        t.client(token, max_wait=30).wait_for_recording(t.notes["offline_sid"])
    except Exception as exc:
        raise Fail(f"after resume the call did not play: {exc}") from None


@check("drill.upstream_404", "CONTRACT 3 row 6, 7", "admin", "own_upstream")
def the_player_stops_recording_not_found_upstream_on_an_upstream_404(t):
    _, token = kit_business(t)
    sid = put_call(t, "gone", t.own_upstream.set("/conformance/gone.wav", status=404, body=b"gone\n",
                                                    content_type="text/plain"))
    try:
        t.client(token, max_wait=30).wait_for_recording(sid)
    except RecordingNotFound as stop:
        expect(stop.error_code == "recording_not_found_upstream", f"stopped on {stop.error_code!r}")
        return
    except Exception as stop:
        raise Fail(f"the player stopped with {getattr(stop, 'outcome', type(stop).__name__)}: {stop}") from None
    raise Fail("a recording the upstream does not have played")


@check("drill.cleanup", "CONTRACT 4, 6 admin", "admin")
def cleanup_answers_how_many_jobs_it_marked_failed(t):
    answer = t.admin("POST", "/admin/cleanup")
    expect_status(answer, 200)
    marked = answer.json().get("marked_failed")
    expect(isinstance(marked, int) and marked >= 0, f"marked_failed is {marked!r}")


@check("drill.retry_counter_shape", "CONTRACT 3 retry counter, 6 admin", "admin")
def the_retry_counter_view_has_key_attempts_and_ttl(t):
    business_id, _ = kit_business(t)
    sid = t.notes.get("kit_ready_sid") or t.new_sid("never")
    answer = t.admin("GET", f"/admin/retry-counters/{business_id}/{sid}")
    expect_status(answer, 200)
    body = answer.json()
    expect(body.get("key") == f"recording_retry_attempts:{business_id}:{sid}", f"key is {body.get('key')!r}")
    expect(body.get("attempts") == 0 and body.get("ttl") == -2,
           f"a call never retried has attempts {body.get('attempts')!r}, ttl {body.get('ttl')!r}, not 0 and -2")


@check("drill.jobs_shape", "CONTRACT 1 job, 6 admin", "admin")
def the_jobs_view_lists_jobs_with_every_field(t):
    business_id, _ = kit_business(t)
    sid = t.notes.get("kit_ready_sid")
    if sid is None:
        raise Skip("needs provision.ready_call")
    answer = t.admin("GET", f"/admin/jobs?call_sid={sid}&business_id={business_id}")
    expect_status(answer, 200)
    jobs = answer.json().get("jobs")
    expect(isinstance(jobs, list) and jobs, "no jobs listed for a call that played")
    missing = [name for name in JOB_FIELDS if name not in jobs[0]]
    expect(not missing, f"a job lacks {missing}")
    expect(jobs[0]["status"] == "completed", f"the played call's newest job is {jobs[0]['status']!r}")
