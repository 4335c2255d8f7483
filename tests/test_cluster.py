"""Three `serve` nodes behind the real nginx (docs/deploy.md "Several machines"), on one store.

Each test starts tools/cluster.py's Cluster: a redis-server of its own (kept
in an append-only file), three ``python -m recsvc serve`` processes sharing
one data dir, and nginx running the documented block, round-robin, all on
127.0.0.1; the SQLite variant runs the same nodes on the data dir's SQLite
database instead (several processes of one machine). Players ask nginx,
never a node, so consecutive requests of one call land on different nodes.
The faults are real: a hung upstream, kill -9 or SIGSTOP of the node running
a download, kill -9 of redis-server and its restart from its append-only
file, a Redis restarted empty, a master killed and its replica promoted
behind docs/deploy.md's HAProxy block, and all at once under 200 players.
The conformance kit runs against the cluster unchanged. Recovery times are
measured and printed (``-s``), and asserted only against generous bounds:
the figures are in docs/deploy.md "What each failure costs".
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import request
from redis_server import REDIS_MISSING
from recsvc.demo.audio import sized_wav
from recsvc.kit.checks import CHECKS
from recsvc.kit.conformance import main as conformance_main
from recsvc.player.client import RecordingClient, RecordingError
from recsvc.storage.redis_store import RedisStore
from tools.cluster import Cluster, doc_block, nginx_binary, replace_once
from tools.redis_server import RedisServer, free_port

HEARTBEAT = 0.2          # --heartbeat-interval of every node: a lost node is noticed within 3 of these
PLAY = "/api/recordings/file/"
HAPROXY = "/usr/sbin/haproxy"
FAST_RETRIES = ("--retry-after", "1", "--recovery-retry-after", "1")


def needs(store: str) -> None:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed: apt-get install nginx-light")
    if store != "sqlite" and REDIS_MISSING:
        pytest.skip("redis-server is not installed: apt-get install redis-server")


@pytest.fixture
def make_cluster(tmp_path):
    """``make_cluster(store, *flags)``: a started Cluster, stopped at teardown."""
    started: list[Cluster] = []

    def start(store: str, *flags: str) -> Cluster:
        needs(store)
        cluster = Cluster(tmp_path / f"cluster-{len(started)}", store=store, heartbeat=HEARTBEAT,
                          extra_flags=flags)
        started.append(cluster)
        cluster.start()
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


class Player:
    """Requests through nginx in the contract's words, with the cluster's admin token."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.base_url = cluster.base_url
        answer = self.admin("POST", "/admin/businesses", {"name": "acme"})
        assert answer.status == 201, answer.body
        self.token, self.business_id = answer.json["token"], answer.json["id"]

    def admin(self, method: str, path: str, body=None):
        return request(self.base_url, method, path, token=self.cluster.admin_token, body=body)

    def put_call(self, call_sid: str, url: str) -> None:
        answer = request(self.base_url, "PUT", f"/api/calls/{call_sid}", token=self.token, body={"recording_url": url})
        assert answer.status == 201, answer.body

    def play(self, call_sid: str):
        return request(self.base_url, "GET", PLAY + call_sid, token=self.token)

    def jobs(self, call_sid: str) -> list[dict]:
        return self.admin("GET", f"/admin/jobs?call_sid={call_sid}").json["jobs"]

    def retries(self, call_sid: str) -> int:
        answer = self.admin("GET", f"/admin/retry-counters/{self.business_id}/{call_sid}")
        assert answer.status == 200, answer.body
        return answer.json["attempts"]

    def play_to_the_end(self, call_sid: str, seconds: float, seen: list | None = None):
        """Poll like a player (Retry-After shortened to 0.05 s; 503s retried) until the answer is not 202
        or 503; every answer's status and body is appended to ``seen``. None when ``seconds`` pass first."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            answer = self.play(call_sid)
            if seen is not None:
                seen.append(answer)
            if answer.status not in (202, 503):
                return answer
            time.sleep(0.05)
        return None


def download_hung_on_a_node(player: Player, upstream, call_sid: str, wav: bytes) -> int:
    """A call whose download hangs on one node, its job running; that node's index. The upstream is
    made healthy before returning, so only the node holds the download back."""
    path = f"/{call_sid}.wav"
    player.put_call(call_sid, upstream.set(path, body=wav, hang=True))
    assert player.play(call_sid).status == 202
    assert upstream.wait_for_hits(path, 1, timeout=10), "no node started the download"
    running = player.jobs(call_sid)[0]
    assert running["status"] == "running", running
    upstream.set(path, body=wav)
    return player.cluster.node_of_worker(running["worker_id"])


def plays_logged(cluster: Cluster, call_sid: str) -> list[int]:
    """How many play requests of ``call_sid`` each node's access log shows."""
    line = re.compile(rf" GET {re.escape(PLAY + call_sid)} \d{{3}} ")
    return [len(line.findall(cluster.node_log(i))) for i in range(len(cluster.node_urls))]


