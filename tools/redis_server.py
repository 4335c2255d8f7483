"""A real redis-server on a free loopback port, for the tests and the benchmark (no pytest here).

By default it keeps nothing on disk. With ``appendonly=True`` it keeps an
append-only file in its workdir with ``appendfsync always``, so a kill -9
and a ``restart()`` bring back every write it acknowledged (the persistence
docs/deploy.md "Several machines" asks of a production Redis).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

START_SECONDS = 10  # the longest start() waits for redis-server to listen


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A redis-server of this run, on loopback, keeping nothing on disk unless ``appendonly``."""

    def __init__(self, workdir: Path, password: str | None = None, extra_args: tuple[str, ...] = (),
                 appendonly: bool = False):
        self.port = free_port()
        self.workdir = Path(workdir)
        self.password = password
        self.extra_args = extra_args
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
                "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        args += list(self.extra_args)
        log_path = self.workdir / "redis.log"
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log_path.read_text()[-2000:]}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def _answers_ping(self) -> bool:
        """Listening is not enough after a restart: Redis answers LOADING while it reads its append-only file."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                if self.password:
                    conn.sendall(f"AUTH {self.password}\r\n".encode())
                    conn.recv(256)
                conn.sendall(b"PING\r\n")
                return conn.recv(256).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, reaped: nothing is flushed on the way out."""
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
