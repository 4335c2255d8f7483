"""Fault drills on real processes: hung upstreams at the seed's timings, a worker process killed or
frozen mid-download (CONTRACT 4 v3).

Each drill runs ``python -m recsvc serve`` (and ``recsvc worker`` processes)
on 127.0.0.1 against the fake upstream of this test process, injects the
fault itself, and plays every call the way a player does (section 7: poll
until the answer is not 202, stop on a 4xx/5xx). Every loop is bounded in
count and time.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from processes import SERVE_ARGS, Client, put_calls, read_db
from recsvc.demo.audio import sized_wav

DRILL_SECONDS = 20  # no drill waits longer than this for its players


def play_to_the_end(client: Client, token: str, call_sid: str, deadline: float, pause: float = 0.1):
    """Poll like a player until the answer is not 202; None when the deadline came first."""
    while time.monotonic() < deadline:
        answer = client.play(token, call_sid)
        if answer.status != 202:
            return answer
        time.sleep(pause)
    return None


def play_all(client: Client, token: str, call_sids: list[str], seconds: float = DRILL_SECONDS,
             arrivals: dict[str, float] | None = None) -> dict:
    """Every call played by its own player thread, at once or ``arrivals[sid]`` seconds later;
    call_sid -> last answer (or None)."""
    started = time.monotonic()
    deadline = started + seconds
    answers: dict = {}

    def player(call_sid: str) -> None:
        time.sleep((arrivals or {}).get(call_sid, 0.0))
        answers[call_sid] = play_to_the_end(client, token, call_sid, deadline)

    threads = [threading.Thread(target=player, args=(sid,), daemon=True) for sid in call_sids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 10)
    return answers


def assert_played(client: Client, answers: dict, call_sids: list[str], body: bytes) -> None:
    """Each call's last answer is a 200 with exactly ``body``."""
    for sid in call_sids:
        answer = answers[sid]
        assert answer is not None and answer.status == 200, (sid, answer and answer.body, client.jobs(sid))
        assert answer.body == body, f"{sid}: wrong bytes"


def gauge(client: Client, name: str) -> float:
    text = client.request("GET", "/metrics").body.decode()
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert match, f"/metrics has no {name}"
    return float(match.group(1))


class GaugeSampler:
    """Samples a gauge every ``step`` seconds in a thread; ``longest_positive()`` is the longest
    time it stayed above 0."""

    def __init__(self, client: Client, name: str, step: float = 0.05):
        self.client, self.name, self.step = client, name, step
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "GaugeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.step):
            self.samples.append((time.monotonic(), gauge(self.client, self.name)))

    def longest_positive(self) -> float:
        longest, since = 0.0, None
        for at, value in self.samples:
            if value > 0 and since is None:
                since = at
            elif value <= 0 and since is not None:
                longest, since = max(longest, at - since), None
        if since is not None:
            longest = max(longest, self.samples[-1][0] - since)
        return longest


# ---------------------------------------------------------------- hung upstreams at the seed's timings


def test_hung_upstreams_beside_healthy_ones_at_the_seeds_timings_cost_no_healthy_call(processes, tmp_path, upstream):
    """--job-timeout 2 with the default --download-timeout (30 s): a hung download holds its thread
    for at most job-timeout, and a superseded one is let go within one heartbeat."""
    interval = 0.5
    serve = processes.start("serve", tmp_path / "data", *SERVE_ARGS, "--workers", "16", "--job-timeout", "2",
                        "--heartbeat-interval", str(interval), "--retry-after", "1")
    client = Client(serve.base_url())
    token = client.business()
    wav = sized_wav(30_000)
    hung = [f"CA-HUNG-{i}" for i in range(12)]
    healthy = [f"CA-OK-{i}" for i in range(40)]
    put_calls(client, token, upstream, hung, wav, hang=True)
    put_calls(client, token, upstream, healthy, wav)
    superseded = hung[:2]  # given a new, healthy URL while their hung download runs
    try:
        with GaugeSampler(client, "recsvc_abandoned_downloads") as sampler:
            for sid in hung:  # the hung calls ask first and take threads first
                assert client.play(token, sid).status == 202
            for sid in hung:
                assert upstream.wait_for_hits(f"/{sid}.wav", 1, timeout=5)
            for sid in superseded:
                client.put_call(token, sid, upstream.set(f"/{sid}-new.wav", body=wav))
            # Healthy calls keep arriving while the hung ones retry, in four waves 2.5 s apart.
            arrivals = {sid: 2.5 * (i % 4) for i, sid in enumerate(healthy)}
            answers = play_all(client, token, healthy + hung, arrivals=arrivals)
            time.sleep(3 * interval)  # let the sampler see the end
    finally:
        upstream.hang_all = False
        upstream.release()

    assert_played(client, answers, healthy + superseded, wav)
    for sid in hung[2:]:
        answer = answers[sid]
        assert answer is not None and answer.status == 500, (sid, answer and answer.body)
        assert answer.json["error"] == "worker_not_processing_queue"
        assert answer.json["reason"] == "retry limit reached"
    highest = max((value for _, value in sampler.samples), default=0)
    print(f"\nabandoned downloads: {len(sampler.samples)} samples, max {highest:g}, "
          f"longest above 0: {sampler.longest_positive():.2f}s (heartbeat {interval}s)")
    assert sampler.samples, "the gauge was never read"
    assert sampler.longest_positive() <= interval + 0.6, (
        f"threads stayed busy on jobs no longer theirs for {sampler.longest_positive():.2f}s")
    assert gauge(client, "recsvc_abandoned_downloads") == 0
    assert gauge(client, "recsvc_busy_downloads") == 0, "a hung download still holds a thread"
    assert read_db(tmp_path / "data", "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')") == [(0,)]


