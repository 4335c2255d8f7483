"""Real recsvc processes for tests: start, read stderr lines as they come, stop or kill.

``RecsvcProcess`` wraps ``spawn_recsvc`` with a reader thread, so a test can
wait for a line (the listening line, the worker's start line) while the pipe
never fills up. ``Processes`` is the pytest fixture's owner: whatever a test
started is killed at teardown.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

from conftest import ADMIN_TOKEN, request, spawn_recsvc

SERVE_ARGS = ("--port", "0", "--allow-upstream", "loopback", "--admin-token", ADMIN_TOKEN)


class RecsvcProcess:
    def __init__(self, command: str, data_dir, *args: str, env: dict | None = None):
        self.command = command
        self.proc = spawn_recsvc(command, data_dir, *args, env=env)
        self.pid = self.proc.pid
        self._lines: list[str] = []
        self._changed = threading.Condition()  # guards _lines
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            with self._changed:
                self._lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    def wait_for_line(self, prefix: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines:
                    if line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{self.command} never printed {prefix!r}:\n" + "\n".join(self._lines))
                self._changed.wait(min(left, 0.1))

    def base_url(self, timeout: float = 10) -> str:
        return self.wait_for_line("recsvc listening on ", timeout).removeprefix("recsvc listening on ")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(2)
        return code


class Processes:
    """Every process a test started; all are killed at teardown."""

    def __init__(self):
        self.started: list[RecsvcProcess] = []

    def start(self, command: str, data_dir, *args: str, env: dict | None = None) -> RecsvcProcess:
        process = RecsvcProcess(command, data_dir, *args, env=env)
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait(10)


class Client:
    """The HTTP side of a real ``serve``: admin and business requests in the contract's words."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def request(self, method: str, path: str, **kwargs):
        return request(self.base_url, method, path, **kwargs)

    def admin(self, method: str, path: str, body=None):
        return self.request(method, path, token=ADMIN_TOKEN, body=body)

    def business(self, name: str = "acme") -> str:
        answer = self.admin("POST", "/admin/businesses", {"name": name})
        assert answer.status == 201, answer.body
        return answer.json["token"]

    def put_call(self, token: str, call_sid: str, url: str | None):
        answer = self.request("PUT", f"/api/calls/{call_sid}", token=token, body={"recording_url": url})
        assert answer.status in (200, 201), answer.body
        return answer

    def play(self, token: str, call_sid: str):
        return self.request("GET", f"/api/recordings/file/{call_sid}", token=token)

    def jobs(self, call_sid: str) -> list[dict]:
        return self.admin("GET", f"/admin/jobs?call_sid={call_sid}").json["jobs"]

    def play_until(self, token: str, call_sid: str, status: int = 200, timeout: float = 10):
        """Poll like a player (without its sleeps) until the answer has ``status``; every answer is checked."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            answer = self.play(token, call_sid)
            seen.append(answer.status)
            if answer.status == status:
                return answer
            time.sleep(0.05)
        raise AssertionError(f"{call_sid} never answered {status}; saw {sorted(set(seen))}, jobs {self.jobs(call_sid)}")


def put_calls(client: Client, token: str, upstream, call_sids: list[str], body: bytes, **script) -> None:
    """A call per sid, each with its own upstream path answering ``body`` (and ``script``: hang=True...)."""
    for sid in call_sids:
        client.put_call(token, sid, upstream.set(f"/{sid}.wav", body=body, **script))


def read_db(data_dir, sql: str, *args) -> list[tuple]:
    """Read the data dir's database the way an operator would, bypassing recsvc."""
    conn = sqlite3.connect(os.path.join(str(data_dir), "recsvc.sqlite3"), timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
