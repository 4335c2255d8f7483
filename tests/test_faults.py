"""Faults a small box meets: SIGTERM mid-download, a recordings folder that cannot be written,
a database write-locked by someone else, a retry counter that is down, and secrets in the log.

The SIGTERM cases run ``python -m recsvc serve`` as a real process; the others
an App in-process, so that its logs can be read.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.parse
from typing import Iterator

import pytest

from conftest import (
    ADMIN_TOKEN, REDIS_CANNOT_FAIL_OPEN, FakeClock, Harness, make_settings, request, spawn_recsvc, wait_listening,
    wait_until,
)
from recsvc.run import app as app_module
from recsvc.run.app import DATABASE_FILE, App
from recsvc.storage.counter import CounterError
from recsvc.demo.audio import sized_wav
from recsvc.storage.files import TEMP_SUFFIX
from recsvc.storage.store import Store


def _jobs(data_dir, call_sid: str) -> list:
    store = Store(os.path.join(data_dir, DATABASE_FILE))
    try:
        with store.reading() as tx:
            return tx.jobs_newest_first(call_sid, None, 50)
    finally:
        store.close()


def _temp_files(root) -> list[str]:
    return [os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names
            if name.endswith(TEMP_SUFFIX)]


def _tracebacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


# ---------------------------------------------------------------- SIGTERM on serve


SERVE_FLAGS = ("--port", "0", "--admin-token", ADMIN_TOKEN, "--allow-upstream", "loopback",
               "--heartbeat-interval", "0.2", "--download-timeout", "20", "--idle-timeout", "2")


@contextlib.contextmanager
def _serving(data_dir, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real ``serve`` on ``data_dir`` for the block; killed at its end if it still runs."""
    proc = spawn_recsvc("serve", data_dir, *SERVE_FLAGS, *extra)
    try:
        yield proc, wait_listening(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _refuses_connections(base_url: str) -> bool:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except OSError:
        return True
    return False


def _start_slow_download(base_url: str, upstream, path: str, body: bytes, seconds: float) -> str:
    token = request(base_url, "POST", "/admin/businesses", token=ADMIN_TOKEN, body={"name": "acme"}).json["token"]
    chunks = 20
    url = upstream.set(path, body=body, chunk_size=len(body) // chunks + 1, chunk_delay=seconds / chunks)
    assert request(base_url, "PUT", "/api/calls/CASLOW", token=token, body={"recording_url": url}).status == 201
    assert request(base_url, "GET", "/api/recordings/file/CASLOW", token=token).status == 202
    assert upstream.wait_for_hits(path, 1, 5), "the download never started"
    return token


def test_sigterm_stops_accepting_lets_the_download_finish_within_the_grace_and_exits_0(tmp_path, upstream):
    data_dir = tmp_path / "data"
    body = sized_wav(200_000, seed="sigterm")
    with _serving(data_dir, "--shutdown-grace", "5") as (proc, base_url):
        token = _start_slow_download(base_url, upstream, "/slow.wav", body, seconds=1.5)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: _refuses_connections(base_url), 1.0), "still accepting connections after SIGTERM"
        refused_after = time.monotonic() - signalled
        assert proc.poll() is None, "exited before the download in flight finished"
        code = proc.wait(8)
        took = time.monotonic() - signalled
    print(f"\nSIGTERM: refusing connections after {refused_after:.2f}s, exit {code} after {took:.2f}s")
    assert code == 0
    latest = _jobs(data_dir, "CASLOW")[0]
    assert latest.status == "completed", latest
    with _serving(data_dir) as (proc, base_url):
        answer = request(base_url, "GET", "/api/recordings/file/CASLOW", token=token)
        assert answer.status == 200 and answer.body == body


def test_sigterm_with_a_download_longer_than_the_grace_exits_0_and_the_orphan_is_replaced_at_start(tmp_path, upstream):
    data_dir = tmp_path / "data"
    body = sized_wav(200_000, seed="grace")
    with _serving(data_dir, "--shutdown-grace", "0.5") as (proc, base_url):
        token = _start_slow_download(base_url, upstream, "/slower.wav", body, seconds=6)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(5)
        took = time.monotonic() - signalled
    print(f"\nSIGTERM past the grace: exit {code} after {took:.2f}s")
    assert code == 0
    assert took < 3, f"the grace was 0.5 s but the process took {took:.2f}s to exit"
    left = _jobs(data_dir, "CASLOW")
    assert [j.status for j in left] == ["running"], left  # left to the orphan rule
    upstream.set("/slower.wav", body=body)  # fast now
    with _serving(data_dir) as (proc, base_url):
        jobs = _jobs(data_dir, "CASLOW")
        orphan = next(j for j in jobs if j.id == left[0].id)
        assert (orphan.status, orphan.error_code, orphan.error_message) == ("failed", "orphaned", "worker restarted")
        assert len(jobs) == 2 and jobs[0].attempt == orphan.attempt  # replaced, not a retry
        assert wait_until(lambda: _jobs(data_dir, "CASLOW")[0].status == "completed", 10)
        answer = request(base_url, "GET", "/api/recordings/file/CASLOW", token=token)
        assert answer.status == 200 and answer.body == body
        proc.terminate()
        assert proc.wait(8) == 0


# ---------------------------------------------------------------- storage errors


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs, for a recordings folder that fills up; skipped where mounting is not allowed."""
    mounted = []

    def mount(path) -> None:
        os.makedirs(path, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounted.append(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _cached_call(svc: Harness, upstream) -> tuple[str, bytes]:
    token = svc.business("cached")
    body = sized_wav(50_000, seed="cached")
    assert svc.put_call(token, "CACACHED", upstream.set("/cached.wav", body=body)).status == 201
    svc.play(token, "CACACHED")
    assert svc.wait_for_job("CACACHED")["status"] == "completed"
    return token, body


@pytest.mark.parametrize("fault", ["folder-is-a-file", "disk-full", "disk-full-at-flush"])
def test_a_recordings_folder_that_cannot_be_written_fails_the_job_storage_error(make_harness, upstream, tiny_tmpfs,
                                                                                 fault, caplog):
    svc = make_harness()
    cached_token, cached_body = _cached_call(svc, upstream)
    token = svc.business("broken")
    folder = os.path.join(svc.app.files.root, "2")
    if fault == "folder-is-a-file":
        with open(folder, "wb") as handle:
            handle.write(b"not a folder")
    else:
        tiny_tmpfs(folder)
    body = sized_wav(512_000, seed="big")
    if fault == "disk-full-at-flush":  # the body fits the write buffer; the disk fails it at flush/fsync
        filler = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(filler, b"\0" * 1024)
        os.close(filler)
        body = sized_wav(2_000, seed="small")
    assert svc.put_call(token, "CABROKEN", upstream.set("/big.wav", body=body)).status == 201
    assert svc.play(token, "CABROKEN").status == 202
    job = svc.wait_for_job("CABROKEN")
    print(f"\n{fault}: job {job['status']} {job['error_code']}: {job['error_message']}")
    assert (job["status"], job["error_code"]) == ("failed", "storage_error"), job
    assert _temp_files(svc.app.files.root) == [], "the temporary file of the failed download was left behind"
    answer = svc.play(cached_token, "CACACHED")
    assert answer.status == 200 and answer.body == cached_body, "an already cached file stopped being served"
    assert svc.request("GET", "/healthz").status == 200
    assert not _tracebacks(caplog), _tracebacks(caplog)


# ---------------------------------------------------------------- a write-locked database


BUSY_TIMEOUT = 0.2


@pytest.mark.sqlite_store_only("a SQLite write lock")
def test_a_write_locked_database_answers_503_storage_busy_then_recovers(tmp_path, upstream, monkeypatch, caplog):
    monkeypatch.setattr(app_module, "Store", functools.partial(Store, busy_timeout=BUSY_TIMEOUT))
    clock = FakeClock()
    app = App(make_settings(tmp_path / "data"), clock=clock).start()
    svc = Harness(app, clock, upstream)
    try:
        token = svc.business()
        body = sized_wav(30_000, seed="busy")
        url = upstream.set("/busy.wav", body=body)
        assert svc.put_call(token, "CADONE", url).status == 201
        svc.play(token, "CADONE")
        svc.wait_for_job("CADONE")
        assert svc.put_call(token, "CAFRESH", url).status == 201  # no job yet: its first play writes
        locker = sqlite3.connect(os.path.join(tmp_path / "data", DATABASE_FILE), isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        locked_at = time.monotonic()
        try:
            writes = {
                "put_call": lambda: svc.put_call(token, "CANEW", url),
                "first_play": lambda: svc.play(token, "CAFRESH"),
                "create_business": lambda: svc.admin("POST", "/admin/businesses", {"name": "later"}),
                "pause": lambda: svc.admin("POST", "/admin/workers/pause"),
            }
            answers: dict[str, object] = {}

            def run(name, call):
                answers[name] = call()

            threads = [threading.Thread(target=run, args=item) for item in writes.items()]
            for thread in threads:
                thread.start()
            cached = svc.play(token, "CADONE")  # reads never wait for the writer (WAL)
            health = svc.request("GET", "/healthz")
            for thread in threads:
                thread.join(15)
            held = time.monotonic() - locked_at
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        print(f"\nwrite lock held {held:.2f}s (busy timeout {BUSY_TIMEOUT}s): "
              + ", ".join(f"{n} {a.status}" for n, a in answers.items()))
        assert cached.status == 200 and cached.body == body
        assert health.status == 200
        for name, answer in answers.items():
            assert answer.status == 503, (name, answer.status, answer.body)
            assert answer.json["error"] == "storage_busy" and answer.header("retry-after"), (name, answer.body)
            assert b"Traceback" not in answer.body
        # released: the same writes succeed
        assert svc.put_call(token, "CANEW", url).status == 201
        assert svc.admin("POST", "/admin/businesses", {"name": "later"}).status == 201
        assert svc.admin("POST", "/admin/cleanup").status == 200
        assert svc.play(token, "CANEW").status == 202
        assert svc.wait_for_job("CANEW")["status"] == "completed"
        assert svc.play(token, "CANEW").body == body
        unexpected = [r.getMessage() for r in caplog.records if r.name == "recsvc.http.api" and r.levelno >= logging.ERROR]
        assert not unexpected, unexpected
    finally:
        app.stop(grace=0.5)


# ---------------------------------------------------------------- a counter that is down


class DownCounter:
    """A retry counter whose backend is unreachable: every call raises CounterError."""

    def __init__(self):
        self.calls = 0

    def _down(self, *args, **kwargs):
        self.calls += 1
        raise CounterError("connection refused")

    incr = expire = incr_and_expire = get = ttl = delete = _down

    def close(self) -> None:
        pass


@pytest.mark.sqlite_store_only(REDIS_CANNOT_FAIL_OPEN)
def test_a_counter_that_raises_allows_the_retry_and_logs_a_warning(tmp_path, upstream, caplog):
    clock = FakeClock()
    counter = DownCounter()
    app = App(make_settings(tmp_path / "data"), clock=clock, counter=counter).start()
    svc = Harness(app, clock, upstream)
    try:
        token = svc.business()
        url = upstream.set("/flaky.wav", status=500, body=b"oops", content_type="text/plain")
        assert svc.put_call(token, "CAFLAKY", url).status == 201
        assert svc.play(token, "CAFLAKY").status == 202
        assert svc.wait_for_job("CAFLAKY")["error_code"] == "download_failed"
        caplog.clear()
        body = sized_wav(20_000, seed="flaky")
        upstream.set("/flaky.wav", body=body)
        answer = svc.play(token, "CAFLAKY")
        assert answer.status == 202, answer.body  # the retry is allowed
        assert answer.json["attempt"] == 1
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "counter unavailable" in r.getMessage()]
        assert warnings, [r.getMessage() for r in caplog.records]
        assert counter.calls >= 1
        assert svc.wait_for_job("CAFLAKY")["status"] == "completed"
        assert svc.play(token, "CAFLAKY").body == body
        # a new URL deletes the key: the counter is down, the update still succeeds
        assert svc.put_call(token, "CAFLAKY", upstream.set("/flaky2.wav", body=body)).status == 200
        view = svc.admin("GET", "/admin/retry-counters/1/CAFLAKY")  # the one reader that cannot fail open
        assert view.status == 503 and view.json["error"] == "counter_unavailable", view.body
        assert not _tracebacks(caplog), _tracebacks(caplog)
    finally:
        app.stop(grace=0.5)


# ---------------------------------------------------------------- no secrets in the log


def test_the_log_never_holds_a_token_an_authorization_value_or_a_link_signature(make_harness, upstream, caplog):
    caplog.set_level(logging.DEBUG)
    svc = make_harness()
    token = svc.business()
    body = sized_wav(20_000, seed="secret")
    url = upstream.set("/secret.wav", body=body)
    assert svc.put_call(token, "CASECRET", url).status == 201
    svc.play(token, "CASECRET")
    svc.wait_for_job("CASECRET")
    link = svc.request("POST", "/api/recordings/CASECRET/link", token=token).json["url"]
    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["sig"][0]
    assert svc.request("GET", link).status == 200
    assert svc.request("HEAD", link).status == 200
    assert svc.request("GET", link.replace(signature, "0" * len(signature))).status == 401
    assert svc.request("GET", link + "&x=1").status in (200, 401)
    for method, path in [("GET", "/api/calls/CASECRET"), ("GET", "/api/recordings/file/CASECRET"),
                         ("GET", "/api/recordings/file/CANONE"), ("PUT", "/api/calls/CASECRET"),
                         ("GET", "/admin/jobs?call_sid=CASECRET"), ("POST", "/admin/workers/pause"),
                         ("POST", "/admin/workers/resume"), ("POST", "/admin/cleanup"),
                         ("GET", "/admin/retry-counters/1/CASECRET"), ("GET", "/healthz"), ("GET", "/readyz"),
                         ("GET", "/metrics"), ("GET", "/"), ("GET", "/player"), ("GET", "/player.js"),
                         ("GET", "/nowhere"), ("DELETE", "/api/calls/CASECRET")]:
        for credential in (token, ADMIN_TOKEN, token[:-2] + "xx", None):
            kwargs = {"body": {"recording_url": url}} if method == "PUT" else {}
            svc.request(method, path, token=credential, **kwargs)
    svc.request("GET", f"/api/recordings/file/CASECRET?token={token}&sig={signature}")
    svc.request("GET", "/healthz", headers={"Authorization": f"Basic {token}", "Cookie": f"t={token}"})
    messages = [r.getMessage() for r in caplog.records]
    assert any(r.name == "recsvc.access" for r in caplog.records), "no access log line was written"
    for secret in (token, ADMIN_TOKEN, signature, "sig=", "Bearer"):
        leaked = [m for m in messages if secret in m]
        assert not leaked, f"{secret[:12]}... appears in the log: {leaked[:3]}"
