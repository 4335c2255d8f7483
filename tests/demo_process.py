"""A ``recsvc demo`` (or ``serve``) as a real process, and a player loop that follows CONTRACT 7.

Shared by test_demo.py, test_pyz.py and test_demo_page.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from conftest import ROOT, request, wait_listening

ADMIN = "demo-test-admin-token-0123456789"
# Short timings: every scenario ends within seconds. download-timeout stays
# above job-timeout so a hung upstream makes stuck jobs, as in the demo.
FAST = ("--job-timeout", "1", "--heartbeat-interval", "0.2", "--retry-window", "30",
        "--download-timeout", "2", "--retry-after", "1", "--recovery-retry-after", "1")


@dataclass
class DemoProcess:
    proc: subprocess.Popen
    base_url: str
    data_dir: str
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def state(self) -> dict:
        with open(os.path.join(self.data_dir, "demo.json"), encoding="utf-8") as file:
            return json.load(file)

    @property
    def token(self) -> str:
        return self.state["business_token"]

    @property
    def business_id(self) -> int:
        return self.state["business_id"]

    def stdout_text(self, wait_for: str = "", timeout: float = 5) -> str:
        deadline = time.monotonic() + timeout
        while wait_for not in "".join(self.stdout_lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        return "".join(self.stdout_lines)

    def admin(self, method: str, path: str, body=None):
        return request(self.base_url, method, path, token=ADMIN, body=body)

    def interrupt(self, timeout: float = 15) -> int:
        """Ctrl-C, as a terminal sends it; the exit status."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_process(argv: list[str], data_dir, cwd=ROOT, env: dict | None = None,
                  inherit_env: bool = True) -> DemoProcess:
    """Start ``argv`` (a recsvc command line) and wait for its listening line."""
    full_env = {**(os.environ if inherit_env else {}), **(env or {})}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=str(cwd))
    try:
        base_url = wait_listening(proc, timeout=20)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    demo = DemoProcess(proc, base_url, str(data_dir))
    threading.Thread(target=_collect, args=(proc.stdout, demo.stdout_lines), daemon=True).start()
    return demo


def start_demo(data_dir, *args: str, fast: bool = True) -> DemoProcess:
    argv = [sys.executable, "-m", "recsvc", "demo", "--port", "0", "--data-dir", str(data_dir),
            "--admin-token", ADMIN, *(FAST if fast else ()), *args]
    return start_process(argv, data_dir, env={"PYTHONPATH": ROOT})


def _collect(stream, lines: list[str]) -> None:
    for raw in iter(stream.readline, b""):
        lines.append(raw.decode(errors="replace"))


@dataclass
class Heard:
    """One answer the player heard."""
    at: float
    status: int
    retry_after: str | None
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


def play(base_url: str, token: str, call_sid: str, max_wait: float = 30) -> list[Heard]:
    """Ask as a player does (CONTRACT 7) until a final answer; every answer heard, in order."""
    started = time.monotonic()
    heard: list[Heard] = []
    failures = 0
    while time.monotonic() - started < max_wait:
        try:
            answer = request(base_url, "GET", f"/api/recordings/file/{call_sid}", token=token, timeout=10)
        except OSError:
            failures += 1
            time.sleep(min(8, 2 ** (failures - 1)))
            continue
        heard.append(Heard(round(time.monotonic() - started, 2), answer.status, answer.header("retry-after"),
                           answer.body))
        if answer.status == 202:
            time.sleep(min(10, max(1, int(answer.header("retry-after") or 1))))
            continue
        if answer.status in (502, 503, 504):
            failures += 1
            time.sleep(min(8, 2 ** (failures - 1)))
            continue
        return heard
    raise AssertionError(f"{call_sid}: no final answer within {max_wait}s: {[h.status for h in heard]}")
