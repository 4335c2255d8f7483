"""``recsvc migrate``: a stopped node's SQLite state moved into an empty Redis store answers as it did.

Real parts throughout: the source data dir is made by a real recsvc (an
in-process App on a fake clock for the stuck rules, then a real ``serve``
process killed with SIGKILL mid-download), the move is the real command, and
its target is a real redis-server. Each test moves its own copy of that data
dir into a database of its own. "As it did" is checked against a second copy
served by recsvc on SQLite at the same fake time: every answer is the same.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass

import pytest
from conftest import ADMIN_TOKEN, ROOT, FakeClock, Harness, make_settings, request, wait_until
from contract_steps import Business, call_with_recording, jobs_of, new_business, play_until_cached, wait_for_job, \
    wait_until_running
from processes import SERVE_ARGS, Client, Processes
from redis_server import REDIS_MISSING, RedisServer

from recsvc.contract.settings import parse_redis_url
from recsvc.core.twilio import compute_signature
from recsvc.core.worker import recover_orphans
from recsvc.demo.audio import tune_for
from recsvc.demo.fake_upstream import FakeUpstream
from recsvc.run.app import DATABASE_FILE, App
from recsvc.storage import migrate as migrate_module
from recsvc.storage.files import RecordingFiles
from recsvc.storage.redis_store import RedisStore
from recsvc.storage.resp import RedisConnection
from recsvc.storage.store import Store

pytestmark = pytest.mark.skipif(REDIS_MISSING, reason="redis-server is not installed: apt-get install redis-server")

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-migrate"
# The settings of every node of this module: a counter in the database (so that it has something to
# move), one retry per window, a window long enough to outlast the fake clock's head start.
NODE = dict(workers=1, max_retry_attempts=1, retry_window=3600, download_timeout=10)
SERVE_NODE = ("--workers", "1", "--max-retry-attempts", "1", "--retry-window", "3600", "--download-timeout", "10",
              "--counter", "sqlite://", "--heartbeat-interval", "0.2")
# Calls of the source, by business, and what each was left as.
ACME_CALLS = ("CADONE", "CA404", "CANOURL", "CAFAST", "CARUNSTUCK", "CAQSTUCK", "CAHBLOST", "CARUN", "CAQ1",
              "CAQ2")
GLOBEX_CALLS = ("CADONE",)


def run_migrate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recsvc", "migrate", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT, timeout=120)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as server:
        yield server
        server.hang_all = False
        server.release()


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), extra_args=("--databases", "64"))
    server.start()
    yield server
    server.kill()


_databases = itertools.count(1)


@pytest.fixture
def empty_db(redis) -> int:
    """A Redis database of this test's own, empty."""
    return next(_databases)


def wait_idle(h: Harness) -> None:
    assert wait_until(lambda: h.app.pool.busy == 0 and not jobs_running(h.base_url), 10), "downloads never ended"


def jobs_running(base_url: str) -> list[dict]:
    return request(base_url, "GET", "/admin/jobs?status=running", token=ADMIN_TOKEN).json["jobs"]


@dataclass(frozen=True)
class Source:
    data_dir: str
    acme: Business
    globex: Business
    refused_while_served: subprocess.CompletedProcess  # the move tried while its serve process ran