STORES = [pytest.param("redis", id="redis"), pytest.param("sqlite", id="sqlite")]


# ---------------------------------------------------------------- one job, however many nodes ask


@pytest.mark.parametrize("store", STORES)
def test_500_simultaneous_first_requests_over_three_nodes_create_one_job_and_count_no_retry(
        make_cluster, upstream, store):
    cluster = make_cluster(store)
    player = Player(cluster)
    wav = sized_wav(20_000, seed="crowd")
    player.put_call("CA-CROWD", upstream.set("/crowd.wav", body=wav, hang=True))
    crowd = 500
    barrier = threading.Barrier(crowd)
    answers: list = [None] * crowd

    def first_request(i: int) -> None:
        barrier.wait(30)
        answers[i] = player.play("CA-CROWD")

    threads = [threading.Thread(target=first_request, args=(i,), daemon=True) for i in range(crowd)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    statuses = sorted({answer.status for answer in answers if answer is not None})
    assert all(answer is not None for answer in answers) and statuses == [202], statuses
    assert {answer.json["attempt"] for answer in answers} == {0}
    assert len({answer.json["job_id"] for answer in answers}) == 1
    shares = plays_logged(cluster, "CA-CROWD")
    print(f"\n[{store}] 500 first requests per node: {shares}")
    assert sum(shares) == crowd and min(shares) >= crowd // 10, f"nginx did not spread the requests: {shares}"
    assert len(player.jobs("CA-CROWD")) == 1
    assert player.retries("CA-CROWD") == 0

    upstream.release()  # the one download now completes, once
    done = player.play_to_the_end("CA-CROWD", 20)
    assert done is not None and done.status == 200 and done.body == wav
    assert [job["status"] for job in player.jobs("CA-CROWD")] == ["completed"]
    assert upstream.hits("/crowd.wav") == 1


# ---------------------------------------------------------------- a hung upstream fails fast on every node


@pytest.mark.parametrize("store", STORES)
def test_a_hung_upstream_answers_attempts_0_to_3_then_500_with_four_jobs_whichever_node_answers(
        make_cluster, upstream, store):
    cluster = make_cluster(store, "--job-timeout", "0.5", "--download-timeout", "30", *FAST_RETRIES)
    player = Player(cluster)
    player.put_call("CA-HUNG", upstream.set("/hung.wav", hang=True))
    seen: list = []
    try:
        last = player.play_to_the_end("CA-HUNG", 30, seen)
    finally:
        upstream.release()

    assert last is not None, f"still 202 after 30 s: {player.jobs('CA-HUNG')}"
    assert last.status == 500 and last.json["error"] == "worker_not_processing_queue", last.body
    assert last.json["reason"] == "retry limit reached" and last.json["attempts"] == 3
    assert last.header("Retry-After") is not None
    attempts = [answer.json["attempt"] for answer in seen if answer.status == 202]
    assert sorted(set(attempts)) == [0, 1, 2, 3] and attempts == sorted(attempts), attempts
    jobs = player.jobs("CA-HUNG")
    assert len(jobs) == 4 and {job["error_code"] for job in jobs} == {"stuck"}, jobs
    assert player.retries("CA-HUNG") == 3
    shares = plays_logged(cluster, "CA-HUNG")
    assert all(shares), f"every node should have answered some of the plays: {shares}"
    # Asked again, every node refuses the same way and creates nothing.
    for _ in range(len(cluster.node_urls)):
        again = player.play("CA-HUNG")
        assert again.status == 500 and again.json["error"] == "worker_not_processing_queue"
    assert len(player.jobs("CA-HUNG")) == 4


# ---------------------------------------------------------------- a node killed mid-download


@pytest.mark.parametrize("store", STORES)
def test_kill_9_of_the_node_running_a_download_is_recovered_by_another_node_with_the_exact_bytes(
        make_cluster, upstream, store):
    cluster = make_cluster(store, *FAST_RETRIES)
    player = Player(cluster)
    wav = sized_wav(200_000, seed="killed")
    victim = download_hung_on_a_node(player, upstream, "CA-KILLED", wav)

    killed_at = time.monotonic()
    cluster.kill_node(victim)
    done = player.play_to_the_end("CA-KILLED", 20)
    recovery = time.monotonic() - killed_at
    print(f"\n[{store}] kill -9 of node {victim} mid-download -> 200 through nginx after {recovery:.2f} s "
          f"(heartbeat interval {HEARTBEAT} s)")

    assert done is not None and done.status == 200, (done and done.body, player.jobs("CA-KILLED"))
    assert done.body == wav
    jobs = player.jobs("CA-KILLED")
    assert [job["status"] for job in jobs] == ["completed", "failed"], jobs
    assert "heartbeat lost" in (jobs[1]["error_message"] or ""), jobs[1]
    assert cluster.node_of_worker(jobs[0]["worker_id"]) != victim
    # 3 heartbeat intervals plus one download, with room for a loaded 2-core machine.
    assert recovery < 3 * HEARTBEAT + 10, recovery


@pytest.mark.parametrize("store", STORES)
def test_a_frozen_node_loses_its_download_to_another_and_abandons_it_when_it_wakes(make_cluster, upstream, store):
    """SIGSTOP: the node still holds its sockets, so nginx would wait proxy_read_timeout on it; players
    here ask the other nodes, as nginx does once the frozen one has timed out."""
    cluster = make_cluster(store, *FAST_RETRIES)
    player = Player(cluster)
    wav = sized_wav(100_000, seed="frozen")
    victim = download_hung_on_a_node(player, upstream, "CA-FROZEN", wav)
    others = [url for i, url in enumerate(cluster.node_urls) if i != victim]

    os.kill(cluster.node_pid(victim), signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        done, asked = None, 0
        while done is None and time.monotonic() < frozen_at + 20:
            answer = request(others[asked % 2], "GET", PLAY + "CA-FROZEN", token=player.token)
            asked += 1
            if answer.status == 200:
                done = answer
            else:
                assert answer.status == 202, answer.body
                time.sleep(0.05)
        recovery = time.monotonic() - frozen_at
    finally:
        os.kill(cluster.node_pid(victim), signal.SIGCONT)
    upstream.release()  # the frozen node's own request now gets its bytes, too late to count
    print(f"\n[{store}] SIGSTOP of node {victim} mid-download -> 200 from another node after {recovery:.2f} s")

    assert done is not None and done.body == wav, player.jobs("CA-FROZEN")
    others_log = "".join(cluster.node_log(i) for i in range(3) if i != victim)
    assert re.search(r"\[STUCK\] job=\d+ call_sid=CA-FROZEN reason=worker heartbeat lost", others_log), others_log
    woke = time.monotonic()
    while "no longer ours" not in cluster.node_log(victim) and time.monotonic() < woke + 10:
        time.sleep(0.05)
    assert "no longer ours" in cluster.node_log(victim), cluster.node_log(victim)[-2000:]
    for _ in range(len(cluster.node_urls)):  # through nginx, the thawed node included
        again = player.play("CA-FROZEN")
        assert again.status == 200 and again.body == wav
    assert [job["status"] for job in player.jobs("CA-FROZEN")] == ["completed", "failed"]


# ---------------------------------------------------------------- redis-server killed and restarted


def test_redis_killed_and_restarted_answers_503_meanwhile_then_every_call_completes(make_cluster, upstream):
    cluster = make_cluster("redis", *FAST_RETRIES)
    player = Player(cluster)
    wav = sized_wav(50_000, seed="outage")
    calls = [f"CA-OUT-{i}" for i in range(12)]
    for sid in calls:
        player.put_call(sid, upstream.set(f"/{sid}.wav", body=wav, delay=0.5))
    for sid in calls[:6]:  # half of them are downloading when Redis goes
        assert player.play(sid).status == 202

    cluster.redis.kill()
    killed_at = time.monotonic()
    during = [player.play(sid) for sid in calls]
    assert {answer.status for answer in during} == {503}, [answer.body for answer in during]
    for answer in during:
        assert answer.json["error"] == "storage_unavailable", answer.body
        assert int(answer.header("Retry-After")) >= 1
    ready = [request(url, "GET", "/readyz").status for url in cluster.node_urls]
    assert ready == [503, 503, 503], ready

    results: dict = {}

    def play(sid: str) -> None:
        results[sid] = player.play_to_the_end(sid, 30)

    players = [threading.Thread(target=play, args=(sid,), daemon=True) for sid in calls]
    for thread in players:
        thread.start()
    time.sleep(1.0)  # players meet the outage for a second
    cluster.redis.start()  # same port, same append-only file
    restarted_at = time.monotonic()
    for thread in players:
        thread.join(40)
    recovered = time.monotonic() - restarted_at
    print(f"\n[redis] redis-server down {restarted_at - killed_at:.2f} s; every call played "
          f"{recovered:.2f} s after its restart; retries {sum(player.retries(sid) for sid in calls)}, "
          f"jobs {sum(len(player.jobs(sid)) for sid in calls)} for {len(calls)} calls")

    for sid in calls:
        answer = results.get(sid)
        assert answer is not None and answer.status == 200, (sid, answer and answer.body, player.jobs(sid))
        assert answer.body == wav
        assert player.retries(sid) <= 3
        assert len(player.jobs(sid)) <= 4


def test_a_redis_restarted_without_its_data_is_503_holds_no_recsvc_data_on_every_node(make_cluster, upstream):
    cluster = make_cluster("redis", *FAST_RETRIES)
    player = Player(cluster)
    player.put_call("CA-LOST", upstream.set("/lost.wav", body=sized_wav(10_000, seed="lost")))
    assert player.play_to_the_end("CA-LOST", 20).status == 200

    cluster.redis.kill()
    for leftover in cluster.redis.workdir.glob("appendonly*"):  # its persistence gone with the machine
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    cluster.redis.start()

    for _ in range(len(cluster.node_urls)):
        lost = player.play("CA-LOST")
        assert (lost.status, lost.json["error"]) == (503, "storage_unavailable"), lost.body
        assert lost.header("Retry-After") is not None
    ready = [request(url, "GET", "/readyz") for url in cluster.node_urls]
    assert [answer.status for answer in ready] == [503, 503, 503]
    assert all("holds no recsvc data" in answer.json["reason"] for answer in ready), [a.body for a in ready]


def test_a_claim_whose_reply_was_lost_is_given_back_within_a_few_heartbeats(make_cluster, upstream):
    """redis-server killed between running a node's claim and sending the reply leaves the job running
    under that node's live worker, which never got it. Here the claim script is run for the worker by
    hand, exactly as the node would have, and its reply dropped."""
    cluster = make_cluster("redis", *FAST_RETRIES)
    player = Player(cluster)
    wav = sized_wav(10_000, seed="ghost")
    store = RedisStore(cluster.redis.url(0))
    try:
        ghost = None
        for n in range(10):  # a node's idle worker may claim the job first: then try another call
            sid, url = f"CA-GHOST-{n}", upstream.set(f"/ghost-{n}.wav", body=wav)
            player.put_call(sid, url)
            worker_id = next(iter(cluster.redis.cli("SMEMBERS", "recsvc:workers").split()))
            with store.writing() as tx:
                job_id = tx.insert_job(player.business_id, sid, url, 0, time.time())
                claimed = tx.claim_next_job(worker_id, time.time())
            if claimed is not None and claimed.id == job_id:
                ghost = sid
                break
        assert ghost is not None, "every job was claimed by a node first"
    finally:
        store.close()

    done = player.play_to_the_end(ghost, 3 * HEARTBEAT + 3)
    assert done is not None and done.status == 200 and done.body == wav, player.jobs(ghost)


class RedisFailover:
    """A master, its replica and HAProxy in front running docs/deploy.md's ``haproxy-redis`` block."""

    def __init__(self, workdir: Path):
        self.password = "failover-password-1"
        for name in ("master", "replica"):
            (workdir / name).mkdir()
        self.master = RedisServer(workdir / "master", password=self.password, appendonly=True)
        self.replica = RedisServer(workdir / "replica", password=self.password, appendonly=True)
        self.replica.extra_args = ("--replicaof", "127.0.0.1", str(self.master.port), "--masterauth", self.password)
        self.port = free_port()
        block = doc_block("haproxy-redis", "haproxy")
        block = replace_once(block, "bind 127.0.0.1:6379", f"bind 127.0.0.1:{self.port}")
        block = replace_once(block, "AUTH\\ <password>\\r\\n", f"AUTH\\ {self.password}\\r\\n")
        block = replace_once(block, "10.0.0.21:6379 ", f"127.0.0.1:{self.master.port} ")
        block = replace_once(block, "10.0.0.22:6379 ", f"127.0.0.1:{self.replica.port} ")
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(f"global\n    maxconn 512\n\n{block}\n")
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        with open(self.workdir / "haproxy.out", "ab") as log_file:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=log_file,
                                         stderr=subprocess.STDOUT)
        # HAProxy counts every server up until its checks say otherwise: wait for the replica to be down.
        deadline = time.monotonic() + 15
        while "redis_master/redis2 is DOWN" not in (self.workdir / "haproxy.out").read_text():
            assert time.monotonic() < deadline, (self.workdir / "haproxy.out").read_text()[-2000:]
            time.sleep(0.1)
        assert self.served_by() == self.master.port

    def served_by(self) -> int | None:
        """The port of the Redis server HAProxy sends a new connection to, or None."""
        done = subprocess.run(["redis-cli", "-p", str(self.port), "--no-auth-warning", "-a", self.password,
                               "INFO", "server"], capture_output=True, text=True, timeout=10)
        found = re.search(r"^tcp_port:(\d+)", done.stdout, re.M)
        return int(found[1]) if found else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.master.kill()
        self.replica.kill()


@pytest.fixture
def redis_failover(tmp_path):
    needs("redis")
    if not os.access(HAPROXY, os.X_OK):
        pytest.skip("haproxy is not installed: apt-get install haproxy")
    (tmp_path / "failover").mkdir()
    pair = RedisFailover(tmp_path / "failover")
    yield pair
    pair.stop()


def test_a_redis_failover_behind_the_documented_haproxy_check_keeps_every_call(redis_failover, make_cluster,
                                                                               upstream):
    """The master is killed and the replica promoted, as Sentinel would; the nodes' one address follows."""
    redis_failover.start()
    cluster = make_cluster(redis_failover.url, *FAST_RETRIES)
    player = Player(cluster)
    wav = sized_wav(30_000, seed="before")
    player.put_call("CA-BEFORE", upstream.set("/before.wav", body=wav))
    assert player.play_to_the_end("CA-BEFORE", 20).status == 200
    assert redis_failover.master.cli("WAIT", "1", "5000") == "1", "the replica did not take the writes"

    redis_failover.master.kill()
    failed_at = time.monotonic()
    redis_failover.replica.cli("REPLICAOF", "NO", "ONE")
    seen: list = []
    again = player.play_to_the_end("CA-BEFORE", 30, seen)
    took = time.monotonic() - failed_at
    print(f"\n[redis] master killed, replica promoted: the cached call played again through HAProxy after "
          f"{took:.2f} s ({sum(answer.status == 503 for answer in seen)} answers 503 meanwhile)")

    assert again is not None and again.status == 200 and again.body == wav, seen[-1].body if seen else None
    assert {answer.status for answer in seen} <= {200, 503}
    assert {answer.json["error"] for answer in seen if answer.status == 503} <= {"storage_unavailable"}
    assert redis_failover.served_by() == redis_failover.replica.port
    after = sized_wav(30_000, seed="after")
    player.put_call("CA-AFTER", upstream.set("/after.wav", body=after))
    done = player.play_to_the_end("CA-AFTER", 20)
    assert done is not None and done.status == 200 and done.body == after


# ---------------------------------------------------------------- the conformance kit, unchanged


@pytest.mark.parametrize("store", STORES)
def test_the_conformance_kit_passes_against_the_cluster_through_nginx(make_cluster, store):
    cluster = make_cluster(store)
    player = Player(cluster)
    out = io.StringIO()
    status = conformance_main(["--base-url", cluster.base_url, "--token", player.token,
                               "--admin-token", cluster.admin_token], stdout=out, stderr=out)
    text = out.getvalue()
    assert status == 0, text
    assert f"{len(CHECKS)} passed, 0 failed, 0 skipped" in text, text


# ---------------------------------------------------------------- a drill: players, a node and Redis lost at once


def test_200_players_through_a_node_kill_and_a_redis_restart_all_end_with_their_exact_recording(
        make_cluster, upstream):
    """200 players of recsvc.player.client (CONTRACT 7: Retry-After, backoff on 503, Prefer: wait), each
    on a call of its own, while one node is kill -9'd and redis-server is killed and restarted."""
    cluster = make_cluster("redis", *FAST_RETRIES)
    player = Player(cluster)
    calls = {f"CA-DRILL-{i:03d}": sized_wav(8_000 + i, seed=f"drill-{i}") for i in range(200)}
    for sid, wav in calls.items():
        player.put_call(sid, upstream.set(f"/{sid}.wav", body=wav, delay=0.2))
    ended: dict = {}

    def play(sid: str) -> None:
        client = RecordingClient(cluster.base_url, player.token, max_wait=25, request_timeout=10)
        try:
            ended[sid] = client.wait_for_recording(sid)
        except RecordingError as stop:
            ended[sid] = stop

    started = time.monotonic()
    players = [threading.Thread(target=play, args=(sid,), daemon=True) for sid in calls]
    for thread in players:
        thread.start()
    time.sleep(1.0)
    cluster.kill_node(1)
    time.sleep(1.0)
    cluster.redis.kill()
    time.sleep(1.5)
    cluster.redis.start()
    for thread in players:
        thread.join(max(1.0, started + 40 - time.monotonic()))
    took = time.monotonic() - started

    assert not [thread for thread in players if thread.is_alive()], "a player never stopped"
    stopped = {sid: f"{end.outcome}: {end.message}" for sid, end in ended.items() if isinstance(end, RecordingError)}
    played = [sid for sid, end in ended.items() if not isinstance(end, RecordingError)]
    print(f"\n[redis] 200 players, node 1 killed at 1 s, Redis down 2-3.5 s: {len(played)} played, "
          f"{len(stopped)} stopped, all ended after {took:.1f} s; "
          f"retries {sum(player.retries(sid) for sid in calls)}")
    assert not stopped, stopped
    assert all(ended[sid].body == calls[sid] for sid in calls), "a player got the wrong bytes"
    assert all(player.retries(sid) <= 3 for sid in calls)
