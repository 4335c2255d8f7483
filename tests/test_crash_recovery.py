"""Crashes and restarts: invariants 4 and 6, and the orphan rule of CONTRACT 4.

A real ``serve`` is killed with SIGKILL in the middle of a download, at
seeded random moments: no file is ever visible without its row, no partial
file is ever served, and the next start fails the orphan ``orphaned``,
queues its replacement in the same queue place, removes the leftover
temporary file, and the call then plays the exact upstream bytes. Below
that, ``recover_orphans`` is stepped in-process for each kind of job it
must and must not touch.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import FakeClock
from processes import SERVE_ARGS, Client, read_db
from recsvc.demo.audio import sized_wav
from recsvc.storage.files import HOSTNAME, TEMP_SUFFIX, RecordingFiles
from recsvc.storage.store import Store
from recsvc.core.worker import recover_orphans

SEED = 20261128
ROUNDS = 5


def recordings_on_disk(data_dir) -> tuple[dict[str, bytes], list[str]]:
    """(published files by path relative to recordings/, temporary file names)."""
    root = os.path.join(str(data_dir), "recordings")
    published, temporary = {}, []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            if name.endswith(TEMP_SUFFIX):
                temporary.append(full)
            else:
                with open(full, "rb") as handle:
                    published[os.path.relpath(full, root)] = handle.read()
    return published, temporary


def assert_every_visible_file_has_its_row(data_dir) -> None:
    """CONTRACT 1: a file is visible only once written completely and verified, with its row."""
    published, _ = recordings_on_disk(data_dir)
    rows = {path: (size, sha) for path, size, sha in read_db(data_dir, "SELECT path, size, sha256 FROM recordings")}
    for path, data in published.items():
        assert path in rows, f"{path} is on disk without its row"
        size, sha = rows[path]
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha), f"{path} does not match its row"
    for path in rows:
        assert path in published, f"the row of {path} names no file"


def start_serve(processes, data_dir):
    serve = processes.start("serve", data_dir, *SERVE_ARGS, "--workers", "1", "--heartbeat-interval", "0.2",
                            "--download-timeout", "10")
    return serve, Client(serve.base_url())


def test_kill_9_mid_download_never_exposes_a_partial_file_and_the_restart_replaces_the_orphan(
        processes, tmp_path, upstream):
    rng = random.Random(SEED)
    data_dir = tmp_path / "data"
    body = sized_wav(1_000_000)      # 62 chunks of 16 KiB, 32 ms apart: about 2 s
    digest = hashlib.sha256(body).hexdigest()
    behind_body = sized_wav(30_000)
    serve, client = start_serve(processes, data_dir)
    token = client.business()

    for round_no in range(ROUNDS):
        sid, behind = f"CA-CRASH-{round_no}", f"CA-BEHIND-{round_no}"
        path = f"/crash-{round_no}.wav"
        client.put_call(token, sid, upstream.set(path, body=body, chunk_delay=0.032))
        client.put_call(token, behind, upstream.set(f"/behind-{round_no}.wav", body=behind_body))
        assert client.play(token, sid).status == 202
        assert upstream.wait_for_hits(path, 1, timeout=5)
        assert client.play(token, behind).status == 202  # queued behind the only download thread

        kill_at = time.monotonic() + rng.uniform(0.0, 1.5)
        while time.monotonic() < kill_at:
            answer = client.play(token, sid)
            assert answer.status == 202, f"round {round_no}: a download in progress answered {answer.status}"
            time.sleep(0.05)
        dead_pid = serve.pid
        serve.kill9()

        assert_every_visible_file_has_its_row(data_dir)
        published, leftovers = recordings_on_disk(data_dir)
        assert not any(p.startswith(f"1/{sid}.") for p in published), f"round {round_no}: partial file published"
        (orphan_id, orphan_status, orphan_attempt, orphan_seq), = read_db(
            data_dir, "SELECT id, status, attempt, queue_seq FROM jobs WHERE call_sid = ?", sid)
        assert orphan_status == "running"
        assert leftovers, "the download in flight was being written to a temporary file"

        upstream.set(path, body=body)  # the replacement need not be slow
        serve, client = start_serve(processes, data_dir)
        jobs = {job["id"]: job for job in client.jobs(sid)}
        orphan = jobs.pop(orphan_id)
        assert (orphan["status"], orphan["error_code"], orphan["error_message"]) == \
            ("failed", "orphaned", "worker restarted"), f"round {round_no}"
        (replacement,) = jobs.values()
        assert replacement["attempt"] == orphan_attempt
        ((replacement_seq,),) = read_db(data_dir, "SELECT queue_seq FROM jobs WHERE id = ?", replacement["id"])
        assert replacement_seq == orphan_seq, "the replacement keeps the orphan's place in the queue"
        _, now_temporary = recordings_on_disk(data_dir)
        assert not set(leftovers) & set(now_temporary), "leftover temporary files are removed at start"
        assert not any(f".{dead_pid}." in os.path.basename(p) for p in now_temporary)

        played = client.play_until(token, sid, 200)
        assert hashlib.sha256(played.body).hexdigest() == digest, f"round {round_no}: served bytes differ"
        assert client.play_until(token, behind, 200).body == behind_body
        started = {job["call_sid"]: job["started_at"] for job in client.jobs(sid)[:1] + client.jobs(behind)[:1]}
        assert started[sid] <= started[behind], "the replacement ran before the job queued behind the orphan"
        assert_every_visible_file_has_its_row(data_dir)
        assert client.admin("GET", f"/admin/retry-counters/1/{sid}").json["attempts"] == 0


# ---------------------------------------------------------------- recover_orphans, in-process

@pytest.fixture
def store(tmp_path):
    opened = Store(str(tmp_path / "recsvc.sqlite3"))
    yield opened
    opened.close()


@pytest.fixture
def files(tmp_path):
    return RecordingFiles(str(tmp_path))


def dead_pid() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    """The pid of another live process of this host."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