@pytest.fixture(scope="module")
def source(tmp_path_factory, upstream) -> Source:
    """A data dir as a node leaves it: every kind of call, job and counter, a paused queue, an orphan."""
    data_dir = tmp_path_factory.mktemp("source") / "data"
    # The fake clock starts well before real time, so everything it stamps is in the past of the
    # serve process and of the nodes that answer later.
    clock = FakeClock(start=time.time() - 2000)
    # Downloads that fail back off a fifth as long as under NODE's timeout (the backoff is a share of it).
    app = App(make_settings(data_dir, counter="sqlite://", heartbeat_interval=0.5, **{**NODE, "download_timeout": 6}),
              clock=clock).start()
    h = Harness(app, clock, upstream)
    try:
        acme, globex = new_business(h, "acme"), new_business(h, "globex")
        answer = h.admin("PUT", f"/admin/businesses/{acme.id}/twilio",
                         {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "media_format": "wav"})
        assert answer.status == 200, answer.body
        call_with_recording(h, acme, "CADONE")
        play_until_cached(h, acme, "CADONE")                              # row 4: cached
        assert h.put_call(globex.token, "CADONE", None).status == 201   # the same sid elsewhere: row 5
        call_with_recording(h, acme, "CA404", status=404)
        assert h.play(acme.token, "CA404").status == 202
        assert wait_for_job(h, acme, "CA404")["error_code"] == "upstream_not_found"  # row 6
        assert h.put_call(acme.token, "CANOURL", None).status == 201    # row 5
        call_with_recording(h, acme, "CAFAST", status=500)
        for _ in range(2):                                                # 10a, then 10b: the counter is at 1
            assert h.play(acme.token, "CAFAST").status == 202
            assert wait_for_job(h, acme, "CAFAST")["error_code"] == "download_failed"
        assert h.play(acme.token, "CAFAST").json["error"] == "recording_download_failed"  # 10c

        # Failed stuck, each reason: running too long and queued too long (the sweeper) ...
        call_with_recording(h, acme, "CARUNSTUCK", hang=True)
        assert h.play(acme.token, "CARUNSTUCK").status == 202
        wait_until_running(h, acme, "CARUNSTUCK")
        call_with_recording(h, acme, "CAQSTUCK")
        assert h.play(acme.token, "CAQSTUCK").json["job_status"] == "queued"  # the one thread is busy
        h.advance(301)
        assert h.admin("POST", "/admin/cleanup").json["marked_failed"] == 2
        upstream.release()
        wait_idle(h)
        # ... and a worker whose heartbeat was lost (the clock moves past 3 beats before it can beat).
        call_with_recording(h, acme, "CAHBLOST", hang=True)
        assert h.play(acme.token, "CAHBLOST").status == 202
        wait_until_running(h, acme, "CAHBLOST")
        for _ in range(20):
            clock.advance(2)
            if h.admin("POST", "/admin/cleanup").json["marked_failed"]:
                break
        upstream.release()
        wait_idle(h)
    finally:
        app.stop(grace=2)

    # A real serve process: a download running, jobs queued behind it, a retry that keeps its call's
    # early place in the queue, the queue paused; then it is killed mid-download.
    owner = Processes()
    try:
        serve = owner.start("serve", data_dir, *SERVE_ARGS, *SERVE_NODE)
        node = Client(serve.base_url())
        node.upstream = upstream  # for call_with_recording
        call_with_recording(node, acme, "CARUN", hang=True)
        assert node.play(acme.token, "CARUN").status == 202
        wait_until_running(node, acme, "CARUN")
        for sid in ("CAQ1", "CAQ2"):
            call_with_recording(node, acme, sid)
            assert node.play(acme.token, sid).json["job_status"] == "queued"
        retry = node.play(acme.token, "CAQSTUCK").json                   # 10b: counted, queued in its old place
        assert (retry["job_status"], retry["attempt"]) == ("queued", 1)
        assert node.admin("POST", "/admin/workers/pause").json == {"paused": True}
        while_served = run_migrate("--from", f"sqlite://{data_dir}", "--to", "redis://127.0.0.1:1/0")
        serve.kill9()
    finally:
        owner.close()
    time.sleep(3 * 0.2 + 0.3)  # the killed worker's heartbeat goes stale: 3 of its intervals
    return Source(str(data_dir), acme, globex, while_served)


def copy_of(source, tmp_path, name: str) -> str:
    target = tmp_path / name
    shutil.copytree(source.data_dir, target)
    return str(target)


