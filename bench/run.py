"""The recsvc benchmark: start recsvc as a real process, load it, print its tables.

Theory of operation. ``main()`` starts a fake upstream (``recsvc.demo.fake_upstream``)
and one recsvc process on 127.0.0.1 with realistic data: a business, many
calls, cached recordings of 1 MiB and 64 KiB, and a pending job held pending
by an upstream that hangs. Each scenario then runs for a fixed duration
with a fixed number of connections (``bench/load.py``: wrk when installed,
else a standard-library generator) and adds a row. When nginx is installed
it serves the same 1 MiB file and a fixed 202 on another loopback port, and
each recsvc row with a counterpart is printed with its ratio to nginx from
the same run. Then ``bench/nodes.py`` prints the "Several nodes" table
(``--no-nodes`` skips it). Nothing here asserts a timing; every loop has a bound, and
every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime

if __package__ in (None, ""):  # ``python3 bench/run.py``
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.hung_share import run_scenario as hung_upstream_share
    from bench.load import LoadResult, _Client, build_request, have_wrk, percentile, run_load
    from bench.reference import Nginx
else:
    from .hung_share import run_scenario as hung_upstream_share
    from .load import LoadResult, _Client, build_request, have_wrk, percentile, run_load
    from .reference import Nginx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recsvc.demo.audio import sized_wav  # noqa: E402
from recsvc.demo.fake_upstream import FakeUpstream  # noqa: E402

HOST = "127.0.0.1"
ADMIN_TOKEN = "bench-admin-token-0123456789"
MIB = 1 << 20

# Every scenario row, in print order; the smoke test checks they all appear.
SCENARIOS = ("start_to_healthz", "rss_idle", "file_1m", "file_64k", "range_64k", "head", "poll_202",
             "thundering_herd", "playback_poll", "playback_wait", "idle_1000", "rss_after", "hung_upstream_share")

# recsvc runs with these on top of its defaults; the table's header repeats them.
SERVICE_FLAGS = ("--workers", "16", "--max-connections", "1200", "--idle-timeout", "60",
                 "--download-timeout", "600", "--shutdown-grace", "1", "--allow-upstream", "loopback")


def service_flags(processes: int) -> tuple[str, ...]:
    """SERVICE_FLAGS for ``processes`` serving processes: several share the retry count in SQLite."""
    if processes <= 1:
        return SERVICE_FLAGS
    return (*SERVICE_FLAGS, "--processes", str(processes), "--counter", "sqlite://")


@dataclass
class Row:
    scenario: str
    rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    notes: str = ""


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc), e.g. the serving processes of --processes N."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(p) for p in children.read().split()]
    except OSError:
        return []


def threads_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Http:
    """Small JSON requests to one server, a fresh connection each."""

    def __init__(self, port: int):
        self.port = port

    def __call__(self, method: str, path: str, *, token: str | None = None, body=None,
                 headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            sent = dict(headers or {})
            if token:
                sent["Authorization"] = f"Bearer {token}"
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                sent["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=sent)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


class Recsvc:
    """One ``python -m recsvc serve`` process on a free loopback port."""

    def __init__(self, data_dir: str, *flags: str, processes: int = 1):
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = os.path.join(data_dir + ".log")
        env = {**os.environ, "PYTHONPATH": ROOT, "RECSVC_ADMIN_TOKEN": ADMIN_TOKEN}
        self._log = open(self.log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recsvc", "serve", "--host", HOST, "--port", str(self.port),
             "--data-dir", data_dir, *flags],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.http = Http(self.port)
        self.ready_after = self._wait_healthz()
        self.processes = processes
        deadline = time.monotonic() + 20  # the serving processes, when there are several
        while len(children_of(self.proc.pid)) < processes - 1 and time.monotonic() < deadline:
            time.sleep(0.05)

    def rss_notes(self) -> tuple[float | None, str]:
        """(VmRSS of the first process, a note naming every process's VmRSS and threads)."""
        first = rss_mib(self.pid)
        note = f"{first:.1f} MiB, {threads_of(self.pid)} threads"
        others = children_of(self.pid)
        if others:
            rss = [rss_mib(pid) or 0.0 for pid in others]
            note = (f"first process {note}; {len(others)} serving process(es) "
                    + ", ".join(f"{r:.1f}" for r in rss) + f" MiB; all {first + sum(rss):.1f} MiB")
        return first, note

    def _wait_healthz(self, timeout: float = 20.0) -> float:
        """Seconds from Popen to the first 200 of /healthz."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                status, _, _ = self.http("GET", "/healthz", timeout=1)
                if status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.002)
        self.stop()
        with open(self.log_path, errors="replace") as log:
            raise RuntimeError("recsvc did not answer /healthz:\n" + log.read()[-2000:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# ---------------------------------------------------------------- data


@dataclass
class Data:
    token: str
    business_id: int
    one_mib_file: str
    small_file: str
    poll_202_body: bytes


def seed(svc: Recsvc, upstream: FakeUpstream, calls: int, cached_fillers: int) -> Data:
    """A business, many calls, cached 1 MiB and 64 KiB recordings, a pending job on a hanging upstream."""
    h = svc.http
    status, _, body = h("POST", "/admin/businesses", token=ADMIN_TOKEN, body={"name": "Bench Ltd"})
    assert status == 201, body
    business = json.loads(body)
    token = business["token"]
    upstream.set("/rec/1m", body=sized_wav(MIB, "one-mib"))
    upstream.set("/rec/64k", body=sized_wav(64 * 1024, "sixty-four"))
    upstream.set("/rec/pending", hang=True)
    filler = sized_wav(16 * 1024, "filler")
    conn = http.client.HTTPConnection(HOST, svc.port, timeout=30)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for i in range(calls):  # one keep-alive connection: many calls, most never played
        path = f"/rec/filler/{i}"
        if i < cached_fillers:
            upstream.set(path, body=filler)
        conn.request("PUT", f"/api/calls/CAfill{i:05d}", body=json.dumps({"recording_url": upstream.url(path)}),
                     headers=auth)
        conn.getresponse().read()
    conn.close()
    for sid, path in (("CA1m", "/rec/1m"), ("CA64k", "/rec/64k"), ("CApending", "/rec/pending")):
        status, _, body = h("PUT", f"/api/calls/{sid}", token=token, body={"recording_url": upstream.url(path)})
        assert status == 201, body
    wanted = ["CA1m", "CA64k"] + [f"CAfill{i:05d}" for i in range(cached_fillers)]
    for sid in wanted:  # queue them all, then wait for each
        h("GET", f"/api/recordings/file/{sid}", token=token)
    for sid in wanted:
        for _ in range(30):
            status, _, _ = h("GET", f"/api/recordings/file/{sid}", token=token, headers={"Prefer": "wait=10"})
            if status == 200:
                break
        else:
            raise RuntimeError(f"{sid} never became ready")
    status, _, poll_body = h("GET", "/api/recordings/file/CApending", token=token)
    assert status == 202, poll_body
    upstream.wait_for_hits("/rec/pending", 1, timeout=10)  # the job is running and hangs
    files = {os.path.basename(p).split(".")[0]: p for p in glob.glob(os.path.join(svc.data_dir, "recordings", "*", "*"))}
    return Data(token, business["id"], files["CA1m"], files["CA64k"], poll_body)


# ---------------------------------------------------------------- scenarios


def load_row(name: str, result: LoadResult, notes: str = "") -> Row:
    return Row(name, result.rate, result.p50_ms, result.p99_ms, result.errors, notes)


def release_together(target, items: list, gate: threading.Barrier, timeout: float) -> float:
    """One thread per item runs ``target(item)``; each waits at ``gate``, which this call
    passes last, so they start together. Seconds from the release until all ended."""
    threads = [threading.Thread(target=target, args=(item,), daemon=True) for item in items]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    gate.wait()
    for thread in threads:
        thread.join(timeout)
    return time.monotonic() - began


def check(svc: Recsvc, path: str, token: str, expected: int, method: str = "GET", headers: dict | None = None) -> str:
    """One request before a load, so a row never measures the wrong answer."""
    status, _, _ = svc.http(method, path, token=token, headers=headers)
    return "" if status == expected else f"WRONG STATUS {status} (expected {expected}); "


def thundering_herd(svc: Recsvc, upstream: FakeUpstream, data: Data, herd: int) -> Row:
    """``herd`` first requests at once for one new call: one job, everyone a 202."""
    upstream.set("/rec/herd", hang=True)
    status, _, _ = svc.http("PUT", "/api/calls/CAherd", token=data.token,
                            body={"recording_url": upstream.url("/rec/herd")})
    request = build_request("GET", "/api/recordings/file/CAherd", HOST, svc.port,
                            {"Authorization": f"Bearer {data.token}"})
    clients: list[_Client] = []
    for _ in range(herd):
        clients.append(_Client(HOST, svc.port, request, head_only=False, timeout=30))
    gate = threading.Barrier(herd + 1)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def one(client: _Client) -> None:
        gate.wait()
        began = time.perf_counter()
        try:
            got = client.exchange()
        except (OSError, ValueError):
            got = 0
        took = (time.perf_counter() - began) * 1000
        with lock:
            latencies.append(took)
            statuses[got] = statuses.get(got, 0) + 1
        client.close()

    elapsed = release_together(one, clients, gate, timeout=60)
    _, _, body = svc.http("GET", "/admin/jobs?call_sid=CAherd", token=ADMIN_TOKEN)
    jobs = len(json.loads(body)["jobs"])
    errors = sum(n for s, n in statuses.items() if s != 202)
    verdict = "met" if jobs == 1 else "NOT MET"
    return Row("thundering_herd", len(latencies) / elapsed, percentile(latencies, .5), percentile(latencies, .99),
               errors, f"{herd} at once; jobs created: {jobs} (must be 1: {verdict}); statuses "
               f"{dict(sorted(statuses.items()))}; p99<1s: {'met' if (percentile(latencies, .99) or 0) < 1000 else 'NOT MET'}")


def playback(svc: Recsvc, upstream: FakeUpstream, data: Data, players: int, prefer_wait: bool) -> Row:
    """``players`` players, each a fresh recording whose upstream takes 1 s, as CONTRACT 7 says a player acts."""
    mode = "wait" if prefer_wait else "poll"
    body = sized_wav(64 * 1024, "playback")
    sids = []
    for i in range(players):
        path = f"/rec/playback/{mode}/{i}"
        upstream.set(path, body=body, delay=1.0)
        sid = f"CApb{mode}{i:04d}"
        svc.http("PUT", f"/api/calls/{sid}", token=data.token, body={"recording_url": upstream.url(path)})
        sids.append(sid)
    gate = threading.Barrier(players + 1)
    outcome: dict[str, tuple[int, float | None]] = {}
    lock = threading.Lock()

    def player(sid: str) -> None:
        conn = http.client.HTTPConnection(HOST, svc.port, timeout=40)
        headers = {"Authorization": f"Bearer {data.token}"}
        if prefer_wait:
            headers["Prefer"] = "wait=20"
        requests, landed = 0, None
        gate.wait()
        deadline = time.monotonic() + 90
        try:
            while requests < 100 and time.monotonic() < deadline:
                conn.request("GET", f"/api/recordings/file/{sid}", headers=headers)
                resp = conn.getresponse()
                resp.read()
                requests += 1
                if resp.status == 200:
                    landed = time.time()
                    break
                if resp.status != 202:
                    break
                if not prefer_wait:  # CONTRACT 7: wait Retry-After, clamped to 1..10 s
                    time.sleep(min(10, max(1, int(resp.getheader("Retry-After", "2")))))
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        with lock:
            outcome[sid] = (requests, landed)

    elapsed = release_together(player, sids, gate, timeout=120)
    delays, counts, failed = [], [], 0
    for sid in sids:
        requests, landed = outcome.get(sid, (0, None))
        counts.append(requests)
        _, _, jobs_body = svc.http("GET", f"/admin/jobs?call_sid={sid}", token=ADMIN_TOKEN)
        jobs = json.loads(jobs_body)["jobs"]
        if landed is None or not jobs or not jobs[0]["finished_at"]:
            failed += 1
            continue
        delays.append(max(0.0, (landed - epoch(jobs[0]["finished_at"])) * 1000))
    mean = sum(counts) / len(counts) if counts else 0
    notes = (f"{players} players, upstream 1 s, {elapsed:.1f} s in all; requests/playback mean {mean:.2f} "
             f"max {max(counts, default=0)}; p50/p99 = file landing (job finished_at) to the player's 200")
    if prefer_wait:
        p99 = percentile(delays, .99)
        notes += (f"; targets <=2 req: {'met' if max(counts, default=99) <= 2 else 'NOT MET'}, "
                  f"<=50 ms: {'met' if p99 is not None and p99 <= 50 else 'NOT MET'}")
    return Row(f"playback_{mode}", None, percentile(delays, .5), percentile(delays, .99), failed, notes)


def idle_connections(svc: Recsvc, data: Data, count: int, seconds: float, use_wrk: bool) -> Row:
    """``count`` idle connections held open while one client asks for a ready 64 KiB file."""
    idle: list[socket.socket] = []
    try:
        for _ in range(count):
            idle.append(socket.create_connection((HOST, svc.port), timeout=10))
        time.sleep(0.3)  # let the server admit them all
        rss_note = svc.rss_notes()[1]
        result = run_load(HOST, svc.port, "/api/recordings/file/CA64k", 1, seconds, use_wrk=use_wrk,
                          headers={"Authorization": f"Bearer {data.token}"})
        closed = 0
        for sock in idle:  # a refused (503) or dropped idle connection is readable
            sock.setblocking(False)
            try:
                if sock.recv(1, socket.MSG_PEEK) is not None:
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
    finally:
        for sock in idle:
            sock.close()
    return load_row("idle_1000", result, f"{count} idle connections, {closed} of them refused or closed; "
                    f"1 client GETs file_64k meanwhile; VmRSS with them open: {rss_note}")


# ---------------------------------------------------------------- the table


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def with_ratio(row: Row, ref: Row | None, target: float | None = None, p99_limit: float | None = None) -> None:
    """Append the ratio to nginx's row from this run (and the issue's target, if any)."""
    parts = []
    if ref is not None and ref.rate and row.rate is not None:
        ratio = row.rate / ref.rate
        part = f"{ratio:.2f}x nginx req/s"
        if target is not None:
            part += f" (target >={target}: {'met' if ratio >= target else 'NOT MET'})"
        parts.append(part)
        if ref.p99_ms and row.p99_ms:
            parts.append(f"p99 {row.p99_ms / ref.p99_ms:.1f}x nginx's")
    elif target is not None:
        parts.append(f"no nginx: ratio target >={target} not measured")
    if p99_limit is not None and row.p99_ms is not None:
        parts.append(f"p99<={p99_limit:g} ms: {'met' if row.p99_ms <= p99_limit else 'NOT MET'}")
    row.notes = "; ".join(p for p in [row.notes, *parts] if p)


def render(rows: list[Row]) -> str:
    header = ("scenario", "req/s", "p50 ms", "p99 ms", "errors", "notes")
    cells = [header] + [(r.scenario, fmt(r.rate, 0), fmt(r.p50_ms, 2), fmt(r.p99_ms, 2),
                         "-" if r.errors is None else str(r.errors), r.notes) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    lines = []
    for n, c in enumerate(cells):
        lines.append("| " + " | ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i])
                                       for i in range(5)) + f" | {c[5]} |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|---|")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description="Benchmark recsvc on 127.0.0.1; prints one table.")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load scenario (default 3)")
    parser.add_argument("--smoke", action="store_true", help="1 s per scenario and smaller sets, for CI")
    parser.add_argument("--no-wrk", action="store_true", help="use the standard-library generator even if wrk is installed")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx reference rows")
    parser.add_argument("--no-nodes", action="store_true", help="skip the Several nodes table (bench/nodes.py)")
    parser.add_argument("--players", type=int, default=None, help="players per playback scenario (default 100; smoke 20)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="recsvc serve --processes (default: the CPU count); above 1 with --counter sqlite://")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes (default 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = 1.0 if args.smoke else max(1.0, args.duration)
    players = args.players or (20 if args.smoke else 100)
    calls, fillers, starts = (200, 10, 1) if args.smoke else (2000, 50, 3)
    use_wrk = have_wrk() and not args.no_wrk
    rows: list[Row] = []
    refs: dict[str, Row] = {}
    workdir = tempfile.mkdtemp(prefix="recsvc-bench-")
    upstream = FakeUpstream(HOST).start()
    svc = nginx = None
    try:
        # Start-up: fresh data dirs, default settings.
        ready = []
        for n in range(starts):
            probe = Recsvc(os.path.join(workdir, f"start{n}"))
            ready.append(probe.ready_after * 1000)
            probe.stop()
        flags = service_flags(args.processes)
        svc = Recsvc(os.path.join(workdir, "data"), *flags, processes=args.processes)
        ready.append(svc.ready_after * 1000)
        median = percentile(ready, .5)
        rows.append(Row("start_to_healthz", None, median, max(ready), None,
                        f"Popen to first /healthz 200, {len(ready)} starts: "
                        + ", ".join(f"{r:.0f}" for r in ready) + f" ms; target <=500 ms: "
                        f"{'met' if median <= 500 else 'NOT MET'}"))
        rss_fresh = rss_mib(svc.pid)
        data = seed(svc, upstream, calls, fillers)
        time.sleep(0.5)
        rss_idle, rss_note = svc.rss_notes()
        rows.append(Row("rss_idle", notes=f"VmRSS after seeding, no load: {rss_note} "
                        f"(first process {rss_fresh:.1f} MiB right after start); "
                        f"target <=30 MiB (the first process, which is all of a default serve): "
                        f"{'met' if rss_idle <= 30 else 'NOT MET'}"))

        if not args.no_nginx and shutil.which("nginx"):
            nginx = Nginx(workdir, os.path.dirname(data.one_mib_file), data.poll_202_body, args.nginx_workers)
            one, small = os.path.basename(data.one_mib_file), os.path.basename(data.small_file)
            for name, path, conns, headers, method in (
                    ("file_1m", f"/{one}", 16, None, "GET"),
                    ("file_64k", f"/{small}", 16, None, "GET"),
                    ("range_64k", f"/{one}", 16, {"Range": "bytes=0-65535"}, "GET"),
                    ("head", f"/{one}", 16, None, "HEAD"),
                    ("poll_202", "/poll", 64, None, "GET")):
                result = run_load(HOST, nginx.port, path, conns, seconds, use_wrk=use_wrk, headers=headers, method=method)
                refs[name] = load_row(f"nginx_{name}", result, f"reference, {conns} connections")

        auth = {"Authorization": f"Bearer {data.token}"}
        file_path = "/api/recordings/file/"
        for name, sid, conns, extra, method, expected, notes in (
                ("file_1m", "CA1m", 16, {}, "GET", 200, "1 MiB, 16 keep-alive connections"),
                ("file_64k", "CA64k", 16, {}, "GET", 200, "64 KiB, 16 keep-alive connections"),
                ("range_64k", "CA1m", 16, {"Range": "bytes=0-65535"}, "GET", 206, "206, 64 KiB of the 1 MiB file, 16 connections"),
                ("head", "CA1m", 16, {}, "HEAD", 200, "HEAD of a ready file, 16 connections"
                 + ("; stdlib generator (wrk cannot do HEAD)" if use_wrk else "")),
                ("poll_202", "CApending", 64, {}, "GET", 202, "202 of a pending job, 64 connections")):
            wrong = check(svc, file_path + sid, data.token, expected, method, extra)
            result = run_load(HOST, svc.port, file_path + sid, conns, seconds, use_wrk=use_wrk,
                              headers={**auth, **extra}, method=method)
            row = load_row(name, result, wrong + notes)
            target = {"file_1m": 0.65, "poll_202": 0.08}.get(name)
            with_ratio(row, refs.get(name), target, 100 if name == "poll_202" else None)
            rows.append(row)

        rows.append(thundering_herd(svc, upstream, data, 500))
        rows.append(playback(svc, upstream, data, players, prefer_wait=False))
        rows.append(playback(svc, upstream, data, players, prefer_wait=True))
        rows.append(idle_connections(svc, data, 1000, seconds, use_wrk))
        time.sleep(2.5)  # closed connections linger up to 2 s before their threads end
        rows.append(Row("rss_after", notes=f"VmRSS after every scenario: {svc.rss_notes()[1]}"))
        rows.append(Row("hung_upstream_share", *hung_upstream_share(Recsvc, ADMIN_TOKEN, workdir, upstream, sized_wav,
                                                                   args.smoke)))
        rows.extend(refs[name] for name in ("file_1m", "file_64k", "range_64k", "head", "poll_202") if name in refs)
    finally:
        if nginx is not None:
            nginx.stop()
        upstream.stop()
        if svc is not None:
            svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    generator = "wrk" if use_wrk else "standard-library threads (wrk not installed)" if not have_wrk() else "standard-library threads"
    print(f"recsvc bench: {seconds:g} s per scenario; load generator: {generator}; "
          f"nginx: {nginx.version + f', {args.nginx_workers} worker process(es)' if nginx else 'not installed' if not shutil.which('nginx') else 'skipped'}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"recsvc flags: {' '.join(flags)}")
    print(render(rows))
    if not args.no_nodes:  # after the single process is stopped, so the two never share the CPUs
        from bench.nodes import several_nodes  # here: bench/nodes.py imports this module

        print()
        print(several_nodes(smoke=args.smoke, seconds=seconds, players=10 if args.smoke else players, use_wrk=use_wrk),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
