"""``recsvc migrate``: move a stopped node's state from its data dir's SQLite database into an empty Redis store.

Usage: recsvc migrate --from sqlite://DATA_DIR --to redis://[:password@]host:port/db

Theory of operation. The source is opened read-only and read in one
snapshot (one SQLite read transaction), so the move sees one moment of it and
never changes it: the data dir still serves on SQLite afterwards, as a way back.
Every row becomes the keys ``recsvc.storage.redis_keys`` describes, with the
values as the Redis store writes them (numbers as Python's ``repr``, NULL as
an absent field): businesses and their token hashes, Twilio accounts, calls,
jobs with their indexes (the queue keeps its order: score ``queue_seq``, then
id), recordings (their ``path`` is relative to ``recordings/`` of the data
dir, which the nodes are given again, so the files stay where they are), the
pause flag, the live retry counters of ``--counter sqlite://`` with the time
they have left, and the id sequences, so that new ids never repeat old ones.

What a SQLite node does at its next start is done here too, so that a Redis
node answers as that node would: a job left running by a process of this
host that is gone is failed ``orphaned`` and replaced in its queue place
(CONTRACT 4). Worker rows are not moved: the source's workers are stopped
(see below), and on Redis a worker's row is a lease only its own process renews.

All or nothing. The writes go out in pipelined batches inside one
MULTI/EXEC, under WATCH of the keys a starting node writes first: Redis applies
the whole move at once, or (the connection lost, a node started on the
target meanwhile) none of it. The layout mark ``recsvc:layout`` is the last
command, so a reader never sees a store that is marked but incomplete.

Refused, with one line and exit status 2, before anything is written: bad
flags, a source that is not a recsvc data dir (or of another schema version),
a source a live process is serving (a worker heartbeat fresher than
LIVENESS_BEATS intervals: stop its nodes first; API-only processes
(``--workers 0``) leave no heartbeat and are not seen), and a target that
cannot be reached or holds any ``recsvc:`` key or retry counter. Exit status 1: Redis failed
during the move, and nothing of it was applied.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Iterable, Iterator, TextIO

from ..contract.model import FAILED, ORPHANED, ORPHANED_MESSAGE, QUEUED, RUNNING
from ..contract.settings import LIVENESS_BEATS, parse_redis_url
from . import redis_keys as K
from .counter import retry_key
from .files import HOSTNAME, parse_worker_id, process_alive
from .resp import RedisConnection, RedisProtocolError, RedisReplyError
from .store import SCHEMA_VERSION

BATCH = 2000  # commands per round trip
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 300.0  # EXEC of a large move runs for seconds on the server

# Every row of the source, in the field order of redis_keys (the SQLite columns bear the same names).
DUMP = {
    "businesses": "SELECT id, name, token_hash, created_at FROM businesses ORDER BY id",
    "twilio_accounts": "SELECT account_sid, business_id, auth_token, media_format FROM twilio_accounts",
    "calls": "SELECT business_id, call_sid, recording_url, credentials, created_at, updated_at FROM calls",
    "jobs": f"SELECT {', '.join(K.JOB_FIELDS)} FROM jobs ORDER BY id",
    "recordings": f"SELECT {', '.join(K.RECORDING_FIELDS)}, last_played_at FROM recordings",
    "workers": "SELECT id, host, pid, heartbeat_interval, heartbeat_at FROM workers",
    "paused": "SELECT workers_paused FROM control WHERE id = 1",
    "retry_counters": "SELECT key, value, expires_at FROM retry_counters",
    "sequences": "SELECT name, seq FROM sqlite_sequence",
}


class Refused(Exception):
    """The move cannot start (exit status 2); nothing was written."""


class MoveFailed(Exception):
    """Redis failed during the move (exit status 1); nothing of it was applied."""


@dataclass
class Moved:
    """What was moved, for the closing line."""

    counts: dict[str, int] = field(default_factory=dict)
    orphans: int = 0

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


def _value(value) -> str:
    """A field as the Redis store writes it (recsvc.storage.redis_store): numbers as repr."""
    return repr(value) if isinstance(value, float) else str(value)


def _hset(key: str, pairs: Iterable[tuple[str, object]]) -> tuple:
    """HSET of the pairs whose value is not NULL (an absent field, as the Redis store keeps it)."""
    flat = [item for name, value in pairs if value is not None for item in (name, _value(value))]
    return ("HSET", key, *flat)


# ---- the source

def source_dir(url: str) -> str:
    if not url.startswith("sqlite://"):
        raise Refused(f"--from must be sqlite://DATA_DIR, got {url!r}")
    path = url[len("sqlite://"):]
    if not path:
        raise Refused("--from must name the data dir: sqlite://DATA_DIR")
    return path


def open_source(data_dir: str, database_file: str) -> sqlite3.Connection:
    """The data dir's database, read-only, checked to be recsvc's of this schema version."""
    if not os.path.isdir(data_dir):
        raise Refused(f"--from {data_dir} is not a folder")
    path = os.path.join(data_dir, database_file)
    if not os.path.isfile(path):
        raise Refused(f"--from {data_dir} is not a recsvc data dir (no {database_file} in it)")
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro", uri=True,
                               isolation_level=None, timeout=5.0)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise Refused(f"--from {path} cannot be read as a recsvc database: {exc}") from None
    if version == 0 or not {"businesses", "calls", "jobs"} <= tables:
        conn.close()
        raise Refused(f"--from {path} is not a recsvc database")
    if version != SCHEMA_VERSION:
        conn.close()
        hint = "start this recsvc's serve on it once to upgrade it" if version < SCHEMA_VERSION else \
            "migrate with the recsvc that wrote it"
        raise Refused(f"--from {path} has schema version {version}, this recsvc reads {SCHEMA_VERSION}: {hint}")
    return conn


def check_not_served(workers: list[tuple], data_dir: str, now: float) -> None:
    """Refuse a data dir whose workers still beat (CONTRACT 1, live worker): its node is running, and
    whatever it wrote after the snapshot would be lost."""
    for worker_id, host, pid, interval, heartbeat_at in workers:
        age = now - heartbeat_at
        if age < LIVENESS_BEATS * interval:
            raise Refused(f"--from {data_dir} is in use: worker {worker_id} (host {host}, pid {pid}) beat "
                          f"{max(age, 0.0):.1f}s ago; stop every recsvc serve and worker on it first "
                          f"(a killed one's heartbeat is stale after {LIVENESS_BEATS * interval:g}s)")


def _orphaned(worker_id: str | None, hosts: dict[str, tuple[str, int]]) -> bool:
    """A running job's worker is a process of this host that no longer exists (CONTRACT 4, orphans)."""
    if not worker_id:
        return False
    owner = hosts.get(worker_id)
    if owner is None:  # its row is gone: the id itself names host and pid
        owner = parse_worker_id(worker_id)
    return owner is not None and owner[0] == HOSTNAME and not process_alive(owner[1])


