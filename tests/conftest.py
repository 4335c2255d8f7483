"""Shared fixtures: a fake clock, a fake upstream, and recsvc running in-process on 127.0.0.1.

``Harness`` talks to a real App through real sockets (http.client) and
exposes the App for stepping time-based rules by hand: advance the fake
clock, beat the heartbeat, run the sweeper. Nothing here sleeps to make a
job stuck.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from recsvc.run.app import App
from recsvc.demo.fake_upstream import FakeUpstream
from recsvc.contract.settings import Settings, load_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN_TOKEN = "test-admin-token-0123456789"


class FakeClock:
    """A clock that moves only when told; thread-safe."""

    def __init__(self, start: float = 1_800_000_000.0):
        self._now = start
        self._lock = threading.Lock()  # guards _now

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def request(base_url: str, method: str, path: str, *, token: str | None = None, body=None,
            headers: dict | None = None, timeout: float = 30) -> Answer:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=all_headers)
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


class Harness:
    """One recsvc App on 127.0.0.1 with a fake clock, plus helpers in the contract's words."""

    def __init__(self, app: App, clock: FakeClock, upstream: FakeUpstream):
        self.app = app
        self.clock = clock
        self.upstream = upstream
        self.base_url = app.base_url
        self.settings: Settings = app.settings

    def request(self, method: str, path: str, **kwargs) -> Answer:
        return request(self.base_url, method, path, **kwargs)

    def admin(self, method: str, path: str, body=None) -> Answer:
        return self.request(method, path, token=ADMIN_TOKEN, body=body)

    def business(self, name: str = "acme") -> str:
        answer = self.admin("POST", "/admin/businesses", {"name": name})
        assert answer.status == 201, answer.body
        return answer.json["token"]

    def put_call(self, token: str, call_sid: str, url: str | None) -> Answer:
        return self.request("PUT", f"/api/calls/{call_sid}", token=token, body={"recording_url": url})

    def play(self, token: str | None, call_sid: str, **kwargs) -> Answer:
        return self.request("GET", f"/api/recordings/file/{call_sid}", token=token, **kwargs)

    def jobs(self, call_sid: str) -> list[dict]:
        return self.admin("GET", f"/admin/jobs?call_sid={call_sid}").json["jobs"]

    def wait_for_job(self, call_sid: str, statuses=("completed", "failed"), timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.jobs(call_sid)
            if jobs and jobs[0]["status"] in statuses:
                return jobs[0]
            time.sleep(0.02)
        raise AssertionError(f"job of {call_sid} never reached {statuses}: {self.jobs(call_sid)}")

    def advance(self, seconds: float) -> None:
        """Move the fake clock and let the worker pool beat at the new time, as it would."""
        self.clock.advance(seconds)
        if self.app.pool is not None:
            self.app.pool.heartbeat()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def processes():
    """Real recsvc processes (tests/processes.py); whatever a test started is killed at teardown."""
    from processes import Processes
    owner = Processes()
    yield owner
    owner.close()


@pytest.fixture
def upstream():
    with FakeUpstream() as server:
        yield server


# ---- the store of the in-process recsvc: every contract test runs on both (CONTRACT is the same for both)

# The modules whose every test runs once on the SQLite store and once on the Redis store. Left out:
# tests of one store's own faults and files (SQLite's locks and read-only files, the counter backends),
# and tests that run recsvc as a separate process.
BOTH_STORES = {
    "test_abandoning", "test_admin_api", "test_admin_input", "test_authentication", "test_cache_eviction",
    "test_fail_fast", "test_faults", "test_invariants", "test_jobs_view", "test_media_http", "test_play_rows",
    "test_player_outcomes", "test_prefer_wait", "test_retry_limit", "test_row7_attempt", "test_stuck_wakes_waiters",
    "test_sweeper", "test_twilio_webhook", "test_upstream_safety", "test_worker_pool",
}
# The reasons of sqlite_store_only that several tests share.
REDIS_TTL_WINDOW = ("the Redis store's retry window is Redis's own TTL, on the server's clock, which the fake clock "
                    "cannot move: tests/test_redis_store.py tests it with a real short window")
READS_SQLITE = "it reads or counts the SQLite store's own statements"
REDIS_CANNOT_FAIL_OPEN = ("the Redis store counts retries in the script that queues them and cannot fail open: "
                          "tests/test_redis_store.py tests Redis down")
REDIS_DATABASES = 4096  # one database per data dir of the run: tests never see each other's keys


class _StoreChoice:
    """Which store ``make_settings`` gives recsvc now, and the one redis-server of the run it uses."""

    def __init__(self):
        self.kind = "sqlite"
        self.server = None
        self.databases: dict[str, int] = {}

    def url_for(self, data_dir) -> str:
        """The Redis database of this data dir: a fresh one the first time, the same one again after."""
        key = os.path.abspath(str(data_dir))
        if key not in self.databases:
            if self.server is None:
                from redis_server import RedisServer  # noqa: PLC0415 - only runs that test the Redis store need it
                import tempfile  # noqa: PLC0415
                from pathlib import Path  # noqa: PLC0415
                self.server = RedisServer(Path(tempfile.mkdtemp(prefix="recsvc-redis-")),
                                          extra_args=("--databases", str(REDIS_DATABASES)))
                self.server.start()
            self.databases[key] = len(self.databases) + 1
            if self.databases[key] >= REDIS_DATABASES:
                raise RuntimeError("the test run used every Redis database")
        return self.server.url(self.databases[key])

    def stop(self) -> None:
        if self.server is not None:
            self.server.kill()


STORE = _StoreChoice()


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_store_only(reason): a test of BOTH_STORES whose premise holds on "
                                       "the SQLite store only; the reason says why, and where the Redis store's "
                                       "own test is")


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__ in BOTH_STORES:
        only = metafunc.definition.get_closest_marker("sqlite_store_only")
        if only is not None and not only.args:
            raise TypeError(f"{metafunc.function.__name__}: sqlite_store_only needs its reason")
        kinds = ["sqlite"] if only is not None else ["sqlite", "redis"]
        metafunc.parametrize("store_kind", kinds, indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def store_kind(request):
    """The store of this module's recsvc: sqlite, or redis for the modules of BOTH_STORES' second run."""
    kind = getattr(request, "param", "sqlite")
    if kind == "redis":
        from redis_server import REDIS_MISSING  # noqa: PLC0415
        if REDIS_MISSING:
            pytest.skip("redis-server is not installed: apt-get install redis-server")
    STORE.kind = kind
    yield kind
    STORE.kind = "sqlite"


def pytest_sessionfinish(session, exitstatus):
    STORE.stop()


def make_settings(data_dir, **overrides) -> Settings:
    base = dict(port=0, data_dir=str(data_dir), admin_token=ADMIN_TOKEN, allow_upstream=("loopback",),
                download_timeout=2.0)
    if STORE.kind == "redis" and "store" not in overrides:
        base["store"] = STORE.url_for(data_dir)
    base.update(overrides)
    return load_settings({}, {}, **base)


@contextlib.contextmanager
def running_harness(data_dir, upstream: FakeUpstream, **overrides):
    """recsvc in-process on its own fake clock, for a module-scoped fixture (many tests, one server)."""
    clock = FakeClock()
    app = App(make_settings(data_dir, **overrides), clock=clock).start()
    try:
        yield Harness(app, clock, upstream)
    finally:
        app.stop(grace=0.5)


@pytest.fixture
def make_harness(tmp_path, clock, upstream):
    """Build and start recsvc in-process: ``make_harness(workers=0, job_timeout=...)``."""
    started: list[App] = []

    def build(**overrides) -> Harness:
        settings = make_settings(tmp_path / "data", **overrides)
        app = App(settings, clock=clock).start()
        started.append(app)
        return Harness(app, clock, upstream)

    yield build
    for app in started:
        app.stop(grace=0.5)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server of this test, on a free loopback port (skip the test when absent)."""
    from redis_server import REDIS_MISSING, RedisServer
    if REDIS_MISSING:
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


HANG_SECONDS = 10  # --download-timeout while a test holds downloads hung: far longer than any test


@pytest.fixture
def hanging(make_harness, upstream):
    """``hanging(**settings)``: recsvc whose downloads may hang for the whole test.

    At the end the hung downloads are let go, so stopping recsvc does not
    wait out its grace period on them.
    """
    yield lambda **overrides: make_harness(**{"download_timeout": HANG_SECONDS, **overrides})
    upstream.hang_all = False
    upstream.release()


@pytest.fixture
def svc(make_harness) -> Harness:
    return make_harness()


def wait_until(predicate, timeout: float, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def stop_processes(*procs) -> None:
    """SIGTERM each started process, then SIGKILL what has not exited within 5 s."""
    for proc in procs:
        if proc is None:
            continue
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def spawn_recsvc(command: str, data_dir, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m recsvc COMMAND`` as a real process on 127.0.0.1."""
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "recsvc", command, "--data-dir", str(data_dir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=ROOT)


def wait_listening(proc: subprocess.Popen, timeout: float = 10) -> str:
    """Read stderr until the contract's listening line; return the base URL."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode(errors="replace")
        if not line:
            break
        lines.append(line)
        if line.startswith("recsvc listening on "):
            proc.log_lines = lines  # kept growing by the drain thread, for tests that read the log
            threading.Thread(target=_drain, args=(proc.stderr, lines), daemon=True).start()
            return line.strip().removeprefix("recsvc listening on ")
    raise AssertionError("recsvc did not start listening:\n" + "".join(lines))


def _drain(stream, lines: list[str]) -> None:
    for raw in iter(stream.readline, b""):
        lines.append(raw.decode(errors="replace"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With RECSVC_REQUIRE_EXTERNAL=1 (CI), a test skipped because Chromium or redis-server
    is missing fails instead: CI installs them, so such a skip means a broken set-up."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("RECSVC_REQUIRE_EXTERNAL") == "1" and report.skipped and "is not installed" in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"required program missing in CI: {report.longrepr}"
