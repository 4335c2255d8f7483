"""The bounded cache (CONTRACT 5, ``--cache-max-bytes``) end to end, through real sockets on 127.0.0.1.

Storing a file that passes the limit evicts the least recently played
recordings first; an evicted recording is downloaded again on its next
request (row 10b). Recording a play costs no database write per answer.
"""

from __future__ import annotations

import http.client
import os
import sqlite3
import threading
import time

import pytest

from conftest import ADMIN_TOKEN, READS_SQLITE, request, spawn_recsvc, stop_processes, wait_listening
from recsvc.run.app import DATABASE_FILE
from recsvc.demo.audio import sized_wav

SIZE = 20_000
# A play answered by one process reaches the others' eviction within this
# (the play-time batches are flushed this often); generous.
PLAY_NOTE_DELAY = 1.5


def store(h, token: str, call_sid: str, body: bytes) -> None:
    """Give the call a URL and play it until its file is stored."""
    url = h.upstream.set(f"/rec/{call_sid}.wav", body=body)
    assert h.put_call(token, call_sid, url).status == 201
    assert h.play(token, call_sid).status == 202
    assert h.wait_for_job(call_sid)["status"] == "completed"


def recording_file(h, token: str, call_sid: str) -> str | None:
    """The path of the call's cached file while it is cached, else None."""
    with h.app.store.reading() as tx:
        business_id = h.app.service.authenticate(token)
        recording = tx.get_recording(business_id, call_sid)
    return None if recording is None else h.app.files.absolute(recording.path)


def cached(h, token: str, call_sid: str) -> bool:
    answer = h.request("GET", f"/api/calls/{call_sid}", token=token)
    assert answer.status == 200
    return answer.json["cached"]


def last_played_at(h, call_sid: str) -> float:
    with sqlite3.connect(os.path.join(h.settings.data_dir, DATABASE_FILE)) as db:
        return db.execute("SELECT last_played_at FROM recordings WHERE call_sid = ?", (call_sid,)).fetchone()[0]


def test_storing_past_the_limit_evicts_the_least_recently_played(make_harness):
    h = make_harness(cache_max_bytes=2 * SIZE)
    token = h.business()
    bodies = {sid: sized_wav(SIZE, seed=sid) for sid in ("CAa", "CAb", "CAc")}
    store(h, token, "CAa", bodies["CAa"])
    h.advance(10)
    store(h, token, "CAb", bodies["CAb"])
    path_b = recording_file(h, token, "CAb")
    h.advance(10)
    assert h.play(token, "CAa").status == 200  # CAa is now the more recently played
    h.advance(10)
    store(h, token, "CAc", bodies["CAc"])

    assert not cached(h, token, "CAb")
    assert recording_file(h, token, "CAb") is None
    assert not os.path.exists(path_b)
    assert cached(h, token, "CAa") and cached(h, token, "CAc")
    assert h.play(token, "CAa").body == bodies["CAa"]
    assert h.play(token, "CAc").body == bodies["CAc"]

    # The evicted recording is downloaded again: a retry (row 10b), then the file.
    retry = h.play(token, "CAb")
    assert retry.status == 202
    assert retry.json["attempt"] == 1
    assert retry.header("retry-after") == str(int(h.settings.recovery_retry_after))
    assert h.wait_for_job("CAb")["status"] == "completed"
    again = h.play(token, "CAb")
    assert again.status == 200
    assert again.body == bodies["CAb"]
    assert h.upstream.hits("/rec/CAb.wav") == 2


def test_a_range_request_counts_as_a_play_for_eviction(make_harness):
    h = make_harness(cache_max_bytes=2 * SIZE)
    token = h.business()
    store(h, token, "CAa", sized_wav(SIZE, seed="CAa"))
    h.advance(10)
    store(h, token, "CAb", sized_wav(SIZE, seed="CAb"))
    h.advance(10)
    assert h.play(token, "CAa", headers={"Range": "bytes=0-99"}).status == 206
    h.advance(10)
    store(h, token, "CAc", sized_wav(SIZE, seed="CAc"))
    assert [cached(h, token, sid) for sid in ("CAa", "CAb", "CAc")] == [True, False, True]


