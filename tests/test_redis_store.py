"""The Redis store's own promises (--store redis://), beside the contract tests that run on both stores.

Real redis-server, real sockets. Where a rule is about Redis's own clock (the
retry window is a TTL, a worker's lease expires) the test uses real short
durations, bounded to seconds; everything else uses the fake clock.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, FakeClock, Harness, make_settings, wait_until
from contract_steps import at_once, call_with_recording, jobs_of, new_business, retry_counter, wait_for_job, \
    wait_until_running
from redis_server import RedisServer, free_port

from recsvc.contract.clock import system_clock
from recsvc.core.worker import new_worker_id
from recsvc.demo.audio import tune_for
from recsvc.run.app import App, StartError
from recsvc.storage import redis_keys as K
from recsvc.storage.redis_store import ActiveJobExists, RedisStore


@pytest.fixture
def nodes(tmp_path, redis_server, upstream):
    """``nodes(n, **settings)``: n recsvc apps on one Redis database and one data dir, as a cluster's nodes."""
    started: list[App] = []

    def build(n: int = 1, clock=None, **overrides) -> list[Harness]:
        clock = clock or FakeClock()
        harnesses = []
        for _ in range(n):
            settings = make_settings(tmp_path / "data", store=redis_server.url(3), **overrides)
            app = App(settings, clock=clock).start()
            started.append(app)
            harnesses.append(Harness(app, clock, upstream))
        return harnesses

    yield build
    upstream.hang_all = False
    upstream.release()
    for app in started:
        app.stop(grace=0.5)


def test_fifty_first_requests_over_two_nodes_create_one_job(nodes):
    a, = nodes(1, workers=1, download_timeout=10)
    b, = nodes(1, workers=0, clock=a.clock)
    acme = new_business(a)
    call_with_recording(a, acme, "CA50", hang=True)
    turns = itertools.count()

    answers = at_once(50, lambda: (a, b)[next(turns) % 2].play(acme.token, "CA50"))

    assert {answer.status for answer in answers} == {202}
    assert {answer.json["job_id"] for answer in answers} == {jobs_of(a, acme, "CA50")[0]["id"]}
    assert len(jobs_of(b, acme, "CA50")) == 1


def test_a_download_completed_by_one_node_is_served_by_the_other_with_the_exact_bytes(nodes):
    worker_node, web_node = nodes(1, workers=2)[0], nodes(1, workers=0)[0]
    acme = new_business(web_node)
    body = tune_for("shared")
    call_with_recording(web_node, acme, "CASHARE", body=body)

    assert web_node.play(acme.token, "CASHARE").status == 202
    job = wait_for_job(web_node, acme, "CASHARE")
    answer = web_node.play(acme.token, "CASHARE")

    assert job["status"] == "completed"
    assert answer.status == 200
    assert hashlib.sha256(answer.body).hexdigest() == hashlib.sha256(body).hexdigest()
    assert job["worker_id"] == worker_node.app.pool.worker_id


def test_a_job_ended_on_one_node_wakes_a_request_held_on_another_by_the_events_channel(nodes):
    web_node, = nodes(1, workers=0)
    web_node.app.waiters.poll_interval = 3600  # no polling: only an event can wake the held request
    worker_node, = nodes(1, workers=1, clock=web_node.clock)
    acme = new_business(web_node)
    call_with_recording(web_node, acme, "CAWAKE", hang=True)
    first = web_node.play(acme.token, "CAWAKE")
    wait_until_running(web_node, acme, "CAWAKE")
    assert web_node.upstream.wait_for_hits(f"/{acme.id}/CAWAKE.wav", 1)
    held: list = []
    waiter = threading.Thread(target=lambda: held.append(
        web_node.play(acme.token, "CAWAKE", headers={"Prefer": "wait=20"})))
    waiter.start()
    assert wait_until(lambda: web_node.app.waiters.held_count() == 1, 5)

    started = time.monotonic()
    web_node.upstream.release()
    waiter.join(15)

    assert first.status == 202
    assert held and held[0].status == 200
    assert time.monotonic() - started < 15  # woken, not timed out at wait=20
    assert worker_node.app.pool.worker_id == jobs_of(web_node, acme, "CAWAKE")[0]["worker_id"]


