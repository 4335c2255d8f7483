"""Three `serve` nodes behind the real nginx (docs/deploy.md "Several machines"), on one store.

Each test starts tools/cluster.py's Cluster: a redis-server of its own (kept
in an append-only file), three ``python -m recsvc serve`` processes sharing
one data dir, and nginx running the documented block, round-robin, all on
127.0.0.1; the SQLite variant runs the same nodes on the data dir's SQLite
database instead (several processes of one machine). Players ask nginx,
never a node, so consecutive requests of one call land on different nodes.
The faults are real: a hung upstream, kill -9 of the node running a
download, kill -9 of redis-server and its restart from its append-only file.
Recovery times are measured and printed (``-s``), and asserted only against
generous bounds: the figures are in docs/deploy.md "What each failure costs".
"""

from __future__ import annotations

import io
import re
import threading
import time

import pytest

from conftest import request
from redis_server import REDIS_MISSING
from recsvc.demo.audio import sized_wav
from recsvc.kit.checks import CHECKS
from recsvc.kit.conformance import main as conformance_main
from tools.cluster import Cluster, nginx_binary

HEARTBEAT = 0.2          # --heartbeat-interval of every node: a lost node is noticed within 3 of these
PLAY = "/api/recordings/file/"
FAST_RETRIES = ("--retry-after", "1", "--recovery-retry-after", "1")


def needs(store: str) -> None:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed: apt-get install nginx-light")
    if store == "redis" and REDIS_MISSING:
        pytest.skip("redis-server is not installed: apt-get install redis-server")


@pytest.fixture
def make_cluster(tmp_path):
    """``make_cluster(store, *flags)``: a started Cluster, stopped at teardown."""
    started: list[Cluster] = []

    def start(store: str, *flags: str) -> Cluster:
        needs(store)
        cluster = Cluster(tmp_path / f"cluster-{store}", store=store, heartbeat=HEARTBEAT, extra_flags=flags)
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


def node_of_worker(cluster: Cluster, worker_id: str) -> int:
    """The node whose process runs ``worker_id`` (host:pid:tag)."""
    pid = int(worker_id.split(":")[-2])
    nodes = [i for i in range(len(cluster.node_urls)) if cluster.node_pid(i) == pid]
    assert nodes, f"no node has pid {pid} (worker {worker_id})"
    return nodes[0]


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
    cluster = make_cluster(store, "--job-timeout", "1", "--download-timeout", "30", *FAST_RETRIES)
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
    player.put_call("CA-KILLED", upstream.set("/killed.wav", body=wav, hang=True))
    assert player.play("CA-KILLED").status == 202
    assert upstream.wait_for_hits("/killed.wav", 1, timeout=10), "no node started the download"
    running = player.jobs("CA-KILLED")[0]
    assert running["status"] == "running", running
    victim = node_of_worker(cluster, running["worker_id"])

    upstream.set("/killed.wav", body=wav)  # the upstream is healthy again: only the node is lost
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
    assert node_of_worker(cluster, jobs[0]["worker_id"]) != victim
    # 3 heartbeat intervals plus one download, with room for a loaded 2-core machine.
    assert recovery < 3 * HEARTBEAT + 10, recovery


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