def test_with_a_limit_of_one_recording_every_older_one_is_evicted(make_harness):
    unlimited = make_harness()
    token = unlimited.business()
    store(unlimited, token, "CAa", sized_wav(SIZE, seed="CAa"))
    unlimited.advance(10)
    store(unlimited, token, "CAb", sized_wav(SIZE, seed="CAb"))
    paths = [recording_file(unlimited, token, sid) for sid in ("CAa", "CAb")]
    unlimited.app.stop(grace=0.5)

    h = make_harness(cache_max_bytes=SIZE)  # restarted on the same data dir with a limit
    h.advance(10)
    body = sized_wav(SIZE, seed="CAc")
    store(h, token, "CAc", body)
    assert [cached(h, token, sid) for sid in ("CAa", "CAb", "CAc")] == [False, False, True]
    assert not any(os.path.exists(path) for path in paths)
    assert h.play(token, "CAc").body == body


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def test_a_reader_of_a_recording_being_evicted_gets_the_whole_file_or_a_202(make_harness):
    big = 2 << 20
    # Every eviction of the read recording costs it one retry: allow plenty.
    h = make_harness(cache_max_bytes=big, max_retry_attempts=1000)
    token = h.business()
    body = sized_wav(big, seed="CAread")
    store(h, token, "CAread", body)
    host, port = h.app.address
    path = recording_file(h, token, "CAread")
    statuses: list[int] = []
    evicted_mid_body: list[bool] = []
    problems: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            conn = http.client.HTTPConnection(host, port, timeout=10)
            try:
                conn.request("GET", "/api/recordings/file/CAread", headers={"Authorization": f"Bearer {token}"})
                response = conn.getresponse()
                inode_before = _inode(path)
                chunks = []
                while chunk := response.read(64 * 1024):
                    chunks.append(chunk)
                    time.sleep(0.002)  # a slow player: the eviction lands mid-body
                got = b"".join(chunks)
                statuses.append(response.status)
                if response.status == 200 and got != body:
                    problems.append(f"200 with {len(got)} bytes that are not the recording")
                if response.status == 200 and _inode(path) != inode_before:
                    evicted_mid_body.append(True)
                elif response.status not in (200, 202):
                    problems.append(f"{response.status}: {got[:200]!r}")
                if response.status == 202:
                    time.sleep(0.02)
            except (http.client.HTTPException, OSError) as exc:
                problems.append(f"{exc.__class__.__name__}: {exc}")
            finally:
                conn.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(6):
            store(h, token, f"CAother{i}", sized_wav(big, seed=f"other{i}"))  # evicts CAread
            deadline = time.monotonic() + 10
            while not cached(h, token, "CAread") and time.monotonic() < deadline:
                time.sleep(0.01)  # the reader's 202 brought it back, evicting CAother{i}
    finally:
        stop.set()
        thread.join(15)
    print(f"\n[eviction] reader saw {statuses.count(200)} x 200 ({len(evicted_mid_body)} evicted mid-body) "
          f"and {statuses.count(202)} x 202")
    assert problems == []
    assert statuses.count(202) >= 1, "the reader never saw its recording evicted"
    assert evicted_mid_body, "no eviction landed while a 200 was being read"
    assert statuses.count(200) >= 1
    assert h.upstream.hits("/rec/CAread.wav") >= 2


@pytest.mark.sqlite_store_only(READS_SQLITE)
def test_a_play_costs_no_database_write_until_the_batch_is_flushed(make_harness):
    h = make_harness(cache_max_bytes=10 * SIZE)
    token = h.business()
    store(h, token, "CAa", sized_wav(SIZE, seed="CAa"))
    h.app.cache.stop()  # no timed flush from here on: only the explicit one below writes
    stored = last_played_at(h, "CAa")
    h.advance(100)
    assert h.play(token, "CAa").status == 200
    assert h.play(token, "CAa", headers={"Range": "bytes=0-0"}).status == 206
    assert last_played_at(h, "CAa") == stored  # noted in memory only
    h.app.cache.flush()
    assert last_played_at(h, "CAa") == stored + 100


def test_a_play_answered_by_the_server_counts_when_a_separate_worker_process_evicts(tmp_path, upstream):
    limit = str(2 * SIZE)
    common = ("--allow-upstream", "loopback", "--admin-token", ADMIN_TOKEN, "--heartbeat-interval", "1",
              "--cache-max-bytes", limit)
    data_dir = tmp_path / "data"
    server = spawn_recsvc("serve", data_dir, "--port", "0", "--workers", "0", *common)
    worker = None
    try:
        base = wait_listening(server)
        worker = spawn_recsvc("worker", data_dir, *common)
        deadline = time.monotonic() + 10
        while request(base, "GET", "/readyz").status != 200:
            assert time.monotonic() < deadline, "the worker process never became live"
            time.sleep(0.05)
        token = request(base, "POST", "/admin/businesses", token=ADMIN_TOKEN, body={"name": "acme"}).json["token"]
        bodies = {sid: sized_wav(SIZE, seed=sid) for sid in ("CAa", "CAb", "CAc")}

        def store_remote(call_sid: str) -> None:
            url = upstream.set(f"/rec/{call_sid}.wav", body=bodies[call_sid])
            assert request(base, "PUT", f"/api/calls/{call_sid}", token=token,
                           body={"recording_url": url}).status == 201
            answer = request(base, "GET", f"/api/recordings/file/{call_sid}", token=token,
                             headers={"Prefer": "wait=10"})
            assert answer.status == 200, answer.body

        def cached_remote(call_sid: str) -> bool:
            return request(base, "GET", f"/api/calls/{call_sid}", token=token).json["cached"]

        store_remote("CAa")
        store_remote("CAb")
        time.sleep(0.05)
        played = request(base, "GET", "/api/recordings/file/CAa", token=token)  # CAa: the more recent play
        assert played.status == 200
        time.sleep(PLAY_NOTE_DELAY)
        store_remote("CAc")
        assert [cached_remote(sid) for sid in ("CAa", "CAb", "CAc")] == [True, False, True]
    finally:
        stop_processes(worker, server)
