"""A cluster on one machine: redis-server, N ``python3 -m recsvc serve`` nodes and nginx, all on 127.0.0.1.

Used by tests/test_cluster.py and by the benchmark. The nodes share one
``--data-dir`` and one store: a Redis server of the cluster's own (kept in an
append-only file, so it can be killed and restarted without losing what it
acknowledged), a Redis the caller runs (``store="redis://..."``), or with
``store="sqlite"`` the data dir's SQLite database (``--counter sqlite://``),
as several processes on one machine would. nginx
runs the configuration of docs/deploy.md "Several machines" (the block after
``<!-- tested: nginx-nodes -->``) with only its listening port and the nodes'
addresses replaced, each replacement required to match exactly once, so the
document and what runs cannot drift apart.

Every process writes its output to a file in ``workdir`` (``node0.log``...,
``redis.log``, ``nginx.out``, nginx's ``access.log``), kept after ``stop()``.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from recsvc.storage.files import parse_worker_id
from tools.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
NGINX_BLOCK = "nginx-nodes"                  # the marker of the block in docs/deploy.md
DOC_NODE_ADDRESSES = ("10.0.0.11:8080", "10.0.0.12:8080", "10.0.0.13:8080")  # the nodes as the block names them
START_SECONDS = 30.0                         # the longest a node may take to answer /readyz 200
STOP_GRACE = 5.0                             # SIGTERM, then SIGKILL after this
NGINX_WORKER_CONNECTIONS = 4096              # 500 held requests take two connections each (client and node)


def nginx_binary() -> str | None:
    """nginx: /usr/sbin may not be on PATH, so look there first."""
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else shutil.which("nginx")


def doc_block(marker: str, language: str, doc: Path = DEPLOY_DOC) -> str:
    """The fenced ``language`` block right after ``<!-- tested: MARKER -->`` in docs/deploy.md."""
    text = doc.read_text(encoding="utf-8")
    found = re.search(rf"<!-- tested: {re.escape(marker)} -->\n```{re.escape(language)}\n(.*?)\n```", text, re.S)
    if not found:
        raise LookupError(f"{doc} has no tested {marker} block")
    return found[1]


def replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"{old!r} should appear once in the documented configuration")
    return text.replace(old, new)


def nginx_config(block: str, workdir: Path) -> str:
    """The documented server block inside the frame a whole nginx.conf needs: where nginx keeps its files."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # a root master's workers must read the temp files
    return (f"{user}daemon off;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log info;\n"
            f"events {{ worker_connections {NGINX_WORKER_CONNECTIONS}; }}\nhttp {{\n"
            f"log_format upstream '$remote_addr $request_method $uri $status $upstream_addr';\n"
            f"access_log {workdir}/access.log upstream;\nclient_body_temp_path {workdir}/body;\n"
            f"proxy_temp_path {workdir}/proxy;\nfastcgi_temp_path {workdir}/fastcgi;\n"
            f"uwsgi_temp_path {workdir}/uwsgi;\nscgi_temp_path {workdir}/scgi;\n{block}\n}}\n")