# ---------------------------------------------------------------- a worker process killed or frozen


def _running_on(data_dir, pid: int) -> list[tuple]:
    return read_db(data_dir, "SELECT id, call_sid FROM jobs WHERE status = 'running' AND worker_id LIKE ?",
                   f"%:{pid}:%")


WORKER_TIMINGS = ("--heartbeat-interval", "0.2", "--job-timeout", "6", "--retry-after", "1")


def _two_workers_mid_download(processes, data_dir, upstream, prefix: str):
    """``serve --workers 0`` and two ``recsvc worker`` processes of 2 threads, 8 calls whose downloads
    take about 1 s each, all asked for; returns once the first worker runs a job:
    (client, token, wav, call sids, first worker, the jobs it runs)."""
    serve = processes.start("serve", data_dir, *SERVE_ARGS, "--workers", "0", *WORKER_TIMINGS)
    client = Client(serve.base_url())
    workers = [processes.start("worker", data_dir, "--workers", "2", "--allow-upstream", "loopback",
                               *WORKER_TIMINGS) for _ in range(2)]
    deadline = time.monotonic() + 10
    while read_db(data_dir, "SELECT COUNT(*) FROM workers")[0][0] < 2:
        assert time.monotonic() < deadline, "the workers never registered"
        time.sleep(0.02)
    token = client.business()
    wav = sized_wav(80_000)
    sids = [f"{prefix}-{i}" for i in range(8)]
    put_calls(client, token, upstream, sids, wav, chunk_size=4096, chunk_delay=0.05)
    for sid in sids:
        assert client.play(token, sid).status == 202
    while not (taken := _running_on(data_dir, workers[0].pid)):
        assert time.monotonic() < deadline + 10, f"worker {workers[0].pid} never ran a job"
        time.sleep(0.02)
    return client, token, wav, sids, workers[0], taken


def test_kill_9_of_a_worker_process_mid_download_loses_no_call(processes, tmp_path, upstream):
    data = tmp_path / "data"
    client, token, wav, sids, victim, lost = _two_workers_mid_download(processes, data, upstream, "CA-K")
    victim.kill9()

    answers = play_all(client, token, sids)
    assert_played(client, answers, sids, wav)
    for job_id, call_sid in lost:
        ((status, code),) = read_db(data, "SELECT status, error_code FROM jobs WHERE id = ?", job_id)
        assert (status, code) == ("failed", "stuck"), f"job {job_id} of the killed worker was not replaced"
    assert read_db(data, "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')") == [(0,)]


def test_a_worker_frozen_past_the_heartbeat_window_is_replaced_and_changes_no_row_when_it_wakes(
        processes, tmp_path, upstream):
    data = tmp_path / "data"
    client, token, wav, sids, frozen, taken = _two_workers_mid_download(processes, data, upstream, "CA-F")
    frozen.signal(signal.SIGSTOP)
    try:
        answers = play_all(client, token, sids)
        rows_while_frozen = read_db(data, "SELECT id, status, finished_at, error_code, worker_id FROM jobs ORDER BY id")
    finally:
        frozen.signal(signal.SIGCONT)
    assert_played(client, answers, sids, wav)
    for job_id, _call_sid in taken:
        ((status, code),) = read_db(data, "SELECT status, error_code FROM jobs WHERE id = ?", job_id)
        assert (status, code) == ("failed", "stuck")

    # Awake again: it notices within a heartbeat that its jobs are gone, and changes no row.
    deadline = time.monotonic() + 5
    while not any("is no longer ours" in line for line in frozen.lines):
        assert time.monotonic() < deadline, ("the woken worker never noticed it lost its jobs:\n"
                                             + "\n".join(frozen.lines))
        time.sleep(0.05)
    time.sleep(1.0)
    rows_after = read_db(data, "SELECT id, status, finished_at, error_code, worker_id FROM jobs ORDER BY id")
    assert rows_after == rows_while_frozen, "the late worker changed a job row"
    for sid in sids:
        assert client.play(token, sid).body == wav
    assert os.kill(frozen.pid, 0) is None, "the woken worker is still running"
