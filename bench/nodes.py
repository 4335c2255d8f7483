"""The "Several nodes" table: 1 node on SQLite, 1 node on Redis, 3 nodes on Redis, all behind nginx.

Theory of operation. Each setup is a ``tools.cluster.Cluster`` (redis-server,
the nodes, and nginx configured from docs/deploy.md "Several machines"), and
every request goes through nginx, so the rows differ only in the nodes and
the store behind it. On each, with a fake upstream of its own:

- poll_202: a call whose job never finishes (its upstream hangs), polled
  at 64 keep-alive connections; req/s and p99.
- file_1m: a cached 1 MiB recording at 16 connections (wrk when installed,
  else bench/load.py); req/s and p99.
- playback: players of CONTRACT 7 (``recsvc.player.client``, which sends
  ``Prefer: wait``), each a fresh recording whose upstream takes 1 s, all
  started together: requests per playback, and the delay from the file
  landing (its job's ``finished_at``) to the player's 200.
- kill -9: a player waits for a recording whose download hangs; the node
  running that download is killed, its upstream answers from then on, and
  two times are taken from the kill: until the replacement job completed,
  and until the player got its 200 (with the exact bytes). A single node
  has no peer to take over: it is restarted at once, as a supervisor's
  ``Restart=always`` would.

Nodes run at the default heartbeat interval (5 s); a 3-node cluster at
0.2 s repeats only the kill (smoke runs use 0.2 s throughout, to stay short).
RQ's and BullMQ's recovery times are printed beside them as documented
figures, not measured here. Nothing is asserted; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from recsvc.storage.files import parse_worker_id
from recsvc.demo.audio import sized_wav
from recsvc.demo.fake_upstream import FakeUpstream
from recsvc.player.client import RecordingClient, RecordingError

from .load import percentile, run_load
from .run import ADMIN_TOKEN, HOST, MIB, SERVICE_FLAGS, Http, check, epoch, fmt, release_together, seed

TITLE = "Several nodes"
DEFAULT_HEARTBEAT = 5.0   # CONTRACT 2's default --heartbeat-interval
SHORT_HEARTBEAT = 0.2
# (row name, nodes, store); every one behind nginx.
SETUPS = (("1 node, SQLite", 1, "sqlite"), ("1 node, Redis", 1, "redis"), ("3 nodes, Redis", 3, "redis"))
# Recovery of a job whose worker died, as each project documents it (not measured here).
REFERENCES = (
    ("RQ (documented)", "~90 + up to 600",
     "documented, not measured here: a job whose worker died is noticed about 90 s after it stopped "
     "beating, and moved out of the started registry by a cleanup pass that runs every 10 minutes"),
    ("BullMQ (documented)", "30-60",
     "documented, not measured here: a job lock of 30 s (lockDuration) and a stalled-job check every "
     "30 s (stalledInterval) put a dead worker's job back in the queue 30-60 s later"),
)
ROWS = tuple(name for name, _, _ in SETUPS) + tuple(name for name, _, _ in REFERENCES)
HEADER = ("setup", "poll_202 req/s", "poll_202 p99 ms", "file_1m req/s", "file_1m p99 ms",
          "wait: req/playback", "landing→200 p50 ms", "landing→200 p99 ms", "kill→job done s",
          "kill→player 200 s", "notes")


@dataclass
class NodesRow:
    setup: str
    poll_rate: float | None = None
    poll_p99: float | None = None
    file_rate: float | None = None
    file_p99: float | None = None
    requests_per_playback: float | None = None
    landing_p50: float | None = None
    landing_p99: float | None = None
    kill_job_s: float | None = None
    kill_player_s: float | None = None
    kill_text: str = ""            # instead of the two kill figures, for a documented row
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        kill = [self.kill_text, self.kill_text] if self.kill_text else [fmt(self.kill_job_s), fmt(self.kill_player_s)]
        return [self.setup, fmt(self.poll_rate, 0), fmt(self.poll_p99, 2), fmt(self.file_rate, 0),
                fmt(self.file_p99, 2), fmt(self.requests_per_playback, 2), fmt(self.landing_p50, 2),
                fmt(self.landing_p99, 2), *kill, "; ".join(self.notes)]


class Front:
    """nginx in front of a cluster, as bench/run.py's helpers want a server: port, http, data_dir."""

    def __init__(self, cluster):
        self.base_url = cluster.base_url
        self.port = int(cluster.base_url.rsplit(":", 1)[1])
        self.http = Http(self.port)
        self.data_dir = str(cluster.data_dir)


@dataclass
class Recovery:
    job_s: float | None
    player_s: float | None
    note: str


# ---------------------------------------------------------------- scenarios


def load_through(front: Front, token: str, call_sid: str, expected: int, connections: int, seconds: float,
                 use_wrk: bool):
    """(LoadResult, a note when the answer was not ``expected``) of GETs of one recording through nginx."""
    path = f"/api/recordings/file/{call_sid}"
    wrong = check(front, path, token, expected)
    result = run_load(HOST, front.port, path, connections, seconds, use_wrk=use_wrk,
                      headers={"Authorization": f"Bearer {token}"})
    return result, wrong.strip("; ")