def test_a_job_queued_on_one_node_is_claimed_by_an_idle_worker_of_another_at_once(nodes):
    web_node, = nodes(1, workers=0)
    worker_node, = nodes(1, workers=1, clock=web_node.clock)
    worker_node.app.pool.poll_interval = 3600  # no polling: only the queued event can wake the thread
    time.sleep(worker_node.settings.heartbeat_interval + 0.2)  # the idle thread now waits on its condition for good
    acme = new_business(web_node)
    call_with_recording(web_node, acme, "CAQUEUE")

    assert web_node.play(acme.token, "CAQUEUE").status == 202

    assert wait_for_job(web_node, acme, "CAQUEUE", timeout=5)["status"] == "completed"


def test_the_retry_window_is_a_redis_ttl_attempts_0_to_3_then_500_then_a_fresh_cycle(nodes):
    window = 3.0
    a, b = nodes(2, clock=system_clock, workers=2, job_timeout=0.4, heartbeat_interval=0.1, retry_window=window,
                 download_timeout=10)
    acme = new_business(a)
    call_with_recording(a, acme, "CATTL", hang=True)

    for attempt in range(4):
        node = (a, b)[attempt % 2]
        answer = node.play(acme.token, "CATTL")
        assert (answer.status, answer.json["attempt"]) == (202, attempt), answer.body
        assert wait_until(lambda: jobs_of(a, acme, "CATTL")[0]["status"] == "failed", 5)
    refused = b.play(acme.token, "CATTL")
    ttl = retry_counter(a, acme, "CATTL")["ttl"]

    assert (refused.status, refused.json["error"]) == (500, "worker_not_processing_queue")
    assert 1 <= int(refused.header("Retry-After")) <= window
    assert 0 < ttl <= window
    assert len(jobs_of(a, acme, "CATTL")) == 4
    assert wait_until(lambda: retry_counter(a, acme, "CATTL")["ttl"] == -2, window + 2)
    again = a.play(acme.token, "CATTL")
    assert (again.status, again.json["attempt"]) == (202, 1)


def test_redis_down_is_503_storage_unavailable_and_it_works_again_when_redis_is_back(nodes, redis_server):
    a, = nodes(1, clock=system_clock, workers=1, heartbeat_interval=0.2)
    acme = new_business(a)
    call_with_recording(a, acme, "CADOWN")
    redis_server.cli("SAVE", db=3)
    redis_server.kill()

    down = a.play(acme.token, "CADOWN")

    assert down.status == 503
    assert down.json["error"] == "storage_unavailable"
    assert down.header("Retry-After") == str(int(a.settings.retry_after))
    redis_server.start()  # same port; the data it saved comes back
    assert wait_until(lambda: a.play(acme.token, "CADOWN").status in (200, 202), 0.2 * 5)
    assert wait_for_job(a, acme, "CADOWN")["status"] == "completed"
    assert a.play(acme.token, "CADOWN").status == 200


def test_scripts_forgotten_by_the_server_are_loaded_again(nodes, redis_server):
    a, = nodes(1, workers=0)
    acme = new_business(a)
    call_with_recording(a, acme, "CAFLUSH")
    redis_server.cli("SCRIPT", "FLUSH")

    assert a.play(acme.token, "CAFLUSH").status == 500  # row 7, no worker: it runs apply_play, which queues a job
    assert len(jobs_of(a, acme, "CAFLUSH")) == 1
    assert redis_server.cli("SCRIPT", "EXISTS", a.app.store._shas["play_snapshot"]) == "1"


def test_a_worker_whose_lease_expired_has_its_running_job_failed_by_any_node(nodes, redis_server):
    a, = nodes(1, workers=0)
    store = a.app.store
    acme = new_business(a)
    call_with_recording(a, acme, "CALEASE")
    assert a.play(acme.token, "CALEASE").status == 500  # row 7 (no worker yet) queues the job
    dead = new_worker_id()
    with store.writing() as tx:
        tx.upsert_worker(dead, "elsewhere", 1, 1, 0.2, a.clock())  # a lease of 3 x 0.2 s, never renewed
        job = tx.claim_next_job(dead, a.clock())
    assert job is not None and job.call_sid == "CALEASE"
    assert a.app.service.fail_lost_leases() == 0  # still leased right after the claim

    assert wait_until(lambda: redis_server.cli("EXISTS", K.worker(dead), db=3) == "0", 2)
    failed = a.app.service.fail_lost_leases()

    latest = jobs_of(a, acme, "CALEASE")[0]
    assert failed == 1
    assert (latest["status"], latest["error_code"]) == ("failed", "stuck")
    assert latest["error_message"].startswith("worker heartbeat lost")


