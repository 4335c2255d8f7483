"""CONTRACT 3 v3, the counter: while redis:// is unreachable the limit holds through a process-local
TTL counter, with one warning when the outage starts and one when it ends, and a metric.

The counter itself against a closed port and a real redis-server that is
killed and restarted; then a real ``serve`` with ``--counter redis://``
whose redis-server dies and comes back during a run of hung and healthy calls.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest
from counter_contract import KEY, CounterContract
from redis_server import free_port, requires_redis

from processes import SERVE_ARGS, Client, put_calls
from recsvc.storage.counter import CounterError, MemoryCounter
from recsvc.demo.audio import sized_wav
from recsvc.storage.fallback_counter import FallbackCounter
from recsvc.storage.redis_counter import RedisCounter

FALLBACK_LOG = "recsvc.storage.fallback_counter"


class FakeClock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def outage_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == FALLBACK_LOG]


class TestFallbackWhileTheServerIsDown(CounterContract):
    """With nothing listening, the fallback keeps Redis's semantics on its own."""

    @pytest.fixture
    def counter_env(self):
        clock = FakeClock()
        counter = FallbackCounter(RedisCounter(f"redis://127.0.0.1:{free_port()}/0"), MemoryCounter(clock))
        yield counter, clock.advance
        assert counter.in_fallback
        counter.close()


@requires_redis
class TestFallbackWhileTheServerAnswers(CounterContract):
    @pytest.fixture
    def counter_env(self, redis_server):
        counter = FallbackCounter(RedisCounter(redis_server.url(db=2)), MemoryCounter(time.time))
        yield counter, time.sleep
        assert not counter.in_fallback
        counter.close()


@requires_redis
def test_an_outage_is_counted_in_the_process_logged_twice_and_the_count_survives_an_empty_restart(
        redis_server, caplog):
    caplog.set_level(logging.INFO)
    outages = []
    counter = FallbackCounter(RedisCounter(redis_server.url()), MemoryCounter(time.time), retry_every=0,
                              on_outage=lambda: outages.append(1))
    assert counter.incr_and_expire(KEY, 60) == 1
    redis_server.kill()
    for expected in (2, 3):
        assert counter.get(KEY) == expected - 1
        assert counter.incr_and_expire(KEY, 60) == expected, "the count goes on in the process"
    assert counter.in_fallback and counter.outages == 1 and outages == [1]
    assert 55 <= counter.ttl(KEY) <= 60
    assert len(outage_lines(caplog)) == 1 and "unreachable" in outage_lines(caplog)[0]
    assert [r for r in caplog.records if r.name == "recsvc.storage.redis_counter"] == [], "one layer logs the outage"

    redis_server.start()  # --save '': it comes back empty
    assert counter.get(KEY) == 3, "a restarted, empty server must not reset the count within its window"
    assert not counter.in_fallback
    assert len(outage_lines(caplog)) == 2 and "answers again" in outage_lines(caplog)[1]
    assert counter.incr_and_expire(KEY, 60) == 4
    counter.close()


@requires_redis
def test_decr_takes_a_count_back_and_keeps_the_window(redis_server):
    for counter in (RedisCounter(redis_server.url(db=4)), MemoryCounter(time.time),
                    FallbackCounter(RedisCounter(redis_server.url(db=5)), MemoryCounter(time.time))):
        assert counter.incr_and_expire(KEY, 60) == 1
        assert counter.incr_and_expire(KEY, 60) == 2
        assert counter.decr(KEY) == 1
        assert counter.get(KEY) == 1
        assert 55 <= counter.ttl(KEY) <= 60, f"{counter!r} lost the key's window"
        counter.close()


def test_during_an_outage_the_server_is_asked_at_most_once_per_interval():
    asked = []

    class Down:
        def get(self, key):
            asked.append(key)
            raise CounterError("connection refused")

        def close(self):
            pass

    now = [0.0]
    counter = FallbackCounter(Down(), MemoryCounter(time.time), retry_every=1.0, monotonic=lambda: now[0])
    for _ in range(50):
        assert counter.get(KEY) is None
    assert len(asked) == 1
    now[0] = 1.0
    counter.get(KEY)
    assert len(asked) == 2


# ---------------------------------------------------------------- a real serve whose redis-server dies


def _metric(client: Client, name: str) -> float:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", client.request("GET", "/metrics").body.decode(), re.M)
    assert match, name
    return float(match.group(1))


@requires_redis
def test_redis_killed_and_restarted_during_a_run_gives_no_wrong_500_and_keeps_the_limit(
        processes, tmp_path, redis_server, upstream):
    serve = processes.start("serve", tmp_path / "data", *SERVE_ARGS, "--counter", redis_server.url(), "--workers", "8",
                        "--job-timeout", "0.5", "--heartbeat-interval", "0.2", "--retry-window", "60",
                        "--retry-after", "1", "--recovery-retry-after", "1")
    client = Client(serve.base_url())
    token = client.business()
    wav = sized_wav(20_000)
    hung = [f"CA-RH-{i}" for i in range(4)]
    healthy = [f"CA-RO-{i}" for i in range(12)]
    put_calls(client, token, upstream, hung, wav, hang=True)
    put_calls(client, token, upstream, healthy, wav)

    answers: dict[str, list] = {sid: [] for sid in hung + healthy}
    deadline = time.monotonic() + 15

    def player(sid: str) -> None:  # polls every 0.2 s until an answer other than 202
        while time.monotonic() < deadline:
            answer = client.play(token, sid)
            answers[sid].append(answer)
            if answer.status != 202:
                return
            time.sleep(0.2)

    try:
        threads = [threading.Thread(target=player, args=(sid,), daemon=True) for sid in hung]
        for thread in threads:
            thread.start()
        time.sleep(0.8)  # the hung calls have retried once with the counter up
        redis_server.kill()
        threads += [threading.Thread(target=player, args=(sid,), daemon=True) for sid in healthy]
        for thread in threads[len(hung):]:
            thread.start()
        time.sleep(1.5)
        in_outage = _metric(client, "recsvc_counter_fallback")
        redis_server.start()
        for thread in threads:
            thread.join(20)
    finally:
        upstream.hang_all = False
        upstream.release()

    for sid in healthy:
        last = answers[sid][-1]
        assert last.status == 200 and last.body == wav, (sid, last.status, last.body[:200])
    for sid in hung:
        last = answers[sid][-1]
        assert last.status == 500, (sid, last.body)
        assert (last.json["error"], last.json["reason"]) == ("worker_not_processing_queue", "retry limit reached")
        jobs = client.jobs(sid)
        assert len(jobs) <= 1 + 3, f"{sid} retried more than max-retry-attempts within the window: {len(jobs) - 1}"
        assert max(job["attempt"] for job in jobs) == 3
    for sid, seen in answers.items():
        wrong = [a for a in seen if a.status >= 500 and a.json.get("reason") != "retry limit reached"]
        assert not wrong, (sid, [a.body for a in wrong])
    assert in_outage == 1
    assert _metric(client, "recsvc_counter_fallback") == 0
    assert _metric(client, "recsvc_counter_outages_total") == 1
    warnings = [line for line in serve.lines if "retry counter" in line]
    assert len(warnings) == 2, warnings
