"""The "hung upstream share" row: 16 download threads at the seed's timings, 20% of calls hang.

Theory of operation. One recsvc process with ``--workers 16 --job-timeout 2``
and the default ``--download-timeout`` (30 s), as the seed ran it, and a
fake upstream where one call in five never answers and the rest answer at
once. Every call gets a player that follows CONTRACT 7 (poll, wait
Retry-After clamped to 1..10 s, stop on anything but 202), all started
together. Measured from outside, so the same code measures any version:

- healthy calls served per second: healthy 200s over the time until the
  last healthy call's player stopped (served or given up), and how many of
  them were served at all within the bound;
- threads held by abandoned jobs: every 0.25 s, the process's established
  connections to the upstream (each is a download thread in a request)
  minus the jobs the database says are running; what is left is a thread
  still in a request for a job that is no longer its own.

Nothing is asserted; every loop is bounded.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import sqlite3
import threading
import time

HOST = "127.0.0.1"
FLAGS = ("--workers", "16", "--job-timeout", "2", "--heartbeat-interval", "0.5", "--retry-after", "1",
         "--recovery-retry-after", "1", "--allow-upstream", "loopback", "--shutdown-grace", "1")
HUNG_SHARE = 0.2


def upstream_connections(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` to ``port`` on loopback."""
    inodes = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                    if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                        count += 1
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return count


def running_jobs(data_dir: str) -> int:
    conn = sqlite3.connect(f"file:{os.path.join(data_dir, 'recsvc.sqlite3')}?mode=ro", uri=True, timeout=1)
    try:
        return conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'running'").fetchone()[0]
    finally:
        conn.close()