# ---- the commands of the move

def move_commands(conn: sqlite3.Connection, moved: Moved, now: float) -> Iterator[tuple]:
    """Every command that writes the source's state into an empty Redis store, the layout mark last."""
    # SQLite makes sqlite_sequence at the first insert into an AUTOINCREMENT table: none in an unused data dir.
    unused = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone() is None
    sequences = {} if unused else dict(conn.execute(DUMP["sequences"]).fetchall())
    last_business = sequences.get("businesses", 0)
    for bid, name, token_hash, created_at in conn.execute(DUMP["businesses"]):
        yield _hset(K.business(bid), (("name", name), ("token_hash", token_hash), ("created_at", created_at)))
        yield "HSET", K.BUSINESS_BY_TOKEN, token_hash, bid
        last_business = max(last_business, bid)
        moved.add("businesses")
    yield "SET", K.NEXT_BUSINESS, last_business

    for account_sid, bid, auth_token, media_format in conn.execute(DUMP["twilio_accounts"]):
        yield _hset(K.twilio(account_sid), (("business_id", bid), ("auth_token", auth_token),
                                            ("media_format", media_format)))
        yield "SET", K.twilio_of(bid), account_sid
        moved.add("Twilio accounts")

    for bid, sid, url, credentials, created_at, updated_at in conn.execute(DUMP["calls"]):
        yield _hset(K.call(bid, sid), (("recording_url", url), ("credentials", credentials),
                                       ("created_at", created_at), ("updated_at", updated_at)))
        yield "SADD", K.calls_by_sid(sid), bid
        moved.add("calls")

    hosts = {row[0]: (row[1], row[2]) for row in conn.execute(DUMP["workers"])}
    last_job = sequences.get("jobs", 0)
    counts = {status: 0 for status in (QUEUED, RUNNING, "completed", FAILED)}
    replaced: list[dict] = []
    for row in conn.execute(DUMP["jobs"]):
        job = dict(zip(K.JOB_FIELDS, row))
        last_job = max(last_job, job["id"])
        if job["status"] == RUNNING and _orphaned(job["worker_id"], hosts):
            job.update(status=FAILED, finished_at=now, error_code=ORPHANED, error_message=ORPHANED_MESSAGE)
            replaced.append(job)
        yield from _job_commands(job)
        counts[job["status"]] += 1
        moved.add("jobs")
    for orphan in replaced:  # its replacement: same call, URL, attempt and queue place (CONTRACT 4)
        last_job += 1
        job = dict.fromkeys(K.JOB_FIELDS)
        job.update({name: orphan[name] for name in ("business_id", "call_sid", "recording_url", "attempt",
                                                     "queue_seq")}, id=last_job, status=QUEUED, created_at=now)
        yield from _job_commands(job)
        counts[QUEUED] += 1
        moved.add("jobs")
        moved.orphans += 1
    yield "SET", K.NEXT_JOB, last_job
    yield "HSET", K.JOB_COUNT, *(item for pair in counts.items() for item in pair)
    moved.add("queued", counts[QUEUED])

    total_bytes = files = 0
    for row in conn.execute(DUMP["recordings"]):
        recording = dict(zip((*K.RECORDING_FIELDS, "last_played_at"), row))
        bid, sid = recording["business_id"], recording["call_sid"]
        yield _hset(K.recording(bid, sid), recording.items())
        yield "ZADD", K.RECORDINGS_BY_PLAY, _value(recording["last_played_at"]), K.recording_member(bid, sid)
        total_bytes += recording["size"]
        files += 1
    yield "HSET", K.RECORDINGS_SIZE, "bytes", total_bytes, "files", files
    moved.add("recordings", files)

    paused = conn.execute(DUMP["paused"]).fetchone()
    yield "HSET", K.CONTROL, "workers_paused", int(bool(paused and paused[0]))

    for key, value, expires_at in conn.execute(DUMP["retry_counters"]):
        if expires_at is None:
            yield "SET", key, value
        elif expires_at > now:  # the time it has left, as Redis counts it from now on
            yield "SET", key, value, "PX", max(1, int((expires_at - now) * 1000))
        else:
            continue
        moved.add("retry counters")

    yield "SET", K.LAYOUT, K.LAYOUT_VERSION  # last: until it is there, nodes see "holds no recsvc data"


