"""Load generators: wrk when it is installed, else keep-alive raw sockets on threads.

Both run a fixed number of keep-alive connections against one URL for a
fixed duration and return a ``LoadResult``. The standard-library generator
shares the machine (and, being Python, a GIL) with nothing but its own
threads; it is slower than wrk, so a table says which one produced it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


# ---------------------------------------------------------------- wrk

_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _wrk_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _WRK_UNITS[unit]


def run_wrk(url: str, connections: int, seconds: float, headers: dict[str, str] | None = None,
            method: str = "GET") -> LoadResult:
    """wrk -c N -d S --latency; another method than GET goes through a one-line Lua script."""
    threads = max(1, min(connections, os.cpu_count() or 1))
    args = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
            "--timeout", "10s", "--latency"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    script = None
    if method != "GET":
        handle, script = tempfile.mkstemp(suffix=".lua")
        with os.fdopen(handle, "w") as lua:
            lua.write(f'wrk.method = "{method}"\n')
        args += ["-s", script]
    try:
        out = subprocess.run(args + [url], capture_output=True, text=True, timeout=seconds + 30).stdout
    finally:
        if script:
            os.unlink(script)
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    requests = int(total.group(1)) if total else 0
    elapsed = _wrk_ms(total.group(2) + total.group(3)) / 1000 if total else seconds
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = 0
    socket_errors = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return LoadResult(requests, elapsed, _wrk_ms(p50.group(1)) if p50 else None,
                      _wrk_ms(p99.group(1)) if p99 else None, errors)


# ---------------------------------------------------------------- standard library

class _Client:
    """One keep-alive connection that sends a fixed request and reads whole responses."""

    def __init__(self, host: str, port: int, request: bytes, head_only: bool, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = request
        self.head_only = head_only
        self.buffer = bytearray()
        self.scratch = bytearray(262144)

    def exchange(self) -> int:
        """Send the request, read the response; its status."""
        self.sock.sendall(self.request)
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buffer) > 65536:
                raise ValueError("response head too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[:end + 4]
        status = int(head.split(" ", 2)[1])
        length = 0
        if not self.head_only and status not in (204, 304):
            found = re.search(r"\r\ncontent-length:\s*(\d+)", head, re.I)
            length = int(found.group(1)) if found else 0
        if "connection: close" in head.lower():
            self.close()
            raise ConnectionError("server closed the connection")
        taken = min(length, len(self.buffer))
        del self.buffer[:taken]
        left = length - taken
        view = memoryview(self.scratch)
        while left > 0:
            got = self.sock.recv_into(view, min(left, len(self.scratch)))
            if not got:
                raise ConnectionError("server closed mid-body")
            left -= got
        return status

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def build_request(method: str, path: str, host: str, port: int, headers: dict[str, str] | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def run_stdlib(host: str, port: int, path: str, connections: int, seconds: float,
               headers: dict[str, str] | None = None, method: str = "GET") -> LoadResult:
    """``connections`` threads, each a keep-alive connection asking as fast as it can until the deadline."""
    request = build_request(method, path, host, port, headers)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    statuses: list[dict[int, int]] = [{} for _ in range(connections)]
    errors = [0] * connections
    start = threading.Barrier(connections + 1)
    deadline_box: list[float] = []

    def worker(index: int) -> None:
        client = None
        try:
            client = _Client(host, port, request, method == "HEAD")
        except OSError:
            errors[index] += 1
        start.wait()
        deadline = deadline_box[0]
        mine, seen = latencies[index], statuses[index]
        while time.monotonic() < deadline:
            if client is None:
                try:
                    client = _Client(host, port, request, method == "HEAD")
                except OSError:
                    errors[index] += 1
                    time.sleep(0.05)
                    continue
            began = time.perf_counter()
            try:
                status = client.exchange()
            except (OSError, ValueError):
                errors[index] += 1
                client.close()
                client = None
                continue
            mine.append((time.perf_counter() - began) * 1000)
            seen[status] = seen.get(status, 0) + 1
            if status >= 400:
                errors[index] += 1
        if client is not None:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    deadline_box.append(began + seconds)
    start.wait()
    for thread in threads:
        thread.join(seconds + 15)
    elapsed = time.monotonic() - began
    merged = [value for values in latencies for value in values]
    counted: dict[int, int] = {}
    for seen in statuses:
        for status, n in seen.items():
            counted[status] = counted.get(status, 0) + n
    return LoadResult(len(merged), elapsed, percentile(merged, 0.50), percentile(merged, 0.99), sum(errors), counted)


def run_load(host: str, port: int, path: str, connections: int, seconds: float, *, use_wrk: bool,
             headers: dict[str, str] | None = None, method: str = "GET") -> LoadResult:
    if use_wrk and method != "HEAD":  # wrk waits for a body a HEAD answer never has
        return run_wrk(f"http://{host}:{port}{path}", connections, seconds, headers, method)
    return run_stdlib(host, port, path, connections, seconds, headers, method)