def moved_copy(source, tmp_path, redis, db: int) -> tuple[str, str]:
    """A copy of the source moved into Redis database ``db`` by the command: (data dir, store URL)."""
    data_dir = copy_of(source, tmp_path, "moved")
    url = redis.url(db)
    done = run_migrate("--from", f"sqlite://{data_dir}", "--to", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("recsvc migrate: moved 2 businesses, 1 Twilio accounts, 11 calls, "), done.stdout
    assert "1 orphaned job(s) failed and replaced" in done.stdout
    assert redis.cli("GET", "recsvc:layout", db=db) == "1"  # marked, before any node could mark it
    return data_dir, url


def same_answer(sqlite_answer, redis_answer, what: str) -> None:
    """The same status, code and bytes; a retry counter's TTL (10c's retry_after) within a few seconds."""
    a, b = sqlite_answer, redis_answer
    assert a.status == b.status, (what, a.body, b.body)
    for name in ("content-type", "content-length", "etag", "last-modified", "www-authenticate", "allow"):
        assert a.header(name) == b.header(name), (what, name)
    if (a.header("content-type") or "").startswith("application/json"):
        ja, jb = a.json, b.json
        if ja.get("reason") == "retry limit reached":  # the counter's TTL: SQLite's by the fake clock, Redis's own
            assert abs(ja.pop("retry_after") - jb.pop("retry_after")) <= 5, what
            assert abs(int(a.header("retry-after")) - int(b.header("retry-after"))) <= 5, what
        else:
            assert a.header("retry-after") == b.header("retry-after"), what
        assert ja == jb, what
    else:
        assert a.body == b.body, what


def same_jobs(sqlite_node: Harness, redis_node: Harness, business: Business, sid: str) -> None:
    """The call's jobs, field by field. A worker's id is its process's own; the orphan was failed and
    its replacement made when the orphan rule ran (the SQLite node's start, the move), so those stamps differ."""
    a, b = jobs_of(sqlite_node, business, sid), jobs_of(redis_node, business, sid)
    assert len(a) == len(b), sid
    for newest_first, (ja, jb) in enumerate(zip(a, b)):
        ignored = {"worker_id"}
        if sid == "CARUN":
            ignored.add("created_at" if newest_first == 0 else "finished_at")
        assert {k: v for k, v in ja.items() if k not in ignored} == {k: v for k, v in jb.items() if k not in ignored}, sid


@pytest.fixture
def both_nodes(source, tmp_path, redis, empty_db, upstream):
    """(node on SQLite on one copy, node on Redis on a moved copy), both at the same fake time."""
    moved_dir, url = moved_copy(source, tmp_path, redis, empty_db)
    kept_dir = copy_of(source, tmp_path, "kept")
    now = time.time() + 1
    apps = []
    try:
        for settings in (make_settings(kept_dir, counter="sqlite://", **NODE), make_settings(moved_dir, store=url, **NODE)):
            apps.append(App(settings, clock=FakeClock(start=now)).start())
        yield tuple(Harness(app, app.clock, upstream) for app in apps)
    finally:
        upstream.hang_all = False
        upstream.release()
        for app in apps:
            app.stop(grace=0.5)


def test_a_node_on_the_moved_store_answers_every_call_as_the_sqlite_node_did(source, both_nodes, upstream):
    acme, globex = source.acme, source.globex
    sqlite_node, redis_node = both_nodes
    nodes = (sqlite_node, redis_node)
    calls = [(acme, sid) for sid in ACME_CALLS] + [(globex, sid) for sid in GLOBEX_CALLS]

    # Paused as it was left: no live worker (row 7) for every call that is not answered before it.
    same_answer(*(node.request("GET", "/readyz") for node in nodes), "readyz")
    assert redis_node.request("GET", "/readyz").json["reason"] == "workers are paused"
    for business, sid in calls:
        if sid in ("CADONE", "CA404", "CANOURL", "CARUN", "CAQ1", "CAQ2", "CAQSTUCK"):  # no job is created
            same_answer(*(node.play(business.token, sid) for node in nodes), f"paused {business.id}/{sid}")
    assert redis_node.play(acme.token, "CAQ1").json["reason"] == "no live worker"

    # Resumed with every download hanging: each node's worker takes the head of its queue.
    upstream.hang_all = True
    for node in nodes:
        assert node.admin("POST", "/admin/workers/resume").json == {"paused": False}
    assert wait_until(lambda: all(jobs_running(node.base_url) for node in nodes), 10)
    head = [jobs_running(node.base_url)[0] for node in nodes]
    assert head[0]["id"] == head[1]["id"] and head[0]["call_sid"] == "CAQSTUCK"  # the retry kept its place

    for business, sid in calls:
        same_answer(*(node.play(business.token, sid) for node in nodes), f"{business.id}/{sid}")
    assert redis_node.play(acme.token, "CADONE").status == 200
    assert redis_node.play(acme.token, "CAFAST").json["error"] == "recording_download_failed"
    assert redis_node.play(acme.token, "CA404").json["error"] == "recording_not_found_upstream"
    assert redis_node.play(globex.token, "CADONE").json["error"] == "no_recording_url"
    for business, sid in calls:
        same_jobs(sqlite_node, redis_node, business, sid)
    for sid in ("CAFAST", "CAQSTUCK", "CARUNSTUCK"):
        a, b = (node.admin("GET", f"/admin/retry-counters/{acme.id}/{sid}").json for node in nodes)
        assert a["attempts"] == b["attempts"] == 1 and abs(a["ttl"] - b["ttl"]) <= 5, sid
    messages = {sid: jobs_of(redis_node, acme, sid)[-1]["error_message"] for sid in ("CARUNSTUCK", "CAQSTUCK")}
    assert messages["CARUNSTUCK"].startswith("running ") and messages["CAQSTUCK"].startswith("queued ")
    assert jobs_of(redis_node, acme, "CAHBLOST")[-1]["error_message"].startswith("worker heartbeat lost")


def test_tokens_still_authenticate_and_new_calls_jobs_and_businesses_get_fresh_ids(source, both_nodes, upstream):
    acme, globex = source.acme, source.globex
    sqlite_node, redis_node = both_nodes
    nodes = (sqlite_node, redis_node)
    before = {job["id"] for node in nodes[1:] for job in node.admin("GET", "/admin/jobs?limit=200").json["jobs"]}

    assert redis_node.play(acme.token, "CADONE").status == 200
    assert redis_node.play("rs_" + "x" * 43, "CADONE").status == 401
    same_answer(*(node.play(globex.token, "CADONE") for node in nodes), "globex's own CADONE")
    upstream.hang_all = True
    for node in nodes:
        assert node.admin("POST", "/admin/workers/resume").json == {"paused": False}
    created = [node.admin("POST", "/admin/businesses", {"name": "initech"}).json for node in nodes]
    assert created[0]["id"] == created[1]["id"] == 3
    for node in nodes:
        call_with_recording(node, acme, "CANEW")
    new_jobs = [node.play(acme.token, "CANEW").json for node in nodes]
    assert new_jobs[0]["job_id"] == new_jobs[1]["job_id"] and new_jobs[1]["job_id"] not in before
    assert new_jobs[1]["job_id"] > max(before)
    # The Twilio account and its auth token moved: a callback signed with it is accepted as before.
    for node in nodes:
        fields = {"AccountSid": TWILIO_SID, "CallSid": "CATWILIO", "RecordingSid": "RE9", "RecordingStatus": "completed",
                  "RecordingUrl": upstream.url("/Recordings/RE9"), "RecordingDuration": "2"}
        signature = compute_signature(f"{node.base_url}/webhooks/twilio/recording-status", fields, TWILIO_TOKEN)
        answer = node.request("POST", "/webhooks/twilio/recording-status", body=urllib.parse.urlencode(fields).encode(),
                              headers={"Content-Type": "application/x-www-form-urlencoded",
                                       "X-Twilio-Signature": signature})
        assert answer.status == 201, answer.body


def test_the_queue_order_is_kept(source, tmp_path, redis, empty_db):
    _, url = moved_copy(source, tmp_path, redis, empty_db)
    kept_dir = copy_of(source, tmp_path, "kept")
    kept, moved = Store(os.path.join(kept_dir, DATABASE_FILE)), RedisStore(url)
    try:
        recover_orphans(kept, RecordingFiles(kept_dir), time.time)  # what the SQLite node's start does
        order = []
        for store in (kept, moved):
            with store.writing() as tx:
                tx.set_paused(False)
                claimed = iter(lambda: tx.claim_next_job("taker:1:test", time.time()), None)
                order.append([(job.id, job.call_sid) for job in claimed])
    finally:
        kept.close()
        moved.close()
    assert order[0] == order[1]
    assert [sid for _, sid in order[1]] == ["CAQSTUCK", "CARUN", "CAQ1", "CAQ2"]
    assert [job_id for job_id, _ in order[1]] != sorted(job_id for job_id, _ in order[1])  # not simply by id


def test_a_data_dir_that_a_live_node_serves_is_refused(source):
    line = one_error_line(source.refused_while_served)
    assert source.refused_while_served.returncode == 2
    assert "is in use" in line and "stop every recsvc serve and worker on it first" in line


@pytest.mark.parametrize("key", ["recsvc:layout", "recsvc:job:1", "recording_retry_attempts:1:CA1"])
def test_a_target_that_is_not_empty_is_refused_and_left_unchanged(source, tmp_path, redis, empty_db, key):
    data_dir = copy_of(source, tmp_path, "data")
    redis.cli("SET", key, "1", "EX", "500", db=empty_db)
    redis.cli("SET", "someone-else", "x", db=empty_db)
    before = every_key(redis.url(empty_db))

    done = run_migrate("--from", f"sqlite://{data_dir}", "--to", redis.url(empty_db))

    assert done.returncode == 2
    assert "is not empty" in one_error_line(done) and key in done.stderr
    assert every_key(redis.url(empty_db)) == before and int(redis.cli("TTL", key, db=empty_db)) > 400


def every_key(url: str) -> dict[bytes, bytes]:
    """Each key of a Redis database with its serialized value (DUMP)."""
    conn = RedisConnection(parse_redis_url(url), 5, 5)
    try:
        names = conn.pipeline([("KEYS", "*")])[0]
        return dict(zip(names, conn.pipeline([("DUMP", name) for name in names])))
    finally:
        conn.close()


def _not_sqlite(folder) -> str:
    (folder / DATABASE_FILE).write_text("not a database at all, but long enough to be read as one? no" * 20)
    return f"sqlite://{folder}"


def _other_sqlite(folder) -> str:
    import sqlite3
    conn = sqlite3.connect(folder / DATABASE_FILE)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    return f"sqlite://{folder}"


@pytest.mark.parametrize("make_args, says", [
    pytest.param(lambda d, r: [], "required", id="no-flags"),
    pytest.param(lambda d, r: ["--from", f"sqlite://{d}"], "required: --to", id="no-target"),
    pytest.param(lambda d, r: ["--from", str(d), "--to", r], "--from must be sqlite://DATA_DIR", id="from-no-scheme"),
    pytest.param(lambda d, r: ["--from", "sqlite://", "--to", r], "must name the data dir", id="from-empty"),
    pytest.param(lambda d, r: ["--from", f"sqlite://{d}/missing", "--to", r], "is not a folder", id="from-missing"),
    pytest.param(lambda d, r: ["--from", f"sqlite://{d}", "--to", r], "is not a recsvc data dir", id="from-empty-dir"),
    pytest.param(lambda d, r: ["--from", _not_sqlite(d), "--to", r], "cannot be read as a recsvc database",
                 id="from-not-sqlite"),
    pytest.param(lambda d, r: ["--from", _other_sqlite(d), "--to", r], "is not a recsvc database",
                 id="from-other-sqlite"),
    pytest.param(lambda d, r: ["--from", f"sqlite://{d}", "--to", "http://127.0.0.1:6379/0"], "not redis",
                 id="to-not-redis"),
    pytest.param(lambda d, r: ["--from", f"sqlite://{d}", "--to", "redis://127.0.0.1:99999/0"], "port",
                 id="to-bad-port"),
    pytest.param(lambda d, r: ["--from", f"sqlite://{d}", "--to", "redis://127.0.0.1:6379/x"], "database",
                 id="to-bad-db"),
    pytest.param(lambda d, r: ["--from", f"sqlite://{d}", "--to", r, "--bogus"], "unrecognized arguments",
                 id="unknown-flag"),
])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, redis, make_args, says):
    done = run_migrate(*make_args(tmp_path, redis.url(0)))
    assert done.returncode == 2
    line = one_error_line(done)
    assert line.startswith("recsvc migrate: error: ") and says in line, line