def test_beats_missing_through_a_redis_outage_cost_no_retry_until_the_workers_could_write_again(nodes, redis_server):
    a, = nodes(1, workers=0, heartbeat_interval=0.5)  # this node's liveness window: 1.5 s of real time
    acme = new_business(a)
    call_with_recording(a, acme, "CAOUTAGE")
    assert a.play(acme.token, "CAOUTAGE").status == 500  # row 7 (no worker yet) queues the job
    elsewhere = new_worker_id()
    with a.app.store.writing() as tx:  # a worker of another node, leased for 3 x 5 s of real time
        tx.upsert_worker(elsewhere, "elsewhere", 1, 1, 5.0, a.clock())
        job = tx.claim_next_job(elsewhere, a.clock())
    redis_server.cli("SAVE", db=3)
    redis_server.kill()
    assert a.play(acme.token, "CAOUTAGE").json["error"] == "storage_unavailable"
    redis_server.start()  # the data it saved comes back
    a.clock.advance(16)  # the job's last beat is now older than 3 of its worker's intervals
    with a.app.store.writing() as tx:  # while a worker of a third node has written its beat already
        tx.upsert_worker(new_worker_id(), "another", 1, 1, 5.0, a.clock())

    excused = a.play(acme.token, "CAOUTAGE")
    assert (excused.status, excused.json["job_id"], excused.json["attempt"]) == (202, job.id, 0)
    assert a.app.service.cleanup() == 0
    assert retry_counter(a, acme, "CAOUTAGE")["attempts"] == 0

    assert wait_until(lambda: a.app.store.fault_within(a.settings.liveness_window) is None, 5)
    judged = a.play(acme.token, "CAOUTAGE")
    assert (judged.status, judged.json["attempt"]) == (202, 1)
    stuck = jobs_of(a, acme, "CAOUTAGE")[1]
    assert (stuck["id"], stuck["error_code"]) == (job.id, "stuck")
    assert stuck["error_message"].startswith("worker heartbeat lost")


def test_a_quiet_events_subscription_stays_open_and_a_frozen_redis_is_noticed(redis_server, caplog):
    store = RedisStore(redis_server.url(6))
    events: list[str] = []
    stopping = threading.Event()
    listener = threading.Thread(target=store.listen, args=(events.append, stopping, 0.1), daemon=True)
    listener.start()
    try:
        assert wait_until(lambda: events == ["subscribed"], 5)
        time.sleep(1.0)  # ten retry intervals with nothing on the channel
        subscriber = [line for line in redis_server.cli("CLIENT", "LIST").splitlines() if " sub=1 " in line]
        assert len(subscriber) == 1 and int(subscriber[0].split(" age=")[1].split()[0]) >= 1, subscriber
        redis_server.cli("PUBLISH", K.EVENTS, "ended:7")
        assert wait_until(lambda: events[-1:] == ["ended:7"], 5)
        assert "dropped the subscription" not in caplog.text

        os.kill(redis_server.process.pid, signal.SIGSTOP)  # the server stops answering; its socket stays open
        try:
            assert wait_until(lambda: "dropped the subscription" in caplog.text, 5)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert wait_until(lambda: events[-1:] == ["subscribed"], 10)
        redis_server.cli("PUBLISH", K.EVENTS, "ended:8")
        assert wait_until(lambda: events[-1:] == ["ended:8"], 5)
    finally:
        stopping.set()
        listener.join(5)
        store.close()


def test_one_active_job_per_call_is_kept_by_the_store_itself(redis_server):
    store = RedisStore(redis_server.url(5))
    try:
        with store.writing() as tx:
            tx.insert_job(1, "CA1", "http://127.0.0.1/a.wav", 0, 1.0)
            with pytest.raises(ActiveJobExists):
                tx.insert_job(1, "CA1", "http://127.0.0.1/a.wav", 0, 2.0)
            claimed = tx.claim_next_job("w", 3.0)
            assert tx.fail_job(claimed.id, "running", "stuck", "x", 4.0)
            assert not tx.fail_job(claimed.id, "running", "stuck", "x", 5.0)  # compare-and-set: once
            second = tx.insert_job(1, "CA1", "http://127.0.0.1/a.wav", 1, 6.0)
        assert second == claimed.id + 1
    finally:
        store.close()


