"""Two real ``recsvc serve`` processes on one data dir with one shared ``--counter``: the fail-fast
scenario that every shared backend (redis://, sqlite://) must pass.

Real processes and real time with short timings (``--job-timeout 0.4``): the
stuck rule needs the processes' own clocks.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from conftest import ADMIN_TOKEN, request, spawn_recsvc, wait_listening

JOB_TIMEOUT = 0.4
PAST_JOB_TIMEOUT = JOB_TIMEOUT + 0.15  # real seconds after which a job is stuck on the processes' clocks


@contextlib.contextmanager
def two_servers(data_dir, counter_url: str) -> Iterator[tuple[str, str, list]]:
    """(base URL of A, base URL of B, their processes), both serving ``data_dir`` with ``counter_url``."""
    args = ["--port", "0", "--counter", counter_url, "--job-timeout", str(JOB_TIMEOUT),
            "--heartbeat-interval", "0.2", "--retry-window", "60", "--download-timeout", "30",
            "--allow-upstream", "loopback", "--admin-token", ADMIN_TOKEN, "--workers", "2"]
    procs = []
    try:
        procs.append(spawn_recsvc("serve", data_dir, *args))
        base_a = wait_listening(procs[0])
        procs.append(spawn_recsvc("serve", data_dir, *args))
        base_b = wait_listening(procs[1])
        yield base_a, base_b, procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def setup_hung_call(base_url: str, upstream, call_sid: str) -> str:
    """A business and a call whose download hangs; returns the business token."""
    token = request(base_url, "POST", "/admin/businesses", token=ADMIN_TOKEN, body={"name": "shared"}).json["token"]
    url = upstream.set(f"/{call_sid}.wav", hang=True)
    assert request(base_url, "PUT", f"/api/calls/{call_sid}", token=token, body={"recording_url": url}).status == 201
    return token


def play(base_url: str, token: str, call_sid: str):
    return request(base_url, "GET", f"/api/recordings/file/{call_sid}", token=token)


def assert_retries_alternating_between_two_servers_share_one_count(base_a: str, base_b: str, upstream,
                                                                   call_sid: str) -> None:
    """Attempts 0..3 alternate between A and B, then B refuses: 3 retries in all, not 3 per process."""
    token = setup_hung_call(base_a, upstream, call_sid)
    attempts = []
    for turn in range(4):
        answer = play(base_a if turn % 2 == 0 else base_b, token, call_sid)
        assert answer.status == 202, answer.body
        attempts.append(answer.json["attempt"])
        time.sleep(PAST_JOB_TIMEOUT)
    assert attempts == [0, 1, 2, 3]
    refused = play(base_b, token, call_sid)
    assert refused.status == 500
    assert refused.json["error"] == "worker_not_processing_queue"
    assert refused.json["reason"] == "retry limit reached"
    counter = request(base_a, "GET", f"/admin/retry-counters/1/{call_sid}", token=ADMIN_TOKEN).json
    assert counter["attempts"] == 3 and counter["key"] == f"recording_retry_attempts:1:{call_sid}"


def counter_warnings(proc) -> list[str]:
    return [line for line in proc.log_lines if "WARNING" in line and "counter" in line]