def test_an_unreachable_target_is_one_line_and_exit_status_2(source, tmp_path):
    from redis_server import free_port
    data_dir = copy_of(source, tmp_path, "data")
    done = run_migrate("--from", f"sqlite://{data_dir}", "--to", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2 and "cannot be reached" in one_error_line(done)


def test_a_node_that_starts_on_the_target_during_the_move_leaves_the_move_unapplied(source, tmp_path, redis,
                                                                                     empty_db, monkeypatch):
    data_dir = copy_of(source, tmp_path, "data")
    url = redis.url(empty_db)
    seen_midway: list[str] = []
    all_commands = migrate_module.move_commands

    def node_starts_midway(*args, **kwargs):
        for index, command in enumerate(all_commands(*args, **kwargs)):
            if index == 40:
                seen_midway.append(redis.cli("DBSIZE", db=empty_db))  # a reader sees nothing of the move yet
                RedisStore(url).close()                                  # a node's start marks the empty store
            yield command

    monkeypatch.setattr(migrate_module, "move_commands", node_starts_midway)
    with pytest.raises(migrate_module.MoveFailed, match="a node started on the target"):
        migrate_module.migrate(f"sqlite://{data_dir}", url, DATABASE_FILE)

    assert seen_midway == ["0"]
    assert sorted(redis.cli("KEYS", "*", db=empty_db).split()) == ["recsvc:control", "recsvc:layout"]


def test_an_unused_data_dir_moves_as_an_empty_store_that_nodes_accept(tmp_path, redis, empty_db):
    data_dir = tmp_path / "unused"
    data_dir.mkdir()
    Store(str(data_dir / DATABASE_FILE)).close()  # what a first start leaves before any request

    done = run_migrate("--from", f"sqlite://{data_dir}", "--to", redis.url(empty_db))

    assert done.returncode == 0, done.stderr
    moved = RedisStore(redis.url(empty_db))
    try:
        with moved.writing() as tx:
            assert tx.insert_business("first", "token-hash-first", time.time()) == 1
            assert tx.count_jobs_by_status() == {"queued": 0, "running": 0, "completed": 0, "failed": 0}
    finally:
        moved.close()


def test_a_connection_lost_during_the_move_leaves_nothing_of_it_and_exits_1(source, tmp_path, redis, empty_db,
                                                                            monkeypatch, capsys):
    data_dir = copy_of(source, tmp_path, "data")
    all_commands = migrate_module.move_commands

    def connection_lost_midway(*args, **kwargs):
        for index, command in enumerate(all_commands(*args, **kwargs)):
            if index == 40:
                redis.cli("CLIENT", "KILL", "TYPE", "normal")  # every client but the one asking
            yield command

    monkeypatch.setattr(migrate_module, "move_commands", connection_lost_midway)
    status = migrate_module.main(["--from", f"sqlite://{data_dir}", "--to", redis.url(empty_db)],
                                 database_file=DATABASE_FILE)

    assert status == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped answering during the move" in err and "nothing of it was applied" in err
    assert redis.cli("DBSIZE", db=empty_db) == "0"


def test_a_large_data_dir_moves_whole(tmp_path, redis, empty_db):
    """5,000 calls with a job each (every third failed); docs/measurements-style numbers are printed, not asserted."""
    data_dir = tmp_path / "large"
    data_dir.mkdir()
    store = Store(str(data_dir / DATABASE_FILE))
    now = time.time() - 100
    with store.writing() as tx:
        business = tx.insert_business("large", "token-hash-large", now)
        for i in range(5000):
            sid = f"CA{i:05d}"
            tx.insert_call(business, sid, f"https://api.twilio.com/{sid}.wav", None, now)
            job_id = tx.insert_job(business, sid, f"https://api.twilio.com/{sid}.wav", 0, now)
            if i % 3 == 0:
                tx.fail_job(job_id, "queued", "stuck", "queued 301s without worker pickup", now)
    with store.reading() as tx:
        counts, sample = tx.count_jobs_by_status(), [tx.get_job(job_id) for job_id in (1, 2500, 5000)]
    store.close()

    started = time.monotonic()
    done = run_migrate("--from", f"sqlite://{data_dir}", "--to", redis.url(empty_db))
    print(f"moved 5,000 calls and 5,000 jobs in {time.monotonic() - started:.2f}s: {done.stdout.strip()}")

    assert done.returncode == 0, done.stderr
    moved = RedisStore(redis.url(empty_db))
    try:
        with moved.writing() as tx:
            assert tx.count_jobs_by_status() == counts
            assert [tx.get_job(job.id) for job in sample] == sample
            assert tx.claim_next_job("taker:1:test", time.time()).call_sid == "CA00001"
            assert tx.get_call(business, "CA04999").recording_url == "https://api.twilio.com/CA04999.wav"
            assert tx.insert_job(business, "CANEW", "https://api.twilio.com/new.wav", 0, time.time()) == 5001
    finally:
        moved.close()


def test_a_cached_file_keeps_its_name_until_a_node_on_redis_downloads_the_call_again(source, tmp_path, redis, empty_db,
                                                                                   upstream):
    acme = source.acme
    moved_dir, url = moved_copy(source, tmp_path, redis, empty_db)
    old_file = os.path.join(moved_dir, "recordings", str(acme.id), "CADONE.wav")
    app = App(make_settings(moved_dir, store=url, **{**NODE, "workers": 2}), clock=FakeClock(start=time.time() + 1))
    node = Harness(app.start(), app.clock, upstream)
    try:
        assert node.play(acme.token, "CADONE").body == open(old_file, "rb").read()  # the SQLite node's file
        assert node.admin("POST", "/admin/workers/resume").json == {"paused": False}
        call_with_recording(node, acme, "CADONE", path="/v2/CADONE.wav", body=tune_for("CADONE v2"))
        again = play_until_cached(node, acme, "CADONE")
        job_id = jobs_of(node, acme, "CADONE")[0]["id"]
    finally:
        upstream.hang_all = False
        upstream.release()
        app.stop(grace=0.5)
    assert again.body == tune_for("CADONE v2")
    assert not os.path.exists(old_file)  # the new URL dropped it
    assert [name for name in os.listdir(os.path.dirname(old_file)) if name.startswith("CADONE.")] == \
        [f"CADONE.{job_id}.wav"]  # named by its job, as every file a node on Redis writes