def _job_commands(job: dict) -> Iterator[tuple]:
    """A job's hash and the indexes its status puts it in (redis_keys, jobs)."""
    job_id, bid, sid = job["id"], job["business_id"], job["call_sid"]
    yield _hset(K.job(job_id), ((name, job[name]) for name in K.JOB_FIELDS))
    yield "ZADD", K.JOBS, job_id, job_id
    yield "ZADD", K.jobs_of(bid, sid), job_id, job_id
    if job["status"] in (QUEUED, RUNNING):
        yield "SET", K.active_job(bid, sid), job_id
    if job["status"] == QUEUED:
        yield "ZADD", K.QUEUE, job["queue_seq"], K.queue_member(job_id)
    elif job["status"] == RUNNING:
        yield "SADD", K.RUNNING, job_id
        if job["worker_id"]:
            yield "SADD", K.running_of(job["worker_id"]), job_id


# ---- the target

# Written first by a node that starts on an empty store (RedisStore._check_layout): watched, so that
# such a node starting during the move makes EXEC apply nothing.
WATCHED = (K.LAYOUT, K.CONTROL, K.NEXT_BUSINESS, K.NEXT_JOB)


def first_key(conn: RedisConnection, pattern: str) -> str | None:
    """One key matching ``pattern``, or None (SCAN: no KEYS on a server others use)."""
    cursor = b"0"
    while True:
        cursor, keys = _checked(conn.pipeline([("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)])[0])
        if keys:
            return keys[0].decode("utf-8", "replace")
        if cursor == b"0":
            return None


def _checked(reply):
    if isinstance(reply, RedisReplyError):
        raise reply
    return reply


def write_all(conn: RedisConnection, commands: Iterable[tuple]) -> int:
    """MULTI, the commands in pipelined batches, EXEC; the number of commands. Raises MoveFailed."""
    conn.pipeline([("MULTI",)])
    sent = 0
    batch: list[tuple] = []

    def flush() -> None:
        for reply in conn.pipeline(batch):
            if reply != "QUEUED":
                conn.pipeline([("DISCARD",)])
                raise MoveFailed(f"Redis refused a command of the move: {reply}")
        batch.clear()

    for command in commands:
        batch.append(command)
        sent += 1
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    replies = conn.pipeline([("EXEC",)])[0]
    if replies is None:
        raise MoveFailed("a node started on the target during the move (it wrote recsvc:layout); "
                         "stop it, empty the target and migrate again")
    if isinstance(replies, RedisReplyError):
        raise MoveFailed(f"Redis refused the move: {replies}")
    failed = [reply for reply in replies if isinstance(reply, RedisReplyError)]
    if failed:  # applied in part (out of memory, say): take the mark away so that no node trusts it
        conn.pipeline([("DEL", K.LAYOUT)])
        raise MoveFailed(f"Redis failed {len(failed)} of {sent} commands ({failed[0]}); the layout mark was "
                         "removed: empty the target (every recsvc: key) and migrate again")
    return sent


def migrate(source_url: str, target_url: str, database_file: str, now: float | None = None) -> tuple[Moved, str]:
    """Move the data dir's state into the empty Redis store; (what was moved, the target as shown)."""
    data_dir = source_dir(source_url)
    try:
        address = parse_redis_url(target_url)
    except ValueError as exc:
        raise Refused(f"--to {exc}") from None
    shown = str(address)
    source = open_source(data_dir, database_file)
    try:
        source.execute("BEGIN")  # one snapshot for every read below
        now = time.time() if now is None else now
        check_not_served(source.execute(DUMP["workers"]).fetchall(), data_dir, now)
        try:
            target = RedisConnection(address, CONNECT_TIMEOUT, READ_TIMEOUT)
        except RedisReplyError as exc:
            raise Refused(f"--to {shown} refused AUTH or SELECT: {exc}") from None
        except (OSError, RedisProtocolError) as exc:
            raise Refused(f"--to {shown} cannot be reached: {exc or type(exc).__name__}") from None
        try:
            _checked(target.pipeline([("WATCH", *WATCHED)])[0])
            for pattern in (K.PREFIX + "*", retry_key("*", "*")):
                found = first_key(target, pattern)
                if found is not None:
                    raise Refused(f"--to {shown} is not empty (it holds {found}): migrate only into a store "
                                  "without recsvc keys; nothing was written")
            moved = Moved()
            write_all(target, move_commands(source, moved, now))
        except RedisReplyError as exc:
            raise MoveFailed(f"{shown} refused: {exc}") from None
        except (OSError, RedisProtocolError) as exc:
            raise MoveFailed(f"{shown} stopped answering during the move ({exc or type(exc).__name__}); "
                             "nothing of it was applied") from None
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise Refused(f"--from {data_dir} cannot be read: {exc}") from None
    finally:
        source.close()
    return moved, shown


# ---- the command line

class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit status 2 (CONTRACT 2's shape for bad input)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recsvc migrate", description=(
        "Move a stopped node's state from its data dir's SQLite database into an empty Redis store, all at "
        "once or not at all. The source is only read. Stop every serve and worker on the data dir first: a "
        "data dir whose workers still beat is refused (API-only processes, --workers 0, leave no heartbeat "
        "and are not seen). Then start the nodes with --store redis://... and the same --data-dir: the "
        "recordings stay files there. Exit status: 0 moved, 1 Redis failed during the move (nothing applied), "
        "2 refused before writing (bad flags, not a data dir, a live node, a target unreachable or not empty)."))
    parser.add_argument("--from", dest="source", metavar="sqlite://DATA_DIR", required=True,
                        help="the data dir whose recsvc.sqlite3 is moved")
    parser.add_argument("--to", dest="target", metavar="redis://HOST:PORT/DB", required=True,
                        help="an empty Redis database: redis://[:password@]host:port/db")
    return parser


def main(argv: list[str] | None = None, *, database_file: str, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        moved, shown = migrate(args.source, args.target, database_file)
    except Refused as exc:
        stderr.write(f"recsvc migrate: error: {exc}\n")
        return 2
    except MoveFailed as exc:
        stderr.write(f"recsvc migrate: failed: {exc}\n")
        return 1
    parts = ", ".join(f"{moved.counts.get(kind, 0)} {kind}" for kind in
                      ("businesses", "Twilio accounts", "calls", "jobs", "queued", "recordings", "retry counters"))
    orphans = f"; {moved.orphans} orphaned job(s) failed and replaced" if moved.orphans else ""
    stdout.write(f"recsvc migrate: moved {parts} from {source_dir(args.source)} to {shown} "
                 f"in {time.monotonic() - started:.2f}s{orphans}\n")
    return 0
