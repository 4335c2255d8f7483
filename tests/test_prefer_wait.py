"""``Prefer: wait=N`` (CONTRACT 5b, RFC 7240) end to end, through real sockets on 127.0.0.1.

A request that would be answered 202 is held until its job ends (then it is
the 200 or 206 itself) or until min(N, --max-wait) passes (then the 202),
and says so with ``Preference-Applied``. Timings are asserted with generous
bounds; the numbers are printed for ``pytest -s``.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime

import pytest

from conftest import ADMIN_TOKEN, request, running_harness, spawn_recsvc, stop_processes, wait_listening
from recsvc.player.client import RecordingClient, default_opener
from recsvc.demo.audio import sized_wav, tune_for
from recsvc.demo.fake_upstream import FakeUpstream

DELAY = 1.0  # the upstream's delay before it answers
SLACK = 0.6  # generous: the hold must end well before this after the file lands


def held_play(h, token: str, call_sid: str, wait: str | int, headers: dict | None = None):
    started = time.monotonic()
    answer = h.play(token, call_sid, headers={"Prefer": f"wait={wait}", **(headers or {})})
    return answer, time.monotonic() - started


# ---------------------------------------------------------------- the file lands while held


def test_the_request_that_creates_the_job_is_held_and_answered_200_when_the_file_lands(make_harness, upstream):
    h = make_harness()
    token = h.business()
    body = tune_for("CAwait")
    url = upstream.set("/rec/CAwait.wav", body=body, delay=DELAY)
    assert h.put_call(token, "CAwait", url).status == 201
    answer, elapsed = held_play(h, token, "CAwait", 10)
    print(f"\n[prefer-wait] first request held {elapsed:.3f}s for an upstream delay of {DELAY}s")
    assert answer.status == 200
    assert answer.body == body
    assert answer.header("preference-applied") == "wait=10"
    assert DELAY <= elapsed < DELAY + SLACK
    assert len(h.jobs("CAwait")) == 1
    assert upstream.hits("/rec/CAwait.wav") == 1


def test_a_request_joining_a_running_job_is_held_and_answered_200(make_harness, upstream):
    h = make_harness()
    token = h.business()
    body = tune_for("CAjoin")
    url = upstream.set("/rec/CAjoin.wav", body=body, delay=DELAY)
    assert h.put_call(token, "CAjoin", url).status == 201
    started = time.monotonic()
    assert h.play(token, "CAjoin").status == 202  # creates the job, not held
    answer, _ = held_play(h, token, "CAjoin", 10)
    elapsed = time.monotonic() - started
    assert answer.status == 200
    assert answer.body == body
    assert answer.header("preference-applied") == "wait=10"
    assert DELAY <= elapsed < DELAY + SLACK


def test_a_held_range_request_is_answered_206_when_the_file_lands(make_harness, upstream):
    h = make_harness()
    token = h.business()
    body = sized_wav(50_000, seed="CArange")
    url = upstream.set("/rec/CArange.wav", body=body, delay=0.5)
    assert h.put_call(token, "CArange", url).status == 201
    answer, elapsed = held_play(h, token, "CArange", 10, {"Range": "bytes=1000-1999"})
    assert answer.status == 206
    assert answer.header("content-range") == "bytes 1000-1999/50000"
    assert answer.body == body[1000:2000]
    assert answer.header("preference-applied") == "wait=10"
    assert 0.5 <= elapsed < 0.5 + SLACK


def test_a_held_request_whose_job_fails_gets_that_answer_with_preference_applied(make_harness, upstream):
    h = make_harness()
    token = h.business()
    url = upstream.set("/rec/CAgone.wav", status=404, body=b"gone", content_type="text/plain", delay=0.3)
    assert h.put_call(token, "CAgone", url).status == 201
    answer, elapsed = held_play(h, token, "CAgone", 10)
    assert answer.status == 404
    assert answer.json["error"] == "recording_not_found_upstream"
    assert answer.header("preference-applied") == "wait=10"
    assert elapsed < 0.3 + SLACK


def test_a_held_request_whose_download_fails_answers_its_202_and_starts_no_retry(make_harness, upstream):
    h = make_harness()
    token = h.business()
    url = upstream.set("/rec/CAfail.wav", status=500, body=b"down", content_type="text/plain")
    assert h.put_call(token, "CAfail", url).status == 201
    answer, elapsed = held_play(h, token, "CAfail", 5)
    assert answer.status == 202, answer.body
    assert answer.json["attempt"] == 0
    assert answer.header("preference-applied") == "wait=5"
    assert elapsed < 5, "the job ended: the request is answered then, not at the end of the wait"
    assert len(h.jobs("CAfail")) == 1, "the retry of row 10b waits for the player's next request"
    assert h.admin("GET", "/admin/retry-counters/1/CAfail").json["attempts"] == 0


def test_fifty_requests_held_on_one_job_all_get_the_file(make_harness, upstream):
    h = make_harness()
    token = h.business()
    body = sized_wav(200_000, seed="CAmany")
    url = upstream.set("/rec/CAmany.wav", body=body, delay=DELAY)
    assert h.put_call(token, "CAmany", url).status == 201
    answers: list = [None] * 50

    def ask(i: int) -> None:
        answers[i] = held_play(h, token, "CAmany", 10)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert all(a is not None for a in answers)
    assert [a.status for a, _ in answers] == [200] * 50
    assert all(a.body == body for a, _ in answers)
    assert all(a.header("preference-applied") == "wait=10" for a, _ in answers)
    assert max(elapsed for _, elapsed in answers) < DELAY + 2 * SLACK
    assert len(h.jobs("CAmany")) == 1
    assert upstream.hits("/rec/CAmany.wav") == 1
    assert h.app.waiters.held_count() == 0


# ---------------------------------------------------------------- the wait runs out


def test_a_wait_beyond_max_wait_is_cut_to_max_wait_and_answers_the_202(make_harness, upstream):
    h = make_harness(max_wait=2, download_timeout=30)
    token = h.business()
    url = upstream.set("/rec/CAslow.wav", body=tune_for("CAslow"), hang=True)
    assert h.put_call(token, "CAslow", url).status == 201
    answer, elapsed = held_play(h, token, "CAslow", 60)
    assert answer.status == 202
    assert answer.json["status"] == "processing"
    assert answer.header("retry-after") == "2"
    assert answer.header("preference-applied") == "wait=2"
    assert 2.0 <= elapsed < 2.0 + SLACK


# ---------------------------------------------------------------- parsing (RFC 7240)


@pytest.fixture(scope="module")
def hanging_call(tmp_path_factory, store_kind):
    """A call whose job hangs on the upstream, on a server holding at most 0.3 s."""
    with FakeUpstream() as upstream, running_harness(tmp_path_factory.mktemp("parse"), upstream,
                                                     max_wait=0.3, download_timeout=30) as h:
        token = h.business()
        url = upstream.set("/rec/CAparse.wav", body=tune_for("CAparse"), hang=True)
        assert h.put_call(token, "CAparse", url).status == 201
        assert h.play(token, "CAparse").status == 202
        assert upstream.wait_for_hits("/rec/CAparse.wav", 1)
        yield h, token


def raw_play(h, token: str, prefer_lines: list[bytes]) -> tuple[bytes, float]:
    """GET with the given raw Prefer header lines; the whole answer and how long it took."""
    head = (b"GET /api/recordings/file/CAparse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Authorization: Bearer {token}\r\n".encode()
            + b"".join(b"Prefer: " + line + b"\r\n" for line in prefer_lines) + b"\r\n")
    started = time.monotonic()
    with socket.create_connection(h.app.address, timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def status_and_applied(raw: bytes) -> tuple[int, str | None]:
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    applied = [line.split(":", 1)[1].strip() for line in head[1:] if line.lower().startswith("preference-applied:")]
    return int(head[0].split(" ")[1]), (applied[0] if applied else None)


@pytest.mark.parametrize("prefer", [
    pytest.param([b"wait=5, respond-async"], id="wait then respond-async"),
    pytest.param([b"respond-async, wait=5"], id="respond-async then wait"),
    pytest.param([b"respond-async", b"wait=5"], id="two Prefer header lines"),
    pytest.param([b"wait = 5"], id="blanks around the equals sign"),
    pytest.param([b'wait="5"'], id="quoted value"),
    pytest.param([b"WAIT=5"], id="name in capitals"),
    pytest.param([b"wait=5; foo=bar"], id="with a parameter"),
    pytest.param([b"wait=99999999999999999999"], id="a huge value is cut to max-wait"),
])
def test_valid_wait_preferences_are_honoured(hanging_call, prefer):
    h, token = hanging_call
    raw, elapsed = raw_play(h, token, prefer)
    # max-wait 0.3 s is announced rounded up to whole seconds (CONTRACT 1)
    assert status_and_applied(raw) == (202, "wait=1")
    assert elapsed >= 0.3


@pytest.mark.parametrize("prefer", [
    pytest.param([b"wait=abc"], id="letters"),
    pytest.param([b"wait="], id="empty"),
    pytest.param([b"wait"], id="no value"),
    pytest.param([b"wait=-1"], id="negative"),
    pytest.param([b"wait=1.5"], id="fraction"),
    pytest.param([b"wait=\xb2"], id="a latin-1 superscript digit"),
    pytest.param([b"wait=\xd9\xa3"], id="non-ascii digits"),
    pytest.param([b"respond-async"], id="no wait at all"),
    pytest.param([b"waiting=5"], id="another preference"),
])
def test_garbage_wait_preferences_are_ignored(hanging_call, prefer):
    h, token = hanging_call
    raw, elapsed = raw_play(h, token, prefer)
    assert status_and_applied(raw) == (202, None)
    assert elapsed < 0.25


def test_only_the_first_wait_preference_counts(hanging_call):
    h, token = hanging_call
    raw, elapsed = raw_play(h, token, [b"wait=0, wait=5"])
    assert status_and_applied(raw) == (202, "wait=0")
    assert elapsed < 0.25


# ---------------------------------------------------------------- a held request's thread


def test_a_held_request_whose_client_leaves_frees_its_thread(make_harness, upstream):
    h = make_harness(download_timeout=30)
    token = h.business()
    url = upstream.set("/rec/CAleave.wav", body=tune_for("CAleave"), hang=True)
    assert h.put_call(token, "CAleave", url).status == 201
    sock = socket.create_connection(h.app.address, timeout=5)
    sock.sendall(b"GET /api/recordings/file/CAleave HTTP/1.1\r\nHost: x\r\n"
                 + f"Authorization: Bearer {token}\r\nPrefer: wait=10\r\n\r\n".encode())
    deadline = time.monotonic() + 2
    while h.app.waiters.held_count() != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h.app.waiters.held_count() == 1
    # The download's own threads (and the upstream's) are up before counting: only the held request's may go.
    assert upstream.wait_for_hits("/rec/CAleave.wav", 1)
    threads_held = threading.active_count()
    sock.close()
    left = time.monotonic()
    # The connection's thread ends a moment after it gives its slot back: wait for all three.
    while ((h.app.waiters.held_count() or h.app.http.connections or threading.active_count() >= threads_held)
           and time.monotonic() - left < 3):
        time.sleep(0.01)
    freed_after = time.monotonic() - left
    print(f"\n[prefer-wait] held request freed {freed_after:.3f}s after its client left")
    assert h.app.waiters.held_count() == 0
    assert h.app.http.connections == 0
    assert threading.active_count() < threads_held
    assert freed_after < 1.0


# ---------------------------------------------------------------- a job run by another process


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_request_held_on_a_job_run_by_a_separate_worker_process_is_answered_promptly(tmp_path, upstream):
    data_dir = tmp_path / "data"
    common = ("--allow-upstream", "loopback", "--admin-token", ADMIN_TOKEN, "--heartbeat-interval", "1")
    server = spawn_recsvc("serve", data_dir, "--port", "0", "--workers", "0", "--max-wait", "10", *common)
    worker = None
    try:
        base = wait_listening(server)
        worker = spawn_recsvc("worker", data_dir, *common)
        deadline = time.monotonic() + 10
        while request(base, "GET", "/readyz").status != 200:
            assert time.monotonic() < deadline, "the worker process never became live"
            assert worker.poll() is None, worker.stderr.read().decode()
            time.sleep(0.05)
        business = request(base, "POST", "/admin/businesses", token=ADMIN_TOKEN, body={"name": "acme"})
        token = business.json["token"]
        body = tune_for("CAother")
        url = upstream.set("/rec/CAother.wav", body=body, delay=DELAY)
        assert request(base, "PUT", "/api/calls/CAother", token=token, body={"recording_url": url}).status == 201
        started = time.monotonic()
        answer = request(base, "GET", "/api/recordings/file/CAother", token=token, headers={"Prefer": "wait=10"})
        arrived = time.time()
        elapsed = time.monotonic() - started
        job = request(base, "GET", "/admin/jobs?call_sid=CAother", token=ADMIN_TOKEN).json["jobs"][0]
        latency = arrived - _epoch(job["finished_at"])
        print(f"\n[prefer-wait] separate worker: held {elapsed:.3f}s, answered {latency * 1000:.0f} ms "
              "after the job completed")
        assert answer.status == 200
        assert answer.body == body
        assert answer.header("preference-applied") == "wait=10"
        assert job["status"] == "completed"
        assert DELAY <= elapsed
        assert 0 <= latency < 0.3
    finally:
        stop_processes(worker, server)


# ---------------------------------------------------------------- what it buys a player


class _WithoutPrefer:
    """An opener for RecordingClient that drops Prefer: a player of the polling kind."""

    def __init__(self):
        self.inner = default_opener()

    def open(self, req, timeout=None):
        req.remove_header("Prefer")
        return self.inner.open(req, timeout=timeout)


def test_a_player_sending_prefer_wait_plays_with_one_request_as_the_file_lands(make_harness, upstream, monkeypatch):
    h = make_harness(retry_after=1)
    token = h.business()
    landed: dict[int, float] = {}
    job_ended = h.app.waiters.job_ended

    def noting_job_ended(job_id: int) -> None:
        landed.setdefault(job_id, time.monotonic())
        job_ended(job_id)

    monkeypatch.setattr(h.app.waiters, "job_ended", noting_job_ended)
    bodies = {sid: tune_for(sid) for sid in ("CAprefer", "CApoll")}
    for sid, body in bodies.items():
        assert h.put_call(token, sid, upstream.set(f"/rec/{sid}.wav", body=body, delay=1.5)).status == 201
    players = {"CAprefer": RecordingClient(h.base_url, token, max_wait=20),
               "CApoll": RecordingClient(h.base_url, token, max_wait=20, opener=_WithoutPrefer())}
    results: dict[str, tuple] = {}

    def play(sid: str) -> None:
        recording = players[sid].wait_for_recording(sid)
        results[sid] = (recording, time.monotonic())

    threads = [threading.Thread(target=play, args=(sid,)) for sid in players]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    delays = {}
    for sid, (recording, played_at) in results.items():
        assert recording.body == bodies[sid]
        delays[sid] = played_at - landed[h.jobs(sid)[0]["id"]]
    print(f"\n[prefer-wait] with Prefer: wait: {results['CAprefer'][0].requests} request(s), "
          f"200 {delays['CAprefer'] * 1000:.0f} ms after the file landed; "
          f"without: {results['CApoll'][0].requests} request(s), 200 {delays['CApoll'] * 1000:.0f} ms after "
          f"(Retry-After {h.settings.retry_after:g} s, upstream delay 1.5 s)")
    assert results["CAprefer"][0].requests == 1
    assert results["CApoll"][0].requests >= 2
    assert 0 <= delays["CAprefer"] < 0.3