def jobs_of(front: Front, call_sid: str) -> list[dict]:
    status, _, body = front.http("GET", f"/admin/jobs?call_sid={call_sid}", token=ADMIN_TOKEN)
    return json.loads(body)["jobs"] if status == 200 else []


def playback_wait(front: Front, upstream: FakeUpstream, token: str, players: int) -> tuple[NodesRow, str]:
    """``players`` players at once, each a new recording whose upstream takes 1 s; the player sends Prefer: wait."""
    body = sized_wav(64 * 1024, "playback")
    sids = []
    for i in range(players):
        sid = f"CAnodepb{i:04d}"
        url = upstream.set(f"/rec/nodes/playback/{i}", body=body, delay=1.0)
        front.http("PUT", f"/api/calls/{sid}", token=token, body={"recording_url": url})
        sids.append(sid)
    gate = threading.Barrier(players + 1)
    outcome: dict[str, tuple[int, float | None]] = {}

    def player(sid: str) -> None:
        client = RecordingClient(front.base_url, token, max_wait=90)
        gate.wait()
        try:
            recording = client.wait_for_recording(sid)
            outcome[sid] = (recording.requests, time.time())
        except RecordingError as exc:
            outcome[sid] = (exc.requests, None)

    elapsed = release_together(player, sids, gate, timeout=120)
    counts, delays, failed = [], [], 0
    for sid in sids:
        requests, landed = outcome.get(sid, (0, None))
        counts.append(requests)
        jobs = jobs_of(front, sid)
        if landed is None or not jobs or not jobs[0]["finished_at"]:
            failed += 1
            continue
        delays.append(max(0.0, (landed - epoch(jobs[0]["finished_at"])) * 1000))
    row = NodesRow("", requests_per_playback=sum(counts) / len(counts) if counts else None,
                   landing_p50=percentile(delays, .5), landing_p99=percentile(delays, .99))
    note = f"playback: {players} players, {elapsed:.1f} s in all, max {max(counts, default=0)} requests"
    if failed:
        note += f", {failed} without a 200"
    return row, note


def kill_during_download(cluster, front: Front, upstream: FakeUpstream, token: str, call_sid: str) -> Recovery:
    """kill -9 the node running ``call_sid``'s download; seconds until the replacement completed and
    until a waiting player got its 200. A node without peers is restarted at once."""
    body = sized_wav(MIB, "kill")
    path = f"/rec/nodes/kill/{call_sid}"
    url = upstream.set(path, body=body, hang=True)
    front.http("PUT", f"/api/calls/{call_sid}", token=token, body={"recording_url": url})
    played: dict[str, object] = {}

    def player() -> None:
        try:
            played["recording"] = RecordingClient(front.base_url, token, max_wait=180).wait_for_recording(call_sid)
        except RecordingError as exc:
            played["error"] = exc
        played["at"] = time.monotonic()

    thread = threading.Thread(target=player, daemon=True)
    thread.start()
    if not upstream.wait_for_hits(path, 1, timeout=30):
        return Recovery(None, None, "kill: the download never started")
    running = [job for job in jobs_of(front, call_sid) if job["status"] == "running"]
    worker = parse_worker_id(running[0]["worker_id"]) if running and running[0]["worker_id"] else None
    pids = [cluster.node_pid(i) for i in range(len(cluster.node_urls))]
    if worker is None or worker[1] not in pids:
        return Recovery(None, None, f"kill: no node runs the download (jobs: {running})")
    node = pids.index(worker[1])
    upstream.set(path, body=body)  # the replacement's download answers at once
    killed_wall, killed = time.time(), time.monotonic()
    cluster.kill_node(node)
    restarted = ""
    if len(pids) == 1:
        cluster.start_node(node)
        restarted = f", restarted at once (ready after {time.monotonic() - killed:.1f} s)"
    thread.join(200)
    jobs = jobs_of(front, call_sid)
    first = next((job for job in jobs if job["id"] == running[0]["id"]), {})
    done = next((job for job in jobs if job["status"] == "completed"), None)
    job_s = epoch(done["finished_at"]) - killed_wall if done and done["finished_at"] else None
    recording = played.get("recording")
    player_s = played["at"] - killed if recording is not None else None
    if recording is not None:
        heard = (f"the player's 200 after {recording.requests} requests, "
                 f"{'the exact bytes' if recording.body == body else 'WRONG BYTES'}")
    else:
        heard = f"the player stopped: {played.get('error', 'still waiting at the bound')}"
    failed_s = epoch(first["finished_at"]) - killed_wall if first.get("finished_at") else None
    return Recovery(job_s, player_s, f"kill: node {node} of {len(pids)}{restarted}; the killed job failed "
                    f"{first.get('error_code')} ({first.get('error_message')}) {fmt(failed_s)} s after the kill; "
                    f"{heard}")


# ---------------------------------------------------------------- one setup


