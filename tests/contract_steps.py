"""Steps shared by the end-to-end contract tests, in the contract's words.

Everything here goes through real sockets to a running recsvc (a ``Harness``
from conftest) or reads what the contract says an operator may read (the
data dir, /admin/*). Nothing here sleeps to make a job stuck: time moves only
through ``harness.advance``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recsvc.demo.audio import tune_for

JOB_TIMEOUT = 300          # the default --job-timeout; the sweeper then runs every 60 real seconds
PAST_JOB_TIMEOUT = JOB_TIMEOUT + 1

if TYPE_CHECKING:
    from conftest import Answer, Harness


@dataclass(frozen=True)
class Business:
    id: int
    token: str


def new_business(h: Harness, name: str = "acme") -> Business:
    answer = h.admin("POST", "/admin/businesses", {"name": name})
    assert answer.status == 201, answer.body
    return Business(answer.json["id"], answer.json["token"])


def call_with_recording(h: Harness, business: Business, call_sid: str, path: str | None = None, **script) -> str:
    """A call whose recording_url is a fake upstream path scripted with ``script``; returns the URL."""
    path = path or f"/{business.id}/{call_sid}.wav"
    script.setdefault("body", tune_for(f"{business.id}:{call_sid}"))
    url = h.upstream.set(path, **script)
    answer = h.put_call(business.token, call_sid, url)
    assert answer.status in (200, 201), answer.body
    return url


def play_until_cached(h: Harness, business: Business, call_sid: str) -> Answer:
    """Play once, let the worker finish, and return the 200 that follows."""
    first = h.play(business.token, call_sid)
    assert first.status in (200, 202), first.body
    if first.status == 200:
        return first
    job = wait_for_job(h, business, call_sid)
    assert job["status"] == "completed", job
    answer = h.play(business.token, call_sid)
    assert answer.status == 200, answer.body
    return answer


def wait_for_job(h: Harness, business: Business, call_sid: str, statuses=("completed", "failed"),
                 timeout: float = 10) -> dict:
    """The call's newest job once it reaches one of ``statuses`` (real waiting, for a worker to finish)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = jobs_of(h, business, call_sid)
        if jobs and jobs[0]["status"] in statuses:
            return jobs[0]
        time.sleep(0.02)
    raise AssertionError(f"job of {call_sid} never reached {statuses}: {jobs_of(h, business, call_sid)}")


def jobs_of(h: Harness, business: Business, call_sid: str) -> list[dict]:
    answer = h.admin("GET", f"/admin/jobs?call_sid={call_sid}&business_id={business.id}")
    assert answer.status == 200, answer.body
    return answer.json["jobs"]


def retry_counter(h: Harness, business: Business, call_sid: str) -> dict:
    answer = h.admin("GET", f"/admin/retry-counters/{business.id}/{call_sid}")
    assert answer.status == 200, answer.body
    return answer.json


def cached_file(h: Harness, business: Business, call_sid: str) -> str:
    """The published file of a call's cached recording (recordings/{business_id}/{call_sid}.{ext})."""
    folder = os.path.join(h.settings.data_dir, "recordings", str(business.id))
    names = [n for n in os.listdir(folder) if n.startswith(f"{call_sid}.") and not n.endswith(".part")]
    assert len(names) == 1, names
    return os.path.join(folder, names[0])


def wait_until_running(h: Harness, business: Business, call_sid: str) -> dict:
    return wait_for_job(h, business, call_sid, statuses=("running",))


def at_once(n: int, action) -> list:
    """Run ``action()`` from ``n`` threads released together by a barrier; the answers in thread order."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(10)
            results[index] = action()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors[:3]
    return results


def raw_exchange(h: Harness, data: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send raw bytes, read until the server closes or the first response is whole; (status, raw response)."""
    host, port = h.app.address
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    status = int(received.split(b" ", 2)[1])
    return status, received


def shared_harness(tmp_path_factory, **overrides):
    """A generator for a module-scoped fixture: one recsvc for tests that never move the clock.

    Starting and stopping recsvc costs about half a second (the server's
    shutdown poll), so tests that only read answers share one instance; each
    uses its own business and call_sid, so none sees another's state.
    """
    from conftest import FakeClock, Harness, make_settings  # noqa: PLC0415 - conftest is pytest's module
    from recsvc.run.app import App
    from recsvc.demo.fake_upstream import FakeUpstream

    clock = FakeClock()
    with FakeUpstream() as upstream:
        app = App(make_settings(tmp_path_factory.mktemp("shared") / "data", **overrides), clock=clock).start()
        try:
            yield Harness(app, clock, upstream)
        finally:
            app.stop(grace=0.5)