def test_the_queue_keeps_its_order_and_a_retry_keeps_its_calls_place(redis_server):
    store = RedisStore(redis_server.url(6))
    try:
        with store.writing() as tx:
            first = tx.insert_job(1, "CA1", "http://127.0.0.1/1.wav", 0, 1.0)
            tx.insert_job(1, "CA2", "http://127.0.0.1/2.wav", 0, 2.0)
            claimed = tx.claim_next_job("w", 3.0)
            assert claimed.id == first
            tx.fail_job(first, "running", "stuck", "x", 4.0)
            retry = tx.insert_job(1, "CA1", "http://127.0.0.1/1.wav", 1, 5.0)  # queued after CA2, placed before it
            order = [tx.claim_next_job("w", 6.0).id, tx.claim_next_job("w", 7.0).id]
        assert order == [retry, first + 1]
    finally:
        store.close()


def test_a_paused_cluster_claims_nothing(redis_server):
    store = RedisStore(redis_server.url(7))
    try:
        with store.writing() as tx:
            tx.insert_job(1, "CA1", "http://127.0.0.1/1.wav", 0, 1.0)
            tx.set_paused(True)
            assert tx.claim_next_job("w", 2.0) is None
            tx.set_paused(False)
            assert tx.claim_next_job("w", 3.0) is not None
    finally:
        store.close()


def test_a_finished_download_whose_job_was_taken_away_is_not_recorded_and_its_file_is_removed(nodes):
    a, = nodes(1, workers=1, download_timeout=10)
    acme = new_business(a)
    call_with_recording(a, acme, "CALOST", hang=True)
    assert a.play(acme.token, "CALOST").status == 202
    job = wait_until_running(a, acme, "CALOST")
    assert a.upstream.wait_for_hits(f"/{acme.id}/CALOST.wav", 1)  # hung at the upstream now
    with a.app.store.writing() as tx:  # another node's sweeper failed it meanwhile
        assert tx.fail_job(job["id"], "running", "stuck", "worker heartbeat lost 1s ago", a.clock())
    a.app.pool.heartbeat = lambda: None  # so the worker finishes instead of abandoning

    a.upstream.release()

    folder = a.app.files.absolute(str(acme.id))
    assert wait_until(lambda: a.app.pool.busy == 0, 5)
    assert jobs_of(a, acme, "CALOST")[0]["status"] == "failed"
    with a.app.store.reading() as tx:
        assert tx.get_recording(acme.id, "CALOST") is None
    assert [name for name in os.listdir(folder) if name.startswith("CALOST")] == []


def test_a_redis_of_a_newer_layout_is_refused_at_start(tmp_path, redis_server):
    redis_server.cli("SET", K.LAYOUT, str(K.LAYOUT_VERSION + 1), db=8)

    with pytest.raises(StartError, match=r"the store redis://127\.0\.0\.1:\d+/8 cannot be used: .*newer"):
        App(make_settings(tmp_path / "data", store=redis_server.url(8)))


def test_an_unreachable_redis_at_start_is_one_line(tmp_path, redis_server):
    url = redis_server.url(9)
    redis_server.kill()

    with pytest.raises(StartError, match=r"cannot be used: cannot connect to redis://127\.0\.0\.1:\d+/9"):
        App(make_settings(tmp_path / "data", store=url))