OWN_WORKER = f"{HOSTNAME}:{os.getpid()}:00000001"
T0 = 1_800_000_000.0


def running_job(store, call_sid: str, worker_id: str, *, attempt: int = 0, beat: float = T0) -> tuple[int, int]:
    """A call with a job claimed by ``worker_id`` (heartbeat fresh at ``beat``); (job id, queue_seq)."""
    with store.writing() as tx:
        if not tx.business_exists(1):
            tx.insert_business("acme", "hash-of-acme", T0)
        url = f"http://127.0.0.1:9/{call_sid}.wav"
        tx.insert_call(1, call_sid, url, None, T0)
        job_id = tx.insert_job(1, call_sid, url, attempt, T0)
        claimed = tx.claim_next_job(worker_id, beat)
        assert claimed.id == job_id
        tx.beat(worker_id, beat)
        return job_id, claimed.queue_seq


def jobs_of(store, call_sid: str):
    with store.reading() as tx:
        return list(reversed(tx.jobs_newest_first(call_sid, 1, 10)))


def test_a_running_job_of_a_dead_process_of_this_host_is_failed_orphaned_and_replaced_in_place(store, files):
    clock = FakeClock(T0 + 1)
    job_id, seq = running_job(store, "CA-DEAD", f"{HOSTNAME}:{dead_pid()}:abcdef01", attempt=2, beat=T0 + 1)
    assert recover_orphans(store, files, clock, OWN_WORKER) == 1
    orphan, replacement = jobs_of(store, "CA-DEAD")
    assert orphan.id == job_id
    assert (orphan.status, orphan.error_code, orphan.error_message) == ("failed", "orphaned", "worker restarted")
    assert orphan.finished_at == T0 + 1
    assert replacement.status == "queued"
    assert replacement.attempt == 2, "orphans do not count as retries"
    assert replacement.queue_seq == seq, "the replacement keeps the orphan's place in the queue"


def test_an_orphan_is_recovered_whatever_its_heartbeat_says(store, files):
    clock = FakeClock(T0)
    running_job(store, "CA-FRESH", f"{HOSTNAME}:{dead_pid()}:abcdef02", beat=T0)  # beat this very second
    assert recover_orphans(store, files, clock, OWN_WORKER) == 1
    assert [j.status for j in jobs_of(store, "CA-FRESH")] == ["failed", "queued"]


def test_a_running_job_of_a_live_process_is_left_alone(store, files, live_pid):
    running_job(store, "CA-LIVE", f"{HOSTNAME}:{live_pid}:abcdef03")
    assert recover_orphans(store, files, FakeClock(T0 + 1), OWN_WORKER) == 0
    assert [j.status for j in jobs_of(store, "CA-LIVE")] == ["running"]


def test_a_job_of_this_pid_under_another_worker_id_is_an_orphan(store, files):
    running_job(store, "CA-REUSED", f"{HOSTNAME}:{os.getpid()}:0ld0ld00")  # a restarted container reuses pids
    assert recover_orphans(store, files, FakeClock(T0 + 1), OWN_WORKER) == 1
    orphan, replacement = jobs_of(store, "CA-REUSED")
    assert (orphan.status, orphan.error_code) == ("failed", "orphaned")
    assert replacement.status == "queued"


def test_a_job_of_this_very_worker_is_not_an_orphan(store, files):
    running_job(store, "CA-MINE", OWN_WORKER)
    assert recover_orphans(store, files, FakeClock(T0 + 1), OWN_WORKER) == 0
    assert [j.status for j in jobs_of(store, "CA-MINE")] == ["running"]