def http_status(base_url: str, path: str, timeout: float = 2.0) -> int | None:
    """The status of GET ``path``, or None when nothing answers."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace``; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class Cluster:
    """redis-server, N `python3 -m recsvc serve` nodes and nginx (round-robin), all on 127.0.0.1."""

    def __init__(self, workdir: Path, *, nodes: int = 3, store: str = "redis", heartbeat: float = 0.2,
                 proxy: bool = True, extra_flags: tuple[str, ...] = (), env: dict[str, str] | None = None):
        if store not in ("redis", "sqlite") and not store.startswith("redis://"):
            raise ValueError(f"store must be 'redis', 'sqlite' or a redis:// URL, got {store!r}")
        if proxy and nodes > len(DOC_NODE_ADDRESSES):
            raise ValueError(f"the documented nginx block names {len(DOC_NODE_ADDRESSES)} nodes, asked for {nodes}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.heartbeat = heartbeat
        self.proxy = proxy
        self.extra_flags = tuple(extra_flags)
        self.env = dict(env or {})
        self.admin_token = "cluster-admin-" + secrets.token_urlsafe(16)
        self.data_dir = self.workdir / "data"
        self.redis: RedisServer | None = None  # the cluster's own redis-server, with store="redis"
        self.store_url = store if store.startswith("redis://") else None  # a Redis of the caller's
        if store == "redis":
            redis_dir = self.workdir / "redis"
            redis_dir.mkdir(exist_ok=True)
            self.redis = RedisServer(redis_dir, appendonly=True)
        self.node_ports = [free_port() for _ in range(nodes)]
        self.node_urls = [f"http://127.0.0.1:{port}" for port in self.node_ports]
        self.proxy_port = free_port() if proxy else None
        self.base_url = f"http://127.0.0.1:{self.proxy_port}" if proxy else self.node_urls[0]
        self._nodes: list[subprocess.Popen | None] = [None] * nodes
        self._nginx: subprocess.Popen | None = None

    # ---- the whole cluster

    def start(self) -> None:
        """Returns when every node answers GET /readyz 200 and nginx listens."""
        try:
            self.data_dir.mkdir(exist_ok=True)
            if self.redis is not None:
                self.redis.start()
            for i in range(len(self._nodes)):
                self._spawn_node(i)
            for i in range(len(self._nodes)):
                self._wait_ready(i)
            if self.proxy:
                self._start_nginx()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM every node (then SIGKILL after a grace), nginx, redis-server."""
        running = [process for process in self._nodes if process is not None]
        for process in running:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for process in running:
            _stop(process, max(0.0, deadline - time.monotonic()))
        if self._nginx is not None:
            _stop(self._nginx, STOP_GRACE)
        if self.redis is not None:
            self.redis.kill()

    def __enter__(self) -> "Cluster":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---- one node

    def node_command(self, i: int) -> list[str]:
        store = self.redis.url(0) if self.redis is not None else self.store_url or "sqlite://"
        counter = ("--counter", "sqlite://") if store == "sqlite://" else ()
        # --allow-upstream loopback: the upstreams of a cluster on one machine are on loopback too.
        return [sys.executable, "-m", "recsvc", "serve", "--store", store, *counter, "--data-dir", str(self.data_dir),
                "--port", str(self.node_ports[i]), "--heartbeat-interval", str(self.heartbeat),
                "--trusted-proxies", "127.0.0.1", "--allow-upstream", "loopback", *self.extra_flags]

    def _spawn_node(self, i: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSVC_ADMIN_TOKEN": self.admin_token, **self.env}
        with open(self.workdir / f"node{i}.log", "ab") as log_file:
            self._nodes[i] = subprocess.Popen(self.node_command(i), stdout=log_file, stderr=subprocess.STDOUT,
                                              env=env, cwd=str(ROOT))

    def _wait_ready(self, i: int) -> None:
        process = self._nodes[i]
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"node {i} exited with {process.returncode}:\n{self.node_log(i)[-3000:]}")
            if http_status(self.node_urls[i], "/readyz") == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"node {i} did not answer /readyz 200 within {START_SECONDS} s:\n{self.node_log(i)[-3000:]}")

    def kill_node(self, i: int) -> None:
        """SIGKILL, reaped."""
        process = self._nodes[i]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def start_node(self, i: int) -> None:
        """(Re)start node i on its old port; returns when it answers /readyz 200."""
        process = self._nodes[i]
        if process is not None and process.poll() is None:
            raise RuntimeError(f"node {i} is still running (pid {process.pid})")
        self._spawn_node(i)
        self._wait_ready(i)

    def node_pid(self, i: int) -> int:
        process = self._nodes[i]
        if process is None:
            raise RuntimeError(f"node {i} was never started")
        return process.pid

    def node_of_worker(self, worker_id: str) -> int:
        """The node whose process runs ``worker_id`` (a job's ``worker_id``: host:pid:tag)."""
        owner = parse_worker_id(worker_id)
        if owner is None:
            raise LookupError(f"{worker_id!r} is not a recsvc worker id")
        pid = owner[1]
        for i, process in enumerate(self._nodes):
            if process is not None and process.pid == pid:
                return i
        raise LookupError(f"no node has pid {pid} (worker {worker_id})")

    def node_log(self, i: int) -> str:
        """The node's stderr (its log lines and access lines) so far, across restarts."""
        path = self.workdir / f"node{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- nginx

    def _start_nginx(self) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed: apt-get install nginx-light")
        block = replace_once(doc_block(NGINX_BLOCK, "nginx"), "listen 80;", f"listen 127.0.0.1:{self.proxy_port};")
        for documented, port in zip(DOC_NODE_ADDRESSES, self.node_ports):
            block = replace_once(block, f"server {documented} ", f"server 127.0.0.1:{port} ")
        for documented in DOC_NODE_ADDRESSES[len(self.node_ports):]:  # fewer nodes: their lines go
            block = re.sub(rf"\n\s*server {re.escape(documented)} [^\n]*;", "", block)
        nginx_dir = self.workdir / "nginx"
        nginx_dir.mkdir(exist_ok=True)
        config = nginx_dir / "nginx.conf"
        config.write_text(nginx_config(block, nginx_dir))
        with open(self.workdir / "nginx.out", "ab") as log_file:
            self._nginx = subprocess.Popen([binary, "-p", str(nginx_dir), "-c", str(config)],
                                           stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self._nginx.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.workdir / 'nginx.out').read_text()[-2000:]}")
            if http_status(self.base_url, "/healthz") is not None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on port {self.proxy_port}")

    def nginx_access_log(self) -> str:
        """nginx's access lines: client, method, path, status, the node(s) that answered."""
        path = self.workdir / "nginx" / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""
