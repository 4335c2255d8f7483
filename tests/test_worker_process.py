"""A separate ``recsvc worker`` process on the data dir of ``serve --workers 0``: CONTRACT 2, 6 and invariant 7.

Everything here is a real process talking over 127.0.0.1: the first play
with no live worker is told so at once and queues the job, a worker
started later runs it, the pause flag set through the server's admin API
holds the other process too, and SIGTERM lets a download in flight finish
within ``--shutdown-grace`` (or leaves it to the orphan rule of the next
start) and exits 0.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest

from processes import SERVE_ARGS, Client, read_db
from recsvc.demo.audio import sized_wav, tune_for

HEARTBEAT = "0.2"


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def start_serve(processes, data_dir) -> Client:
    serve = processes.start("serve", data_dir, *SERVE_ARGS, "--workers", "0", "--heartbeat-interval", HEARTBEAT)
    return Client(serve.base_url())


def start_worker(processes, data_dir, *args: str):
    worker = processes.start("worker", data_dir, "--workers", "1", "--heartbeat-interval", HEARTBEAT,
                             "--allow-upstream", "loopback", "--download-timeout", "10", *args)
    worker.wait_for_line("recsvc worker ")
    return worker


def part_files(data_dir) -> list[str]:
    found = []
    for folder, _dirs, names in os.walk(os.path.join(str(data_dir), "recordings")):
        found += [os.path.join(folder, n) for n in names if n.endswith(".part")]
    return found


def test_with_no_live_worker_the_first_play_is_500_and_a_worker_started_later_runs_the_queued_job(
        processes, data_dir, upstream):
    body = tune_for("CA-first")
    url = upstream.set("/first.wav", body=body)
    client = start_serve(processes, data_dir)
    token = client.business()
    client.put_call(token, "CA1", url)

    first = client.play(token, "CA1")
    assert first.status == 500
    assert first.json["error"] == "worker_not_processing_queue"
    assert first.json["reason"] == "no live worker"
    assert first.json["retry_after"] == 1  # 3 x 0.2 s, rounded up
    assert first.header("Retry-After") == "1"
    jobs = client.jobs("CA1")
    assert [job["status"] for job in jobs] == ["queued"]

    again = client.play(token, "CA1")
    assert again.status == 500 and again.json["reason"] == "no live worker"
    assert [job["id"] for job in client.jobs("CA1")] == [jobs[0]["id"]], "row 7 queues one job, not one per request"
    assert upstream.hits("/first.wav") == 0

    worker = start_worker(processes, data_dir)
    played = client.play_until(token, "CA1", 200)
    assert hashlib.sha256(played.body).hexdigest() == hashlib.sha256(body).hexdigest()
    assert played.body == body
    done = client.jobs("CA1")
    assert [job["id"] for job in done] == [jobs[0]["id"]]
    assert done[0]["status"] == "completed"
    assert f":{worker.pid}:" in done[0]["worker_id"], "the separate worker process ran it"
    assert upstream.hits("/first.wav") == 1


def test_a_worker_process_obeys_the_pause_set_through_the_servers_admin_api(processes, data_dir, upstream):
    body = sized_wav(50_000)
    url = upstream.set("/paused.wav", body=body)
    client = start_serve(processes, data_dir)
    token = client.business()
    start_worker(processes, data_dir)
    client.put_call(token, "CA2", url)

    paused = client.admin("POST", "/admin/workers/pause")
    assert paused.status == 200 and paused.json == {"paused": True}
    answer = client.play(token, "CA2")
    assert answer.status == 500 and answer.json["reason"] == "no live worker", "a paused worker is not live"
    assert [job["status"] for job in client.jobs("CA2")] == ["queued"]

    time.sleep(1.2)  # six of the worker's polls and heartbeats
    assert [job["status"] for job in client.jobs("CA2")] == ["queued"], "a paused worker claimed a job"
    assert upstream.hits("/paused.wav") == 0

    resumed = client.admin("POST", "/admin/workers/resume")
    assert resumed.status == 200 and resumed.json == {"paused": False}
    played = client.play_until(token, "CA2", 200)
    assert played.body == body
    assert [job["status"] for job in client.jobs("CA2")] == ["completed"]


def test_sigterm_on_a_worker_lets_the_download_in_flight_finish_claims_nothing_more_and_exits_0(
        processes, data_dir, upstream):
    body = sized_wav(300_000)          # 19 chunks of 16 KiB, 60 ms apart: about 1.1 s
    slow = upstream.set("/slow.wav", body=body, chunk_delay=0.06)
    later = upstream.set("/later.wav", body=sized_wav(20_000))
    client = start_serve(processes, data_dir)
    token = client.business()
    worker = start_worker(processes, data_dir, "--shutdown-grace", "8")
    client.put_call(token, "CA-SLOW", slow)
    client.put_call(token, "CA-LATER", later)

    assert client.play(token, "CA-SLOW").status == 202
    assert upstream.wait_for_hits("/slow.wav", 1, timeout=5)
    assert client.play(token, "CA-LATER").status == 202  # queued behind the only download thread

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0
    took = time.monotonic() - signalled
    assert took < 8, f"exit took {took:.1f}s, past --shutdown-grace"

    assert [job["status"] for job in client.jobs("CA-SLOW")] == ["completed"], "the download in flight finished"
    assert [job["status"] for job in client.jobs("CA-LATER")] == ["queued"], "a stopping worker claimed a new job"
    assert upstream.hits("/later.wav") == 0
    assert client.play(token, "CA-SLOW").body == body
    assert part_files(data_dir) == []


def test_sigterm_past_the_grace_exits_0_and_the_next_start_replaces_the_unfinished_download(
        processes, data_dir, upstream):
    body = sized_wav(400_000)          # 25 chunks, 100 ms apart: about 2.4 s
    url = upstream.set("/long.wav", body=body, chunk_delay=0.1)
    client = start_serve(processes, data_dir)
    token = client.business()
    worker = start_worker(processes, data_dir, "--shutdown-grace", "0.3")
    client.put_call(token, "CA-LONG", url)
    assert client.play(token, "CA-LONG").status == 202
    assert upstream.wait_for_hits("/long.wav", 1, timeout=5)
    time.sleep(0.2)

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0
    assert time.monotonic() - signalled < 2.0, "SIGTERM must not wait for a download past the grace"
    running = client.jobs("CA-LONG")
    assert [job["status"] for job in running] == ["running"]
    leftovers = part_files(data_dir)
    assert any(f".{worker.pid}." in os.path.basename(p) for p in leftovers)
    assert client.play(token, "CA-LONG").status != 200, "a half-written file is never served"

    upstream.set("/long.wav", body=body)  # the replacement need not be slow
    replacement_worker = start_worker(processes, data_dir)
    jobs = client.jobs("CA-LONG")
    assert len(jobs) == 2
    orphan = next(job for job in jobs if job["id"] == running[0]["id"])
    assert (orphan["status"], orphan["error_code"], orphan["error_message"]) == ("failed", "orphaned",
                                                                                 "worker restarted")
    replacement = next(job for job in jobs if job["id"] != orphan["id"])
    assert replacement["attempt"] == orphan["attempt"], "an orphan's replacement is not a retry"
    (seq_orphan,), (seq_replacement,) = read_db(data_dir, "SELECT queue_seq FROM jobs WHERE id IN (?, ?) ORDER BY id",
                                                orphan["id"], replacement["id"])
    assert seq_replacement == seq_orphan, "the replacement keeps the orphan's place in the queue"
    assert not any(p in part_files(data_dir) for p in leftovers), "leftover temporary files are removed"

    played = client.play_until(token, "CA-LONG", 200)
    assert played.body == body
    assert f":{replacement_worker.pid}:" in client.jobs("CA-LONG")[0]["worker_id"]
    counter = client.admin("GET", "/admin/retry-counters/1/CA-LONG").json
    assert counter["attempts"] == 0, "orphans do not count as retries"


def test_a_worker_process_killed_mid_download_is_noticed_at_once_and_the_next_worker_replaces_its_job(
        processes, data_dir, upstream):
    body = sized_wav(400_000)          # about 2.4 s at 100 ms a chunk
    url = upstream.set("/killed.wav", body=body, chunk_delay=0.1)
    client = start_serve(processes, data_dir)
    token = client.business()
    worker = start_worker(processes, data_dir)
    client.put_call(token, "CA-KILLED", url)
    assert client.play(token, "CA-KILLED").status == 202
    assert upstream.wait_for_hits("/killed.wav", 1, timeout=5)
    (running,) = client.jobs("CA-KILLED")
    worker.kill9()

    time.sleep(0.7)  # past 3 heartbeats of 0.2 s
    answer = client.play(token, "CA-KILLED")
    assert answer.status == 500 and answer.json["reason"] == "no live worker", "invariant 7: told at once"
    assert [job["id"] for job in client.jobs("CA-KILLED")] == [running["id"]], "row 7 adds no job beside an active one"

    upstream.set("/killed.wav", body=body)
    start_worker(processes, data_dir)
    orphan = next(job for job in client.jobs("CA-KILLED") if job["id"] == running["id"])
    assert (orphan["status"], orphan["error_code"], orphan["error_message"]) == ("failed", "orphaned",
                                                                                 "worker restarted")
    played = client.play_until(token, "CA-KILLED", 200)
    assert played.body == body
    assert not any(f".{worker.pid}." in os.path.basename(p) for p in part_files(data_dir))


def test_sigterm_on_serve_stops_accepting_lets_its_download_finish_and_exits_0(processes, data_dir, upstream):
    body = sized_wav(300_000)          # about 1.1 s
    url = upstream.set("/serve-slow.wav", body=body, chunk_delay=0.06)
    serve = processes.start("serve", data_dir, *SERVE_ARGS, "--workers", "1", "--heartbeat-interval", HEARTBEAT,
                            "--shutdown-grace", "8")
    client = Client(serve.base_url())
    token = client.business()
    client.put_call(token, "CA-SERVE", url)
    assert client.play(token, "CA-SERVE").status == 202
    assert upstream.wait_for_hits("/serve-slow.wav", 1, timeout=5)

    serve.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert serve.proc.poll() is None, "serve exited before its download in flight finished"
    with pytest.raises(OSError):
        client.request("GET", "/healthz", timeout=2)
    assert serve.wait(timeout=10) == 0

    ((status, error_code),) = read_db(data_dir, "SELECT status, error_code FROM jobs WHERE call_sid = 'CA-SERVE'")
    assert (status, error_code) == ("completed", None)
    assert part_files(data_dir) == []
