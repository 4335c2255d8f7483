"""With ``--counter redis://``, two recsvc processes on one data dir share one fail-fast count,
and a redis-server that dies mid-run makes the service fail open, never answer 500 for it.

Real processes, a real redis-server and real time with short timings
(``--job-timeout 0.4``): the stuck rule needs the processes' own clocks.
"""

from __future__ import annotations

import time

import pytest
from conftest import ADMIN_TOKEN, request, spawn_recsvc, wait_listening
from redis_server import requires_redis

pytestmark = requires_redis

JOB_TIMEOUT = 0.4


@pytest.fixture
def two_servers(tmp_path, redis_server, upstream):
    data_dir = tmp_path / "data"
    args = ["--port", "0", "--counter", redis_server.url(db=1), "--job-timeout", str(JOB_TIMEOUT),
            "--heartbeat-interval", "0.2", "--retry-window", "60", "--download-timeout", "30",
            "--allow-upstream", "loopback", "--admin-token", ADMIN_TOKEN, "--workers", "2"]
    procs = []
    try:
        first = spawn_recsvc("serve", data_dir, *args)
        procs.append(first)
        base_a = wait_listening(first)
        second = spawn_recsvc("serve", data_dir, *args)
        procs.append(second)
        base_b = wait_listening(second)
        yield base_a, base_b, procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def setup_hung_call(base_url: str, upstream, call_sid: str) -> str:
    token = request(base_url, "POST", "/admin/businesses", token=ADMIN_TOKEN, body={"name": "shared"}).json["token"]
    url = upstream.set(f"/{call_sid}.wav", hang=True)
    assert request(base_url, "PUT", f"/api/calls/{call_sid}", token=token, body={"recording_url": url}).status == 201
    return token


def play(base_url: str, token: str, call_sid: str):
    return request(base_url, "GET", f"/api/recordings/file/{call_sid}", token=token)


def test_two_processes_share_one_fail_fast_count(two_servers, upstream):
    base_a, base_b, procs = two_servers
    token = setup_hung_call(base_a, upstream, "CAshared")
    attempts = []
    for turn in range(4):  # attempts 0..3, alternating between the two processes
        answer = play(base_a if turn % 2 == 0 else base_b, token, "CAshared")
        assert answer.status == 202, answer.body
        attempts.append(answer.json["attempt"])
        time.sleep(JOB_TIMEOUT + 0.15)  # let the job pass job-timeout on the processes' own clocks
    assert attempts == [0, 1, 2, 3]
    refused = play(base_b, token, "CAshared")
    assert refused.status == 500
    assert refused.json["error"] == "worker_not_processing_queue"
    assert refused.json["reason"] == "retry limit reached"
    counter = request(base_a, "GET", "/admin/retry-counters/1/CAshared", token=ADMIN_TOKEN).json
    assert counter["attempts"] == 3 and counter["key"] == "recording_retry_attempts:1:CAshared"


def test_a_killed_redis_server_makes_retries_fail_open(two_servers, upstream, redis_server):
    base_a, base_b, procs = two_servers
    token = setup_hung_call(base_a, upstream, "CAopen")
    assert play(base_a, token, "CAopen").json["attempt"] == 0
    time.sleep(JOB_TIMEOUT + 0.15)
    assert play(base_b, token, "CAopen").json["attempt"] == 1
    redis_server.kill()
    answers = []
    for turn in range(4):  # past the limit: with no counter, every retry is allowed
        time.sleep(JOB_TIMEOUT + 0.15)
        answers.append(play(base_a if turn % 2 else base_b, token, "CAopen"))
    assert [a.status for a in answers] == [202, 202, 202, 202], [a.body for a in answers]
    assert all(a.json["job_status"] == "queued" for a in answers)
    for proc in procs:  # one warning per outage from each layer, not one per request
        warnings = [line for line in proc.log_lines if "WARNING" in line and "counter" in line]
        assert 1 <= len(warnings) <= 2, warnings
