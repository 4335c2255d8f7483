"""With ``--counter redis://``, two recsvc processes on one data dir share one fail-fast count,
and a redis-server that dies mid-run keeps the limit: each process counts alone, never answers 500 for it.

Real processes, a real redis-server and real time with short timings
(``--job-timeout 0.4``): the stuck rule needs the processes' own clocks.
"""

from __future__ import annotations

import time

import pytest
from redis_server import requires_redis
from shared_counter import (
    PAST_JOB_TIMEOUT, assert_retries_alternating_between_two_servers_share_one_count, counter_warnings, play,
    setup_hung_call, two_servers,
)

pytestmark = requires_redis


@pytest.fixture
def servers(tmp_path, redis_server, upstream):
    with two_servers(tmp_path / "data", redis_server.url(db=1)) as started:
        yield started


def test_two_processes_share_one_fail_fast_count(servers, upstream):
    base_a, base_b, _ = servers
    assert_retries_alternating_between_two_servers_share_one_count(base_a, base_b, upstream, "CAshared")


def test_a_killed_redis_server_keeps_the_limit_across_both_processes(servers, upstream, redis_server):
    base_a, base_b, procs = servers
    token = setup_hung_call(base_a, upstream, "CAlimit")
    assert play(base_a, token, "CAlimit").json["attempt"] == 0
    time.sleep(PAST_JOB_TIMEOUT)
    assert play(base_b, token, "CAlimit").json["attempt"] == 1
    redis_server.kill()
    answers = []
    for turn in range(4):  # past the limit: each process counts alone, the jobs table tells both the count
        time.sleep(PAST_JOB_TIMEOUT)
        answers.append(play(base_a if turn % 2 else base_b, token, "CAlimit"))
    assert [a.status for a in answers] == [202, 202, 500, 500], [a.body for a in answers]
    assert [a.json["attempt"] for a in answers[:2]] == [2, 3]
    assert all(a.json["reason"] == "retry limit reached" for a in answers[2:])
    for proc in procs:  # one warning per outage, from one layer, not one per request
        assert len(counter_warnings(proc)) == 1, counter_warnings(proc)


def test_a_redis_server_restarted_empty_keeps_the_limit_across_both_processes(servers, upstream, redis_server):
    """A restarted Redis keeps nothing: each process's own count knows only its own retries (1 and 2 of
    3 here), but the jobs table knows the call is at 3, so the next retry is refused, whichever process."""
    base_a, base_b, _ = servers
    token = setup_hung_call(base_a, upstream, "CAempty")
    assert play(base_a, token, "CAempty").json["attempt"] == 0
    attempts = []
    for turn in range(3):  # retries 1, 2, 3, alternating B, A, B
        time.sleep(PAST_JOB_TIMEOUT)
        attempts.append(play(base_a if turn % 2 else base_b, token, "CAempty").json["attempt"])
    assert attempts == [1, 2, 3]
    redis_server.restart()
    for base in (base_a, base_b):
        time.sleep(PAST_JOB_TIMEOUT)
        answer = play(base, token, "CAempty")
        assert answer.status == 500, f"a 4th retry within the window: {answer.body!r}"
        assert answer.json["reason"] == "retry limit reached"