def measure_setup(name: str, nodes: int, store: str, workdir: str, *, heartbeat: float, seconds: float,
                  players: int, use_wrk: bool, kill_only: bool = False) -> NodesRow:
    from tools.cluster import Cluster

    row = NodesRow(name)
    upstream = FakeUpstream(HOST).start()
    cluster = Cluster(Path(workdir), nodes=nodes, store=store, heartbeat=heartbeat, extra_flags=SERVICE_FLAGS,
                      env={"RECSVC_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        cluster.start()
        front = Front(cluster)
        data = seed(front, upstream, calls=0, cached_fillers=0)
        if not kill_only:
            poll, wrong = load_through(front, data.token, "CApending", 202, 64, seconds, use_wrk)
            row.poll_rate, row.poll_p99 = poll.rate, poll.p99_ms
            files, wrong_file = load_through(front, data.token, "CA1m", 200, 16, seconds, use_wrk)
            row.file_rate, row.file_p99 = files.rate, files.p99_ms
            row.notes += [note for note in (wrong, wrong_file) if note]
            if poll.errors or files.errors:
                row.notes.append(f"errors: poll_202 {poll.errors}, file_1m {files.errors}")
            played, note = playback_wait(front, upstream, data.token, players)
            row.requests_per_playback = played.requests_per_playback
            row.landing_p50, row.landing_p99 = played.landing_p50, played.landing_p99
            row.notes.append(note)
        recovery = kill_during_download(cluster, front, upstream, data.token, "CAnodekill")
        row.kill_job_s, row.kill_player_s = recovery.job_s, recovery.player_s
        row.notes.append(recovery.note)
    except Exception as exc:  # a setup that cannot run is a row that says why, not a lost table
        row.notes.append(f"NOT MEASURED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        upstream.release()
        upstream.stop()
        cluster.stop()
    return row


def missing_programs() -> list[str]:
    from tools.cluster import nginx_binary

    missing = [] if nginx_binary() else ["nginx"]
    return missing + [program for program in ("redis-server", "redis-cli") if shutil.which(program) is None]


# ---------------------------------------------------------------- the table


def several_nodes(*, smoke: bool, seconds: float, players: int, use_wrk: bool) -> str:
    """Measure every setup and return the table, with its title and settings."""
    heartbeat = SHORT_HEARTBEAT if smoke else DEFAULT_HEARTBEAT
    missing = missing_programs()
    rows = []
    workdir = tempfile.mkdtemp(prefix="recsvc-bench-nodes-")
    try:
        for n, (name, nodes, store) in enumerate(SETUPS):
            needs = ["nginx"] + (["redis-server", "redis-cli"] if store == "redis" else [])
            absent = [program for program in needs if program in missing]
            if absent:
                rows.append(NodesRow(name, notes=[f"not measured: {', '.join(absent)} is not installed"]))
                continue
            rows.append(measure_setup(name, nodes, store, os.path.join(workdir, f"setup{n}"), heartbeat=heartbeat,
                                      seconds=seconds, players=players, use_wrk=use_wrk))
        last = rows[-1]
        if not smoke and last.kill_job_s is not None:
            short = measure_setup(last.setup, 3, "redis", os.path.join(workdir, "short"), heartbeat=SHORT_HEARTBEAT,
                                  seconds=seconds, players=players, use_wrk=use_wrk, kill_only=True)
            last.notes.append(f"at --heartbeat-interval {SHORT_HEARTBEAT:g}: kill→job done {fmt(short.kill_job_s)} s, "
                              f"kill→player 200 {fmt(short.kill_player_s)} s ({short.notes[-1]})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows += [NodesRow(name, kill_text=figure, notes=[note]) for name, figure, note in REFERENCES]
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = [f"{TITLE}: every request through nginx (docs/deploy.md \"Several machines\"); "
             f"--heartbeat-interval {heartbeat:g}; {seconds:g} s per load; {players} players; "
             f"load average before: {load}",
             render(HEADER, [row.cells() for row in rows])]
    return "\n".join(lines)


def render(header: tuple[str, ...], cells: list[list[str]]) -> str:
    """A Markdown table: the first column left-aligned, the last one free, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header) - 1)]
    lines = []
    for n, row in enumerate([header, *cells]):
        shown = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, len(widths))]
        lines.append("| " + " | ".join(shown) + f" | {row[-1]} |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|---|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.nodes [--smoke]``: this table alone."""
    import argparse

    from .load import have_wrk

    parser = argparse.ArgumentParser(prog="bench.nodes", description="The Several nodes table alone.")
    parser.add_argument("--smoke", action="store_true", help="1 s loads, 10 players, heartbeat 0.2 s")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load (default 3)")
    parser.add_argument("--players", type=int, default=None, help="players in the playback (default 100; smoke 10)")
    args = parser.parse_args(argv)
    if not args.duration > 0 or (args.players is not None and args.players < 1):
        parser.error("--duration must be a positive number and --players at least 1")
    print(several_nodes(smoke=args.smoke, seconds=1.0 if args.smoke else max(1.0, args.duration),
                        players=args.players or (10 if args.smoke else 100), use_wrk=have_wrk()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