def test_a_job_of_another_host_is_left_to_the_heartbeat_rule(store, files):
    running_job(store, "CA-ELSEWHERE", f"another-host.example:{dead_pid()}:abcdef04")
    assert recover_orphans(store, files, FakeClock(T0 + 1), OWN_WORKER) == 0
    assert [j.status for j in jobs_of(store, "CA-ELSEWHERE")] == ["running"]


def test_queued_and_finished_jobs_are_not_touched_by_recovery(store, files):
    with store.writing() as tx:
        tx.insert_business("acme", "hash-of-acme", T0)
        tx.insert_call(1, "CA-Q", "http://127.0.0.1:9/q.wav", None, T0)
        tx.insert_job(1, "CA-Q", "http://127.0.0.1:9/q.wav", 0, T0)
    assert recover_orphans(store, files, FakeClock(T0 + 1), None) == 0
    assert [j.status for j in jobs_of(store, "CA-Q")] == ["queued"]


def test_leftover_temporary_files_of_dead_writers_are_removed_and_others_kept(store, files, live_pid):
    folder = os.path.join(files.root, "1")
    os.makedirs(folder)

    def temp(host: str, pid: int) -> str:
        path = os.path.join(folder, f".{host}.{pid}.0123456789abcdef{TEMP_SUFFIX}")
        open(path, "wb").close()
        return path

    dead = temp(HOSTNAME, dead_pid())
    own = temp(HOSTNAME, os.getpid())
    live = temp(HOSTNAME, live_pid)
    foreign = temp("another-host.example", dead_pid())
    published = os.path.join(folder, "CA1.wav")
    open(published, "wb").close()
    recover_orphans(store, files, FakeClock(T0), OWN_WORKER)
    assert not os.path.exists(dead), "a dead writer's temporary file is left over"
    assert not os.path.exists(own), "this process's own earlier temporary file is left over"
    assert os.path.exists(live), "a live writer's temporary file was removed under it"
    assert os.path.exists(foreign), "another host's writer cannot be judged from here"
    assert os.path.exists(published)


# ---------------------------------------------------------------- an upstream that dies mid-transfer (invariant 4)

def test_an_upstream_that_closes_before_its_content_length_is_never_published(make_harness, upstream):
    h = make_harness(workers=1)
    token = h.business()
    body = sized_wav(100_000)
    h.put_call(token, "CA-CUT", upstream.set("/cut.wav", body=body[:40_000],
                                             headers={"Content-Length": str(len(body))}))
    assert h.play(token, "CA-CUT").status == 202
    job = h.wait_for_job("CA-CUT")
    assert (job["status"], job["error_code"]) == ("failed", "download_failed"), "a cut download counted as whole"
    assert upstream.hits("/cut.wav") == 3, "a connection error is tried 3 times in all"
    with h.app.store.reading() as tx:
        assert tx.get_recording(1, "CA-CUT") is None

    upstream.set("/cut.wav", body=body)
    assert h.play(token, "CA-CUT").status == 202  # row 10b
    assert h.wait_for_job("CA-CUT")["status"] == "completed"
    assert h.play(token, "CA-CUT").body == body


def test_a_chunked_upstream_that_closes_before_its_last_chunk_fails_the_job_download_failed(make_harness, upstream):
    h = make_harness(workers=1)
    token = h.business()
    body = sized_wav(60_000)
    cut = b"%x\r\n" % 30_000 + body[:30_000] + b"\r\n"  # one chunk, then the connection closes: no last chunk
    h.put_call(token, "CA-CHUNK", upstream.set("/chunk.wav", body=cut, headers={"Transfer-Encoding": "chunked"}))
    assert h.play(token, "CA-CHUNK").status == 202
    job = h.wait_for_job("CA-CHUNK", timeout=5)
    assert (job["status"], job["error_code"]) == ("failed", "download_failed"), "the job was left running"
    assert upstream.hits("/chunk.wav") == 3
    assert temp_files_of(h) == []


def test_an_upstream_answering_no_http_fails_the_job_download_failed(make_harness):
    listener = socket.create_server(("127.0.0.1", 0))
    hits = []

    def answer_garbage():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                hits.append(1)
                conn.sendall(b"this is not HTTP\r\n\r\n")

    threading.Thread(target=answer_garbage, daemon=True).start()
    try:
        h = make_harness(workers=1)
        token = h.business()
        h.put_call(token, "CA-JUNK", f"http://127.0.0.1:{listener.getsockname()[1]}/junk.wav")
        assert h.play(token, "CA-JUNK").status == 202
        job = h.wait_for_job("CA-JUNK", timeout=5)
        assert (job["status"], job["error_code"]) == ("failed", "download_failed"), "the job was left running"
        assert len(hits) == 3
        assert temp_files_of(h) == []
    finally:
        listener.close()


def temp_files_of(h) -> list[str]:
    return [n for _f, _d, names in os.walk(h.app.files.root) for n in names if n.endswith(TEMP_SUFFIX)]
