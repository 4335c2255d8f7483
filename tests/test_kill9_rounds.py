"""Seeded kill -9 rounds: a real ``recsvc serve`` killed at random moments on one data dir.

CONTRACT 8.4 (a half-written or corrupt file is never served, across crashes
and restarts) and 8.6 (jobs orphaned by a crash are replaced at start, with
no operator). Each round starts ``python -m recsvc serve`` on the same data
dir, gives some calls a new recording (their upstream serves a different WAV,
slowly), lets a reader play every call, and sends SIGKILL at a moment drawn
from a seeded ``random.Random``; a few rounds are killed while still starting.
After each kill the data dir is checked: every recording row names a file of
exactly its size and sha256, holding exactly its upstream's bytes. After each
start, no job is left running by a dead process. At the end every call is
played to a 200 with its exact bytes and no job is left active.

RECSVC_KILL_ROUNDS (default 20) and RECSVC_KILL_SEED choose the rounds.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import signal
import sqlite3
import threading
import time

from conftest import ADMIN_TOKEN, request, spawn_recsvc, wait_listening
from recsvc.run.app import DATABASE_FILE
from recsvc.demo.audio import sized_wav
from recsvc.storage.files import TEMP_SUFFIX, process_alive
from recsvc.core.worker import parse_worker_id

ROUNDS = int(os.environ.get("RECSVC_KILL_ROUNDS", "20"))
SEED = int(os.environ.get("RECSVC_KILL_SEED", "8042"))
CALLS = ("CAK0", "CAK1", "CAK2", "CAK3")
SERVE_FLAGS = ("--port", "0", "--admin-token", ADMIN_TOKEN, "--allow-upstream", "loopback", "--workers", "2",
               "--heartbeat-interval", "0.2", "--job-timeout", "30", "--download-timeout", "5",
               "--idle-timeout", "2", "--shutdown-grace", "2")


class Recordings:
    """What the upstream serves: every URL ever given to a call, and its bytes."""

    def __init__(self, upstream, rng: random.Random):
        self.upstream = upstream
        self.rng = rng
        self.bytes_of_url: dict[str, bytes] = {}
        self.bodies_of_call: dict[str, set[bytes]] = {call: set() for call in CALLS}
        self.current: dict[str, str] = {}

    def new_url(self, call_sid: str, version: int) -> str:
        body = sized_wav(self.rng.randrange(40_000, 160_000, 2), seed=f"{call_sid}-{version}")
        seconds = self.rng.uniform(0.15, 0.9)  # a slow upstream: the kill often lands mid-download
        chunks = 12
        url = self.upstream.set(f"/{call_sid}/{version}.wav", body=body, chunk_size=len(body) // chunks + 1,
                                chunk_delay=seconds / chunks)
        self.bytes_of_url[url] = body
        self.bodies_of_call[call_sid].add(body)
        self.current[call_sid] = url
        return url


class Reader(threading.Thread):
    """Plays every call over and over; a 200 must carry exactly an upstream's bytes."""

    def __init__(self, base_url: str, token: str, recordings: Recordings):
        super().__init__(daemon=True)
        self.host, port = base_url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.token = token
        self.recordings = recordings
        self.stopping = threading.Event()
        self.ok = self.truncated = 0
        self.wrong: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            for call_sid in CALLS:
                self.play(call_sid)
            self.stopping.wait(0.03)

    def play(self, call_sid: str) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=3)
        try:
            conn.request("GET", f"/api/recordings/file/{call_sid}", headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            body = response.read()
        except http.client.IncompleteRead:
            self.truncated += 1  # the kill cut the answer short; its Content-Length tells the player
            return
        except (OSError, http.client.HTTPException):
            return
        finally:
            conn.close()
        if response.status == 200:
            if body in self.recordings.bodies_of_call[call_sid]:
                self.ok += 1
            else:
                self.wrong.append(f"{call_sid}: 200 with {len(body)} bytes sha256 {hashlib.sha256(body).hexdigest()[:12]}")


def _database(data_dir) -> sqlite3.Connection:
    return sqlite3.connect(os.path.join(data_dir, DATABASE_FILE), timeout=5)


def check_recordings(data_dir, recordings: Recordings) -> list[str]:
    """CONTRACT 8.4 on disk: every row names an intact file holding its upstream's exact bytes."""
    problems = []
    with _database(data_dir) as db:
        rows = db.execute("SELECT call_sid, recording_url, path, size, sha256 FROM recordings").fetchall()
    for call_sid, url, path, size, sha256 in rows:
        try:
            with open(os.path.join(data_dir, "recordings", path), "rb") as handle:
                data = handle.read()
        except OSError as exc:
            problems.append(f"{call_sid}: row names {path}, which cannot be read: {exc}")
            continue
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            problems.append(f"{call_sid}: {path} has {len(data)} bytes, the row says {size} / {sha256[:12]}")
        elif data != recordings.bytes_of_url.get(url):
            problems.append(f"{call_sid}: {path} is not the bytes of its upstream {url}")
    return problems


def running_jobs(data_dir) -> list[tuple[int, str, str]]:
    with _database(data_dir) as db:
        return db.execute("SELECT id, call_sid, worker_id FROM jobs WHERE status = 'running'").fetchall()


def dead_temp_files(data_dir) -> list[str]:
    leftovers = []
    for folder, _, names in os.walk(os.path.join(data_dir, "recordings")):
        for name in names:
            if name.endswith(TEMP_SUFFIX):
                pid = name[1:].rsplit(".", 3)[1]
                if not process_alive(int(pid)):
                    leftovers.append(name)
    return leftovers


def test_kill9_rounds_never_serve_a_corrupt_file_and_replace_every_orphan(tmp_path, upstream):
    rng = random.Random(SEED)
    data_dir = tmp_path / "data"
    recordings = Recordings(upstream, rng)
    token = None
    figures = dict(rounds=0, kills=0, kills_while_starting=0, kills_with_downloads_running=0, temp_files_left_by_kills=0,
                   plays_200_checked=0, answers_cut_short=0)
    problems: list[str] = []
    started = time.monotonic()
    for round_ in range(ROUNDS):
        figures["rounds"] += 1
        proc = spawn_recsvc("serve", data_dir, *SERVE_FLAGS)
        reader = None
        try:
            if round_ and rng.random() < 0.15:  # killed while starting: mid-migration, mid-recovery
                time.sleep(rng.uniform(0.02, 0.3))
                figures["kills_while_starting"] += 1
            else:
                base_url = wait_listening(proc)
                dead = [job for job in running_jobs(data_dir)
                        if parse_worker_id(job[2] or "") is None or parse_worker_id(job[2])[1] != proc.pid]
                problems += [f"round {round_}: job {job_id} of {call} still running for dead worker {worker}"
                             for job_id, call, worker in dead]
                problems += [f"round {round_}: temporary file {name} of a dead process survived the start"
                             for name in dead_temp_files(data_dir)]
                if token is None:
                    token = request(base_url, "POST", "/admin/businesses", token=ADMIN_TOKEN, body={"name": "k"}).json["token"]
                    changed = CALLS
                else:
                    changed = rng.sample(CALLS, rng.randint(1, 3))
                for call_sid in changed:
                    url = recordings.new_url(call_sid, round_)
                    answer = request(base_url, "PUT", f"/api/calls/{call_sid}", token=token, body={"recording_url": url})
                    assert answer.status in (200, 201), answer.body
                reader = Reader(base_url, token, recordings)
                reader.start()
                time.sleep(rng.uniform(0.05, 0.9))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            figures["kills"] += 1
            if reader is not None:
                reader.stopping.set()
                reader.join(5)
                figures["plays_200_checked"] += reader.ok
                figures["answers_cut_short"] += reader.truncated
                problems += [f"round {round_}: {wrong}" for wrong in reader.wrong]
        if running_jobs(data_dir):
            figures["kills_with_downloads_running"] += 1
        figures["temp_files_left_by_kills"] += len(dead_temp_files(data_dir))
        problems += [f"round {round_}: {p}" for p in check_recordings(data_dir, recordings)]

    # The last start: recovery, then every call to a 200 with its exact bytes.
    proc = spawn_recsvc("serve", data_dir, *SERVE_FLAGS)
    lost = []
    try:
        base_url = wait_listening(proc)
        problems += [f"after the last start: job {j[0]} of {j[1]} still running for {j[2]}"
                     for j in running_jobs(data_dir) if parse_worker_id(j[2] or "")[1] != proc.pid]
        deadline = time.monotonic() + 30
        pending = set(CALLS)
        while pending and time.monotonic() < deadline:
            for call_sid in sorted(pending):
                answer = request(base_url, "GET", f"/api/recordings/file/{call_sid}", token=token)
                if answer.status == 200:
                    if answer.body != recordings.bytes_of_url[recordings.current[call_sid]]:
                        problems.append(f"final: {call_sid} answered 200 with other bytes than its upstream's")
                    pending.discard(call_sid)
                elif answer.status != 202:
                    problems.append(f"final: {call_sid} answered {answer.status} {answer.body[:120]!r}")
                    pending.discard(call_sid)
            time.sleep(0.1)
        lost = sorted(pending)
        with _database(data_dir) as db:
            active = db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
            orphaned = db.execute("SELECT id, business_id, call_sid, recording_url, attempt FROM jobs "
                                  "WHERE error_code = 'orphaned'").fetchall()
            replaced = sum(1 for job_id, business_id, call_sid, url, attempt in orphaned
                           if db.execute("SELECT 1 FROM jobs WHERE id > ? AND business_id = ? AND call_sid = ? "
                                         "AND recording_url = ? AND attempt = ?",
                                         (job_id, business_id, call_sid, url, attempt)).fetchone())
            completed = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'completed'").fetchone()[0]
        problems += check_recordings(data_dir, recordings)
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    figures.update(jobs_orphaned=len(orphaned), orphans_replaced=replaced, downloads_completed=completed,
                   calls_lost=len(lost), active_jobs_left=active, seconds=round(time.monotonic() - started, 1))
    print("\nkill -9 rounds (seed %d): %s" % (SEED, ", ".join(f"{k} {v}" for k, v in figures.items())))
    assert not problems, f"{len(problems)} problem(s), figures {figures}:\n" + "\n".join(problems[:20])
    assert not lost, f"calls that never reached 200: {lost}; figures {figures}"
    assert replaced == len(orphaned), f"orphans not replaced; figures {figures}"
    assert active == 0, f"jobs left active after the final recovery; figures {figures}"
    assert exit_code == 0
    assert figures["kills"] >= ROUNDS and figures["plays_200_checked"] > 0, figures
    assert len(orphaned) > 0 and figures["kills_with_downloads_running"] > 0, \
        f"no kill landed mid-download, so nothing was proven; figures {figures}"