def play_like_a_player(port: int, token: str, call_sid: str, deadline: float) -> tuple[int, float | None, str]:
    """(last status, monotonic time of the 200 or None, error code); CONTRACT 7 with its waits.
    The player's own end is ``time.monotonic()`` when it returns."""
    status, code = 0, ""
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            conn.request("GET", f"/api/recordings/file/{call_sid}", headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            body = resp.read()
            status = resp.status
            retry_after = resp.getheader("Retry-After", "2")
        except (OSError, http.client.HTTPException):
            status, retry_after = 0, "1"
        finally:
            conn.close()
        if status == 200:
            return status, time.monotonic(), ""
        if status not in (202, 0, 502, 503, 504):
            try:
                code = json.loads(body).get("error", "")
            except ValueError:
                code = ""
            return status, None, code
        time.sleep(min(10, max(1, int(retry_after or 1))))
    return status, None, "still waiting at the bound"


def hung_upstream_share(svc, upstream, token: str, calls: int, bound: float, body: bytes):
    """Run the scenario on a started recsvc (``svc``: port, pid, data_dir); returns its row's values."""
    hung = {f"CAhung{i:04d}" for i in range(calls) if i % int(1 / HUNG_SHARE) == 0}
    sids = [f"CAhung{i:04d}" for i in range(calls)]
    for sid in sids:
        path = f"/rec/share/{sid}"
        upstream.set(path, body=body, hang=sid in hung)
        svc.http("PUT", f"/api/calls/{sid}", token=token, body={"recording_url": upstream.url(path)})
    outcome: dict[str, tuple[int, float | None, str]] = {}
    upstream_port = int(upstream.base_url.rsplit(":", 1)[1])
    held: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            try:
                held.append(max(0, upstream_connections(svc.pid, upstream_port) - running_jobs(svc.data_dir)))
            except sqlite3.Error:
                continue

    ended: dict[str, float] = {}

    def player(sid: str) -> None:
        outcome[sid] = play_like_a_player(svc.port, token, sid, deadline)
        ended[sid] = time.monotonic() - started

    started = time.monotonic()
    deadline = started + bound
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    players = [threading.Thread(target=player, args=(sid,), daemon=True) for sid in sids]
    for thread in players:
        thread.start()
    for thread in players:
        thread.join(bound + 40)
    stop.set()
    sampler.join(2)
    upstream.release()
    healthy = [sid for sid in sids if sid not in hung]
    served = [outcome[sid][1] - started for sid in healthy if sid in outcome and outcome[sid][1] is not None]
    lost: dict[str, int] = {}
    for sid in healthy:
        status, landed, code = outcome.get(sid, (0, None, "no answer"))
        if landed is None:
            lost[f"{status} {code}".strip()] = lost.get(f"{status} {code}".strip(), 0) + 1
    hung_ends: dict[str, int] = {}
    for sid in hung:
        status, _, code = outcome.get(sid, (0, None, "no answer"))
        hung_ends[f"{status} {code}".strip()] = hung_ends.get(f"{status} {code}".strip(), 0) + 1
    last = max((ended[sid] for sid in healthy if sid in ended), default=0.0)
    rate = len(served) / last if last else 0.0
    mean_held = sum(held) / len(held) if held else 0.0
    return {
        "rate": rate, "served": served, "healthy": len(healthy), "lost": lost, "hung_ends": hung_ends,
        "held_max": max(held, default=0), "held_mean": mean_held, "samples": len(held), "elapsed": last,
    }


def row_values(result: dict) -> tuple[float, float | None, float | None, int, str]:
    """(rate, p50 ms, p99 ms, healthy calls not served, notes) of the bench table's row."""
    from .load import percentile

    served = [seconds * 1000 for seconds in result["served"]]
    notes = (f"16 threads, job-timeout 2, download-timeout 30 (default), {HUNG_SHARE:.0%} of "
             f"{result['healthy'] + sum(result['hung_ends'].values())} calls hang; healthy served "
             f"{len(served)}/{result['healthy']}, the last healthy player done after {result['elapsed']:.1f} s "
             f"(p50/p99 = time to the 200)"
             f"{'; not served: ' + str(result['lost']) if result['lost'] else ''}; hung calls ended "
             f"{result['hung_ends']}; threads held by abandoned jobs: max {result['held_max']}, "
             f"mean {result['held_mean']:.2f} over {result['samples']} samples")
    return result["rate"], percentile(served, .5), percentile(served, .99), result["healthy"] - len(served), notes


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.hung_share [--smoke]``: this row alone, on any version of recsvc."""
    import argparse
    import shutil
    import tempfile

    from recsvc.demo.audio import sized_wav
    from recsvc.demo.fake_upstream import FakeUpstream

    from .run import ADMIN_TOKEN, Recsvc

    parser = argparse.ArgumentParser(prog="bench.hung_share")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="recsvc-bench-hung-")
    upstream = FakeUpstream(HOST).start()
    try:
        rate, p50, p99, lost, notes = run_scenario(Recsvc, ADMIN_TOKEN, workdir, upstream, sized_wav, args.smoke)
    finally:
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"hung_upstream_share: {rate:.1f} healthy calls/s, p50 {p50 or 0:.0f} ms, p99 {p99 or 0:.0f} ms, "
          f"{lost} healthy not served; {notes}")
    return 0


def run_scenario(recsvc_class, admin_token: str, workdir: str, upstream, sized_wav, smoke: bool):
    """Start recsvc with FLAGS, run the scenario, stop it; the row's values."""
    svc = recsvc_class(os.path.join(workdir, "hung"), *FLAGS)
    try:
        status, _, body = svc.http("POST", "/admin/businesses", token=admin_token, body={"name": "Hung Ltd"})
        token = json.loads(body)["token"]
        result = hung_upstream_share(svc, upstream, token, calls=40 if smoke else 100, bound=30 if smoke else 60,
                                     body=sized_wav(64 * 1024, "share"))
    finally:
        upstream.release()
        svc.stop()
    return row_values(result)


if __name__ == "__main__":
    raise SystemExit(main())