def start_exit(tmp_path, store: str) -> tuple[int, str]:
    """``serve --store STORE`` that cannot start: its exit status and its one line."""
    done = subprocess.run([sys.executable, "-m", "recsvc", "serve", "--port", "0", "--store", store,
                           "--data-dir", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    return done.returncode, done.stderr


def test_a_redis_that_may_come_back_is_exit_status_1_and_a_refused_password_is_2(tmp_path, redis_server):
    (tmp_path / "data").mkdir()
    replica = RedisServer(tmp_path / "data", extra_args=("--replicaof", "127.0.0.1", str(free_port())))
    replica.start()  # a replica of a master that is not there: it refuses every write (READONLY)
    try:
        status, line = start_exit(tmp_path, replica.url())
        assert (status, line.count("\n")) == (1, 1) and "READONLY" in line, line
    finally:
        replica.kill()
    status, line = start_exit(tmp_path, replica.url())  # nothing listens there now
    assert (status, line.count("\n")) == (1, 1) and "cannot connect" in line, line

    locked = RedisServer(tmp_path / "data", password="the-right-one")
    locked.start()
    try:
        status, line = start_exit(tmp_path, locked.url(password="a-wrong-one"))
        assert (status, line.count("\n")) == (2, 1) and "refused AUTH or SELECT" in line, line
    finally:
        locked.kill()


def test_recsvc_jobs_reads_a_redis_store_as_the_admin_api_lists_it(nodes, redis_server):
    import io  # noqa: PLC0415
    from recsvc.run.jobs import main as jobs_main  # noqa: PLC0415
    a, = nodes(1, workers=0)
    acme = new_business(a)
    for sid in ("CAJ1", "CAJ2"):
        call_with_recording(a, acme, sid)
        a.play(acme.token, sid)
    out, err = io.StringIO(), io.StringIO()

    code = jobs_main(["--store", redis_server.url(3), "--call", "CAJ2"], stdout=out, stderr=err)

    assert (code, err.getvalue()) == (0, "")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "CAJ2" in lines[1] and "queued" in lines[1]
    assert str(jobs_of(a, acme, "CAJ2")[0]["id"]) == lines[1].split()[0]
    redis_server.kill()
    assert jobs_main(["--store", redis_server.url(3)], stdout=out, stderr=err) == 1
    assert err.getvalue().startswith(f"recsvc jobs: cannot read redis://127.0.0.1:{redis_server.port}/3: ")


def test_a_redis_that_lost_its_data_is_503_not_a_call_that_does_not_exist(nodes, redis_server):
    a, = nodes(1, workers=0)
    acme = new_business(a)
    call_with_recording(a, acme, "CALOSS")
    assert a.play(acme.token, "CALOSS").status == 500  # known: row 7, no worker
    redis_server.cli("FLUSHDB", db=3)  # as a restart without persistence leaves it

    lost = a.play(acme.token, "CALOSS")

    assert (lost.status, lost.json["error"]) == (503, "storage_unavailable")
    assert a.request("GET", "/readyz").status == 503
    App(make_settings(a.settings.data_dir, store=redis_server.url(3))).store.close()  # a node started again
    assert a.play(acme.token, "CALOSS").status == 401  # an empty store now: the business is gone, and says so
    again = new_business(a)
    assert again.id == acme.id  # ids start again: the old token must not reach the new business
    assert a.play(acme.token, "CALOSS").status == 401


def test_the_jobs_of_a_call_sid_are_listed_across_businesses_newest_first_with_filters(redis_server):
    store = RedisStore(redis_server.url(10))
    try:
        with store.writing() as tx:
            for business in (1, 2):
                tx.put_call(business, "CA1", f"http://127.0.0.1/{business}.wav", None, 1.0, False)
            tx.put_call(1, "CA2", "http://127.0.0.1/other.wav", None, 1.0, False)
            a = tx.insert_job(1, "CA1", "http://127.0.0.1/1.wav", 0, 10.0)
            tx.insert_job(1, "CA2", "http://127.0.0.1/other.wav", 0, 11.0)
            b = tx.insert_job(2, "CA1", "http://127.0.0.1/2.wav", 0, 12.0)
            tx.fail_job(a, "queued", "stuck", "x", 13.0)
            c = tx.insert_job(1, "CA1", "http://127.0.0.1/1.wav", 1, 14.0)
            assert [j.id for j in tx.jobs_filtered("CA1", None, None, None, 10)] == [c, b, a]
            assert [j.id for j in tx.jobs_filtered("CA1", None, "failed", None, 10)] == [a]
            assert [j.id for j in tx.jobs_filtered("CA1", None, None, 12.0, 10)] == [c, b]
            assert [j.id for j in tx.jobs_filtered("CA1", None, None, None, 1)] == [c]
            assert [j.id for j in tx.jobs_filtered("CA1", 1, None, None, 10)] == [c, a]
            assert [j.id for j in tx.jobs_filtered(None, 2, None, None, 10)] == [b]
    finally:
        store.close()
