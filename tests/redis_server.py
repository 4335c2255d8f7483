"""A real redis-server for tests: started on a free loopback port, keeping nothing on disk."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_MISSING = shutil.which("redis-server") is None or shutil.which("redis-cli") is None
requires_redis = pytest.mark.skipif(REDIS_MISSING, reason="redis-server is not installed: apt-get install redis-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A redis-server of this test run, on loopback, keeping nothing on disk."""

    def __init__(self, workdir: Path, password: str | None = None, extra_args: tuple[str, ...] = ()):
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        args += list(self.extra_args)
        with open(self.workdir / "redis.log", "ab") as log_file:
            self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not listen on port {self.port}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def cli(self, *args: str, db: int = 0) -> str:
        auth = ["--no-auth-warning", "-a", self.password] if self.password else []
        done = subprocess.run(["redis-cli", "-p", str(self.port), "-n", str(db), *auth, *args],
                              capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()

    def connections_received(self) -> int:
        """Connections accepted since start, counting the redis-cli asking."""
        for line in self.cli("INFO", "stats").splitlines():
            if line.startswith("total_connections_received:"):
                return int(line.split(":")[1])
        raise AssertionError("INFO stats has no total_connections_received")
