"""The SQLite store: schema, migrations and every SQL statement of recsvc.

Theory of operation. Nothing else uses ``sqlite3``. The database is one
file in WAL mode (readers never wait for the writer) with a busy timeout.
Connections come from two small pools (``recsvc.storage.pool``), one for
reads and one for writes, so a request checks one out instead of
connecting, and each connection is used by one thread at a time.

- ``store.reading()`` yields a ``Tx`` for reads (one consistent snapshot).
- ``store.writing()`` yields a ``Tx`` inside ``BEGIN IMMEDIATE``: the write
  lock is taken up front, so a decide-then-act sequence (create a job,
  replace a stuck one) is atomic across threads *and* processes sharing the
  file. Busy/locked errors are retried before they surface.
- ``store.counting()`` runs the retry counter of ``--counter sqlite://``: in
  the thread's open ``writing()`` transaction when there is one, else in its
  own; its errors are ``StoreError`` (the counter fails open on them).

Invariants the schema enforces on its own:
- at most one active job per call (a partial unique index, CONTRACT 8.1);
- a job's status is one of the four (CHECK), and moves forward only because
  every status change here is a compare-and-set on the status it expects.

The schema version is ``PRAGMA user_version``; ``MIGRATIONS[i]`` takes a
database from version i to i+1, so every release can open every older file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from ..contract.model import COMPLETED, FAILED, QUEUED, RUNNING, SUPERSEDED, Call, Job, Recording, TwilioAccount
from ..contract.settings import LIVENESS_BEATS
from .pool import ConnectionPool, HeldConnections

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the first release.
    """
    CREATE TABLE businesses (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE TABLE calls (
        business_id INTEGER NOT NULL REFERENCES businesses(id),
        call_sid TEXT NOT NULL,
        recording_url TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (business_id, call_sid)
    ) WITHOUT ROWID;
    CREATE INDEX calls_by_sid ON calls (call_sid);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        business_id INTEGER NOT NULL,
        call_sid TEXT NOT NULL,
        recording_url TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed')),
        attempt INTEGER NOT NULL DEFAULT 0,
        queue_seq INTEGER NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        heartbeat_at REAL,
        worker_id TEXT,
        error_code TEXT,
        error_message TEXT
    );
    CREATE UNIQUE INDEX jobs_one_active_per_call ON jobs (business_id, call_sid)
        WHERE status IN ('queued', 'running');
    CREATE INDEX jobs_queue ON jobs (queue_seq, id) WHERE status = 'queued';
    CREATE INDEX jobs_running ON jobs (worker_id) WHERE status = 'running';
    CREATE INDEX jobs_by_call ON jobs (business_id, call_sid, id);
    CREATE TABLE recordings (
        business_id INTEGER NOT NULL,
        call_sid TEXT NOT NULL,
        recording_url TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        stored_at REAL NOT NULL,
        last_played_at REAL NOT NULL,
        PRIMARY KEY (business_id, call_sid)
    ) WITHOUT ROWID;
    CREATE INDEX recordings_by_last_play ON recordings (last_played_at);
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        threads INTEGER NOT NULL,
        heartbeat_interval REAL NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE control (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        workers_paused INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO control (id, workers_paused) VALUES (1, 0);
    """,
    # 1 -> 2: Twilio accounts, and calls whose media needs the account's credentials.
    """
    CREATE TABLE twilio_accounts (
        account_sid TEXT PRIMARY KEY,
        business_id INTEGER NOT NULL UNIQUE REFERENCES businesses(id),
        auth_token TEXT NOT NULL,
        media_format TEXT NOT NULL DEFAULT 'wav' CHECK (media_format IN ('wav', 'mp3'))
    ) WITHOUT ROWID;
    ALTER TABLE calls ADD COLUMN credentials TEXT;
    """,
    # 2 -> 3: the retry counter of ``--counter sqlite://``, shared by every process on this file.
    # ``expires_at`` is absolute epoch seconds (NULL: no expiry), so processes agree on it.
    """
    CREATE TABLE retry_counters (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL,
        expires_at REAL
    ) WITHOUT ROWID;
    CREATE INDEX retry_counters_by_expiry ON retry_counters (expires_at) WHERE expires_at IS NOT NULL;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

# ---------------------------------------------------------------- statements

_JOB_COLUMNS = ("j.id, j.business_id, j.call_sid, j.recording_url, j.status, j.created_at, j.started_at, "
                "j.finished_at, j.heartbeat_at, j.worker_id, j.error_code, j.error_message, j.attempt, "
                "j.queue_seq, w.heartbeat_interval")
_JOB_FROM = "jobs AS j LEFT JOIN workers AS w ON w.id = j.worker_id"
_COUNTER_LIVE = "(expires_at IS NULL OR expires_at > ?2)"

SQL = {
    # businesses
    "insert_business": "INSERT INTO businesses (name, token_hash, created_at) VALUES (?, ?, ?)",
    "business_for_token": "SELECT id FROM businesses WHERE token_hash = ?",
    "business_exists": "SELECT 1 FROM businesses WHERE id = ?",
    # calls
    "get_call": "SELECT business_id, call_sid, recording_url, created_at FROM calls "
                "WHERE business_id = ? AND call_sid = ?",
    # Everything a play request decides on, in one statement (one consistent
    # snapshot): the call, its cached recording, the newest job for its current
    # URL with its worker's heartbeat interval, and whether any worker is live.
    "play_snapshot": "SELECT c.recording_url, c.created_at, "
                     "r.recording_url, r.path, r.size, r.sha256, r.content_type, r.stored_at, "
                     f"{_JOB_COLUMNS}, "
                     f"EXISTS (SELECT 1 FROM workers WHERE heartbeat_at > ?3 - {LIVENESS_BEATS} * heartbeat_interval "
                     "        AND threads > 0 AND (SELECT workers_paused FROM control WHERE id = 1) = 0) "
                     "FROM calls AS c "
                     "LEFT JOIN recordings AS r ON r.business_id = c.business_id AND r.call_sid = c.call_sid "
                     "LEFT JOIN jobs AS j ON j.id = (SELECT id FROM jobs WHERE business_id = c.business_id "
                     "    AND call_sid = c.call_sid AND recording_url = c.recording_url ORDER BY id DESC LIMIT 1) "
                     "LEFT JOIN workers AS w ON w.id = j.worker_id "
                     "WHERE c.business_id = ?1 AND c.call_sid = ?2",
    "businesses_with_call": "SELECT business_id FROM calls WHERE call_sid = ?",
    "upsert_twilio_account": "INSERT INTO twilio_accounts (account_sid, business_id, auth_token, media_format) "
                             "VALUES (?, ?, ?, ?) ON CONFLICT (business_id) DO UPDATE SET "
                             "account_sid = excluded.account_sid, auth_token = excluded.auth_token, "
                             "media_format = excluded.media_format",
    "twilio_account_by_sid": "SELECT account_sid, business_id, auth_token, media_format FROM twilio_accounts "
                             "WHERE account_sid = ?",
    "twilio_account_of_business": "SELECT account_sid, business_id, auth_token, media_format FROM twilio_accounts "
                                  "WHERE business_id = ?",
    "call_credentials": "SELECT credentials FROM calls WHERE business_id = ? AND call_sid = ?",
    "insert_call": "INSERT INTO calls (business_id, call_sid, recording_url, credentials, created_at, updated_at) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
    "update_call_url": "UPDATE calls SET recording_url = ?, credentials = ?, updated_at = ? "
                       "WHERE business_id = ? AND call_sid = ?",
    # jobs
    "latest_job_for_url": f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} "
                          "WHERE j.business_id = ? AND j.call_sid = ? AND j.recording_url = ? "
                          "ORDER BY j.id DESC LIMIT 1",
    "latest_job": f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} "
                  "WHERE j.business_id = ? AND j.call_sid = ? ORDER BY j.id DESC LIMIT 1",
    "get_job": f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} WHERE j.id = ?",
    "active_jobs_of_call": f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} "
                           "WHERE j.business_id = ? AND j.call_sid = ? AND j.status IN ('queued', 'running')",
    "active_jobs": f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} WHERE j.status IN ('queued', 'running')",
    "running_jobs": f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} WHERE j.status = 'running'",
    "jobs_newest_first": f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} "
                         "WHERE (?1 IS NULL OR j.call_sid = ?1) AND (?2 IS NULL OR j.business_id = ?2) "
                         "ORDER BY j.id DESC LIMIT ?3",
    # GET /admin/jobs with its filters (recsvc.core.job_filters).
    "jobs_filtered": f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} "
                     "WHERE (?1 IS NULL OR j.call_sid = ?1) AND (?2 IS NULL OR j.business_id = ?2) "
                     "AND (?3 IS NULL OR j.status = ?3) AND (?4 IS NULL OR j.created_at >= ?4) "
                     "ORDER BY j.id DESC LIMIT ?5",
    # A new job takes the queue place of the call's previous job, if any, so
    # retries do not make a backlog worse (CONTRACT 3); else a fresh place.
    "insert_job": "INSERT INTO jobs (business_id, call_sid, recording_url, status, attempt, queue_seq, created_at) "
                  "VALUES (?1, ?2, ?3, 'queued', ?4, "
                  "COALESCE((SELECT queue_seq FROM jobs WHERE business_id = ?1 AND call_sid = ?2 "
                  "          ORDER BY id DESC LIMIT 1), "
                  "         (SELECT COALESCE(MAX(id), 0) + 1 FROM jobs)), ?5)",
    "fail_job": "UPDATE jobs SET status = 'failed', finished_at = ?, error_code = ?, error_message = ? "
                "WHERE id = ? AND status = ?",
    "fail_owned_job": "UPDATE jobs SET status = 'failed', finished_at = ?, error_code = ?, error_message = ? "
                      "WHERE id = ? AND status = 'running' AND worker_id = ?",
    "complete_owned_job": "UPDATE jobs SET status = 'completed', finished_at = ? "
                          "WHERE id = ? AND status = 'running' AND worker_id = ?",
    "owns_job": "SELECT 1 FROM jobs WHERE id = ? AND status = 'running' AND worker_id = ?",
    # One atomic statement claims the next job in queue order, unless paused.
    "claim_next_job": "UPDATE jobs SET status = 'running', started_at = ?1, heartbeat_at = ?1, worker_id = ?2 "
                      "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY queue_seq, id LIMIT 1) "
                      "AND (SELECT workers_paused FROM control WHERE id = 1) = 0 "
                      "RETURNING id",
    "ended_jobs": "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?)) "
                  "AND status IN ('completed', 'failed')",
    "count_jobs_by_status": "SELECT status, COUNT(*) FROM jobs GROUP BY status",
    # recordings
    "get_recording": "SELECT business_id, call_sid, recording_url, path, size, sha256, content_type, stored_at "
                     "FROM recordings WHERE business_id = ? AND call_sid = ?",
    "upsert_recording": "INSERT INTO recordings (business_id, call_sid, recording_url, path, size, sha256, "
                        "content_type, stored_at, last_played_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (business_id, call_sid) DO UPDATE SET recording_url = excluded.recording_url, "
                        "path = excluded.path, size = excluded.size, sha256 = excluded.sha256, "
                        "content_type = excluded.content_type, stored_at = excluded.stored_at, "
                        "last_played_at = excluded.last_played_at",
    "delete_recording": "DELETE FROM recordings WHERE business_id = ? AND call_sid = ?",
    "delete_recording_if": "DELETE FROM recordings WHERE business_id = ? AND call_sid = ? AND sha256 = ?",
    "note_play": "UPDATE recordings SET last_played_at = MAX(last_played_at, ?) WHERE business_id = ? AND call_sid = ?",
    "least_recently_played": "SELECT business_id, call_sid, recording_url, path, size, sha256, content_type, stored_at "
                             "FROM recordings WHERE NOT (business_id = ?1 AND call_sid = ?2) "
                             "ORDER BY last_played_at, stored_at LIMIT 1",
    "cache_bytes": "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM recordings",
    # workers
    "upsert_worker": "INSERT INTO workers (id, host, pid, threads, heartbeat_interval, started_at, heartbeat_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
    "beat_worker": "UPDATE workers SET heartbeat_at = ? WHERE id = ?",
    # The ids that come back are the jobs still the worker's (CONTRACT 4: it abandons the others).
    "beat_running_jobs": "UPDATE jobs SET heartbeat_at = ? WHERE worker_id = ? AND status = 'running' RETURNING id",
    # Which of these jobs (a worker's downloads in flight) are no longer that worker's (CONTRACT 4).
    "lost_jobs": "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?1)) "
                 "AND NOT (status = 'running' AND worker_id = ?2)",
    # A write that changes nothing: can this process write at all? (CONTRACT 3, row 7)
    # A write probe must change bytes: SQLite skips a row rewritten with identical content, so
    # "SET x = x" writes nothing and passes on a read-only database. Changed and changed back in
    # one transaction, the page is written and no reader ever sees the mark.
    "probe_write_mark": "UPDATE control SET workers_paused = workers_paused + 2 WHERE id = 1",
    "probe_write_unmark": "UPDATE control SET workers_paused = workers_paused - 2 WHERE id = 1",
    "delete_worker": "DELETE FROM workers WHERE id = ?",
    "all_workers": "SELECT id, host, pid, threads, heartbeat_interval, started_at, heartbeat_at FROM workers",
    "live_worker": f"SELECT 1 FROM workers WHERE heartbeat_at > ? - {LIVENESS_BEATS} * heartbeat_interval "
                   "AND threads > 0 AND (SELECT workers_paused FROM control WHERE id = 1) = 0 LIMIT 1",
    "live_worker_count": f"SELECT COUNT(*) FROM workers WHERE heartbeat_at > ? - {LIVENESS_BEATS} * heartbeat_interval "
                         "AND threads > 0",
    "get_paused": "SELECT workers_paused FROM control WHERE id = 1",
    "set_paused": "UPDATE control SET workers_paused = ? WHERE id = 1",
    # the retry counter (recsvc.storage.sqlite_counter), in Redis's words; ?2 is now. A row
    # whose expires_at has passed is absent: INCR starts it again at 1.
    "counter_entry": f"SELECT value, expires_at FROM retry_counters WHERE key = ?1 AND {_COUNTER_LIVE}",
    "counter_incr": "INSERT INTO retry_counters (key, value, expires_at) VALUES (?1, 1, NULL) "
                    "ON CONFLICT (key) DO UPDATE SET "
                    f"value = CASE WHEN {_COUNTER_LIVE} THEN value + 1 ELSE 1 END, "
                    f"expires_at = CASE WHEN {_COUNTER_LIVE} THEN expires_at END "
                    "RETURNING value",
    "counter_incr_and_expire": "INSERT INTO retry_counters (key, value, expires_at) VALUES (?1, 1, ?3) "
                               "ON CONFLICT (key) DO UPDATE SET "
                               f"value = CASE WHEN {_COUNTER_LIVE} THEN value + 1 ELSE 1 END, "
                               "expires_at = ?3 RETURNING value",
    "counter_expire": f"UPDATE retry_counters SET expires_at = ?3 WHERE key = ?1 AND {_COUNTER_LIVE}",
    # Any row of the key goes. Whether it was alive is judged from the plain
    # column: SQLite 3.40 evaluates ``expires_at IS NULL`` wrongly inside RETURNING.
    "counter_delete": "DELETE FROM retry_counters WHERE key = ? RETURNING expires_at",
    "counter_sweep": "DELETE FROM retry_counters WHERE key IN (SELECT key FROM retry_counters "
                     "WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)",
}


def _job(row: tuple | None) -> Job | None:
    if row is None:
        return None
    return Job(*row[:14], worker_heartbeat_interval=row[14])


def _jobs(rows: list[tuple]) -> list[Job]:
    return [_job(r) for r in rows]


@dataclass(frozen=True)
class PlaySnapshot:
    call: Call
    recording: Recording | None
    latest_job: Job | None       # the newest job for the call's current recording_url
    live_worker: bool
    # The Redis store's: the snapshot as its script read it, which apply_play compares (recsvc.storage.redis_store),
    # and the call's retry count, read with it.
    seen: str | None = None
    retry_count: int | None = None


class StoreError(Exception):
    """The database did not answer a statement (locked, unreadable, damaged)."""


class StoreBusy(StoreError):
    """The database stayed locked past every retry (CONTRACT 3: 503 ``storage_busy``)."""


class StoreUnavailable(StoreError):
    """The store cannot be written or read: disk full, I/O error, read-only, cannot be opened, or its
    server does not answer (CONTRACT 3: 503 ``storage_unavailable``)."""


# SQLite's primary result codes that are faults of the host, not of recsvc's SQL.
_BUSY_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED")
_UNAVAILABLE_CODES = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")


def storage_fault(exc: BaseException) -> StoreError | None:
    """The StoreError a SQLite error stands for, or None when it is not a storage fault (a bug)."""
    if isinstance(exc, StoreError):
        return exc
    if not isinstance(exc, sqlite3.Error):
        return None
    name = getattr(exc, "sqlite_errorname", None) or ""
    if name.startswith(_BUSY_CODES):
        return StoreBusy(f"the database stayed locked ({exc})")
    if name.startswith(_UNAVAILABLE_CODES):
        return StoreUnavailable(f"{exc} ({name})")
    return None


class StorageOutage:
    """A background writer's storage outage: one log line when it starts and one when it ends, not one per try."""

    def __init__(self, what: str, logger: logging.Logger = log):
        self.what = what
        self.log = logger
        self._lock = threading.Lock()  # guards since
        self.since: float | None = None  # time.monotonic() of the first failure of this outage

    def failed(self, exc: Exception) -> None:
        with self._lock:
            first, self.since = self.since is None, self.since or time.monotonic()
        if first:
            self.log.warning("%s: storage fault (%s); trying again until it works", self.what, exc)

    def worked(self) -> None:
        if self.since is None:
            return
        with self._lock:
            since, self.since = self.since, None
        if since is not None:
            self.log.warning("%s: storage works again after %.1fs", self.what, time.monotonic() - since)


class Tx:
    """Named queries over one connection; every SQL statement is in ``SQL`` above."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def _one(self, name: str, *args):
        return self.conn.execute(SQL[name], args).fetchone()

    def _all(self, name: str, *args):
        return self.conn.execute(SQL[name], args).fetchall()

    def _run(self, name: str, *args) -> int:
        return self.conn.execute(SQL[name], args).rowcount

    # businesses
    def insert_business(self, name: str, token_hash: str, now: float) -> int:
        return self.conn.execute(SQL["insert_business"], (name, token_hash, now)).lastrowid

    def business_for_token(self, token_hash: str) -> int | None:
        row = self._one("business_for_token", token_hash)
        return row[0] if row else None

    def business_exists(self, business_id: int) -> bool:
        return self._one("business_exists", business_id) is not None

    # calls
    def get_call(self, business_id: int, call_sid: str) -> Call | None:
        row = self._one("get_call", business_id, call_sid)
        return Call(*row) if row else None

    def play_snapshot(self, business_id: int, call_sid: str, now: float) -> PlaySnapshot | None:
        """The call with its recording, latest job for its URL and worker liveness; None: no call."""
        row = self._one("play_snapshot", business_id, call_sid, now)
        if row is None:
            return None
        call = Call(business_id, call_sid, row[0], row[1])
        recording = Recording(business_id, call_sid, *row[2:8]) if row[3] is not None else None
        job = _job(row[8:23]) if row[8] is not None else None
        return PlaySnapshot(call, recording, job, bool(row[23]))

    def businesses_with_call(self, call_sid: str) -> list[int]:
        return [row[0] for row in self._all("businesses_with_call", call_sid)]

    def upsert_twilio_account(self, account_sid: str, business_id: int, auth_token: str, media_format: str) -> None:
        self._run("upsert_twilio_account", account_sid, business_id, auth_token, media_format)

    def register_twilio_account(self, account_sid: str, business_id: int, auth_token: str,
                                media_format: str) -> str:
        """'ok', 'no_business', or 'taken' when another business holds the account (CONTRACT 6: 409)."""
        if not self.business_exists(business_id):
            return "no_business"
        holder = self.twilio_account_by_sid(account_sid)
        if holder is not None and holder.business_id != business_id:
            return "taken"
        self.upsert_twilio_account(account_sid, business_id, auth_token, media_format)
        return "ok"

    def twilio_account_by_sid(self, account_sid: str) -> TwilioAccount | None:
        row = self._one("twilio_account_by_sid", account_sid)
        return TwilioAccount(*row) if row else None

    def twilio_account_of_business(self, business_id: int) -> TwilioAccount | None:
        row = self._one("twilio_account_of_business", business_id)
        return TwilioAccount(*row) if row else None

    def call_credentials(self, business_id: int, call_sid: str) -> str | None:
        row = self._one("call_credentials", business_id, call_sid)
        return row[0] if row else None

    def insert_call(self, business_id: int, call_sid: str, url: str | None, credentials: str | None,
                    now: float) -> None:
        self._run("insert_call", business_id, call_sid, url, credentials, now, now)

    def update_call_url(self, business_id: int, call_sid: str, url: str | None, credentials: str | None,
                        now: float) -> None:
        self._run("update_call_url", url, credentials, now, business_id, call_sid)

    def put_call(self, business_id: int, call_sid: str, url: str | None, credentials: str | None, now: float,
                 queue_now: bool) -> tuple[bool, bool, str | None, int | None]:
        """Create or update a call: (created, url changed, dropped file path, queued job id).

        A new URL supersedes the call's active job and drops its recording (CONTRACT 6);
        ``queue_now`` queues the download of a URL that has no job yet (webhooks)."""
        call = self.get_call(business_id, call_sid)
        changed, dropped, queued = False, None, None
        if call is None:
            self.insert_call(business_id, call_sid, url, credentials, now)
        elif call.recording_url != url:
            changed = True
            self.update_call_url(business_id, call_sid, url, credentials, now)
            for job in self.active_jobs_of_call(business_id, call_sid):
                self.fail_job(job.id, job.status, SUPERSEDED, "the call was given a new recording_url", now)
            recording = self.get_recording(business_id, call_sid)
            if recording is not None:
                self.delete_recording(business_id, call_sid)
                dropped = recording.path
        if queue_now and url and not self.active_jobs_of_call(business_id, call_sid) \
                and self.latest_job_for_url(business_id, call_sid, url) is None:
            queued = self.insert_job(business_id, call_sid, url, 0, now)
        return call is None, changed, dropped, queued

    # jobs
    def latest_job_for_url(self, business_id: int, call_sid: str, url: str) -> Job | None:
        return _job(self._one("latest_job_for_url", business_id, call_sid, url))

    def latest_job(self, business_id: int, call_sid: str) -> Job | None:
        return _job(self._one("latest_job", business_id, call_sid))

    def get_job(self, job_id: int) -> Job | None:
        return _job(self._one("get_job", job_id))

    def active_jobs_of_call(self, business_id: int, call_sid: str) -> list[Job]:
        return _jobs(self._all("active_jobs_of_call", business_id, call_sid))

    def active_jobs(self) -> list[Job]:
        return _jobs(self._all("active_jobs"))

    def running_jobs(self) -> list[Job]:
        return _jobs(self._all("running_jobs"))

    def jobs_newest_first(self, call_sid: str | None, business_id: int | None, limit: int) -> list[Job]:
        return _jobs(self._all("jobs_newest_first", call_sid, business_id, limit))

    def jobs_filtered(self, call_sid: str | None, business_id: int | None, status: str | None,
                      since: float | None, limit: int) -> list[Job]:
        return _jobs(self._all("jobs_filtered", call_sid, business_id, status, since, limit))

    def insert_job(self, business_id: int, call_sid: str, url: str, attempt: int, now: float) -> int:
        return self.conn.execute(SQL["insert_job"], (business_id, call_sid, url, attempt, now)).lastrowid

    def fail_job(self, job_id: int, expected_status: str, code: str, message: str, now: float) -> bool:
        """Compare-and-set: True when the job was still ``expected_status``."""
        return self._run("fail_job", now, code, message, job_id, expected_status) == 1

    def fail_owned_job(self, job_id: int, worker_id: str, code: str, message: str, now: float) -> bool:
        return self._run("fail_owned_job", now, code, message, job_id, worker_id) == 1

    def replace_job(self, job: Job, code: str, message: str, now: float) -> int | None:
        """Fail a running job and queue its replacement with the same attempt and queue place; None
        when the job was no longer running."""
        if not self.fail_job(job.id, RUNNING, code, message, now):
            return None
        return self.insert_job(job.business_id, job.call_sid, job.recording_url, job.attempt, now)

    def complete_owned_job(self, job_id: int, worker_id: str, now: float) -> bool:
        return self._run("complete_owned_job", now, job_id, worker_id) == 1

    def owns_job(self, job_id: int, worker_id: str) -> bool:
        return self._one("owns_job", job_id, worker_id) is not None

    def claim_next_job(self, worker_id: str, now: float) -> Job | None:
        row = self._one("claim_next_job", now, worker_id)
        return self.get_job(row[0]) if row else None

    def ended_jobs(self, job_ids: list[int]) -> list[int]:
        """Which of these jobs are no longer active (one query for any number of ids)."""
        return [row[0] for row in self._all("ended_jobs", json.dumps(job_ids))]

    def count_jobs_by_status(self) -> dict[str, int]:
        counts = {status: 0 for status in (QUEUED, RUNNING, COMPLETED, FAILED)}
        counts.update(dict(self._all("count_jobs_by_status")))
        return counts

    # recordings
    def get_recording(self, business_id: int, call_sid: str) -> Recording | None:
        row = self._one("get_recording", business_id, call_sid)
        return Recording(*row) if row else None

    def upsert_recording(self, rec: Recording, now: float) -> None:
        self._run("upsert_recording", rec.business_id, rec.call_sid, rec.recording_url, rec.path, rec.size,
                  rec.sha256, rec.content_type, rec.stored_at, now)

    def delete_recording(self, business_id: int, call_sid: str, sha256: str | None = None) -> bool:
        if sha256 is None:
            return self._run("delete_recording", business_id, call_sid) == 1
        return self._run("delete_recording_if", business_id, call_sid, sha256) == 1

    def note_plays(self, plays: list[tuple[float, int, str]]) -> None:
        self.conn.executemany(SQL["note_play"], plays)

    def least_recently_played(self, keep: tuple[int, str] | None) -> Recording | None:
        row = self._one("least_recently_played", *(keep or (-1, "")))
        return Recording(*row) if row else None

    def cache_bytes(self) -> tuple[int, int]:
        size, count = self._one("cache_bytes")
        return int(size), int(count)

    # workers
    def upsert_worker(self, worker_id: str, host: str, pid: int, threads: int, interval: float, now: float) -> None:
        self._run("upsert_worker", worker_id, host, pid, threads, interval, now, now)

    def beat(self, worker_id: str, now: float, *, lease: tuple = ()) -> set[int]:
        """The per-process heartbeat: the worker row and its running jobs (CONTRACT 4).
        Returns the ids of the jobs that are still this worker's. ``lease`` is the Redis
        store's (its rows expire); a row here stays until its worker stops."""
        self._run("beat_worker", now, worker_id)
        return {row[0] for row in self._all("beat_running_jobs", now, worker_id)}

    def lost_jobs(self, job_ids: list[int], worker_id: str) -> list[int]:
        """Which of ``job_ids`` are no longer running under ``worker_id``."""
        return [row[0] for row in self._all("lost_jobs", json.dumps(job_ids), worker_id)]

    def probe_write(self) -> None:
        self._run("probe_write_mark")
        self._run("probe_write_unmark")

    def delete_worker(self, worker_id: str) -> None:
        self._run("delete_worker", worker_id)

    def all_workers(self) -> list[tuple]:
        return self._all("all_workers")

    def live_worker(self, now: float) -> bool:
        return self._one("live_worker", now) is not None

    def live_worker_count(self, now: float) -> int:
        return self._one("live_worker_count", now)[0]

    def paused(self) -> bool:
        return bool(self._one("get_paused")[0])

    def set_paused(self, paused: bool) -> None:
        self._run("set_paused", int(paused))

    # the retry counter (recsvc.storage.sqlite_counter): ``now`` judges expiry, ``expires_at`` is absolute
    def counter_entry(self, key: str, now: float) -> tuple[int, float | None] | None:
        """(value, expires_at) of a live key, or None."""
        return self._one("counter_entry", key, now)

    def counter_incr(self, key: str, now: float) -> int:
        return self._one("counter_incr", key, now)[0]

    def counter_incr_and_expire(self, key: str, now: float, expires_at: float) -> int:
        return self._one("counter_incr_and_expire", key, now, expires_at)[0]

    def counter_expire(self, key: str, now: float, expires_at: float) -> bool:
        return self._run("counter_expire", key, now, expires_at) == 1

    def counter_delete(self, key: str, now: float) -> bool:
        """Remove the key's row; True when it was alive."""
        row = self._one("counter_delete", key)
        return row is not None and (row[0] is None or row[0] > now)

    def counter_sweep(self, now: float, limit: int) -> int:
        """Delete at most ``limit`` expired keys, the longest expired first."""
        return self._run("counter_sweep", now, limit)


class _Checkout:
    """``with store._connection(write) as conn``: a pooled connection for the block, given back after it.

    A class rather than a generator-based contextmanager: the 202 poll takes
    a connection per request, and the generator machinery cost more than the
    checkout itself.
    """

    __slots__ = ("_store", "_pool", "_conn", "_pooled")

    def __init__(self, store: Store, pool: ConnectionPool):
        self._store = store
        self._pool = pool
        self._conn: sqlite3.Connection | None = None
        self._pooled = True

    def __enter__(self) -> sqlite3.Connection:
        if self._store.closed:  # a download that outlived its process's stop: a store fault, not a crash
            raise StoreUnavailable(f"the database {self._store.path} is closed")
        try:
            self._conn, self._pooled = self._pool.take()
        except sqlite3.Error as exc:  # opening a connection
            self._store._fault(exc)
            raise
        return self._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._pool.give(self._conn, self._pooled, self._store._close)
        except sqlite3.Error as give_exc:  # a rollback that failed: the block's own error says more
            if exc is None:
                self._store._fault(give_exc)
                raise
        if exc is not None:
            self._store._fault(exc)


class _Single(_Checkout):
    """``with store.single() as tx``: a ``Tx`` on a pooled connection, for one statement."""

    __slots__ = ()

    def __enter__(self) -> Tx:
        return Tx(super().__enter__())


class Store:
    """The database file and its two connection pools.

    Writers share ``WRITE_CONNECTIONS`` (one): SQLite lets one transaction
    write at a time, so a second writer of this process waits in line here,
    handed the connection the moment it is free, instead of polling SQLite's
    lock with sleeps. Readers share ``READ_CONNECTIONS``; in WAL mode they
    never wait for the writer. The pools are small and fixed because each
    connection keeps its own page cache and prepared statements: a connection
    per request and download thread holds memory and serves no faster
    (docs/measurements.md).
    """

    # What the Redis store does otherwise (recsvc.storage.redis_store): here a decision is taken and
    # applied inside BEGIN IMMEDIATE, a file is renamed under the write lock, and a worker's row stays
    # until its worker stops.
    optimistic = False
    unique_file_names = False
    leases = False
    remote = False  # a file on this machine: reads cost CPU, not waiting

    BUSY_RETRIES = 5
    READ_CONNECTIONS = 4
    WRITE_CONNECTIONS = 1

    def __init__(self, path: str, busy_timeout: float = 5.0):
        self.path = path
        self._busy_timeout = busy_timeout
        self._all_lock = threading.Lock()  # guards _all
        self._all: list[sqlite3.Connection] = []
        held = HeldConnections()
        self._reads = ConnectionPool(self._connect, self.READ_CONNECTIONS, busy_timeout, held, self._pool_busy)
        self._writes = ConnectionPool(self._connect, self.WRITE_CONNECTIONS, busy_timeout, held, self._pool_busy)
        self._open_write = threading.local()  # .tx: this thread's transaction inside writing(), if any
        self.last_fault: tuple[float, StoreError] | None = None  # (time.monotonic(), fault) of the last one
        self.closed = False
        with self._connection(write=True) as conn:
            self._migrate(conn)

    def _fault(self, exc: BaseException) -> None:
        """Raise a storage fault as the StoreError it stands for, remembering when it happened."""
        fault = storage_fault(exc)
        if fault is None:
            return
        self.last_fault = (time.monotonic(), fault)
        if fault is not exc:
            raise fault from exc

    def _pool_busy(self, message: str) -> StoreBusy:
        """A wait for a pooled connection that ran out: the lock held past the busy timeout, a fault
        like SQLite's own busy error, remembered the same way (row 7 asks for it)."""
        fault = StoreBusy(message)
        self.last_fault = (time.monotonic(), fault)
        return fault

    def fault_within(self, seconds: float) -> StoreError | None:
        """The last storage fault, when it happened less than ``seconds`` ago."""
        last = self.last_fault
        if last is not None and time.monotonic() - last[0] < seconds:
            return last[1]
        return None

    def probe_write(self) -> None:
        """A write that changes nothing; raises StoreError when this process cannot write."""
        with self.writing() as tx:
            tx.probe_write()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a power cut may lose the last commits but never
        # corrupts; a lost "completed" becomes an orphan, replaced at start.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _close(self, conn: sqlite3.Connection) -> None:
        with self._all_lock:
            if conn in self._all:
                self._all.remove(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _connection(self, write: bool = False) -> _Checkout:
        """A connection of the read or the write pool for one with-block, given back at its end."""
        return _Checkout(self, self._writes if write else self._reads)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"database schema version {version} is newer than this recsvc ({SCHEMA_VERSION})")
            for target in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target + 1}")
                log.info("database migrated to schema version %d", target + 1)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def open_connections(self) -> int:
        with self._all_lock:
            return len(self._all)

    def schema_version(self) -> int:
        with self._connection() as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]

    @contextlib.contextmanager
    def reading(self) -> Iterator[Tx]:
        """One consistent snapshot for several reads."""
        with self._connection() as conn:
            conn.execute("BEGIN")
            try:
                yield Tx(conn)
            finally:
                conn.execute("COMMIT")

    def single(self) -> _Single:
        """A connection for one statement, which SQLite runs as its own snapshot: no BEGIN."""
        return _Single(self, self._reads)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Tx]:
        """A write transaction holding SQLite's write lock from its first statement."""
        with self._connection(write=True) as conn:
            for attempt in range(self.BUSY_RETRIES):
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    log.warning("database busy, retrying (%d/%d)", attempt + 1, self.BUSY_RETRIES)
                    time.sleep(0.05 * (attempt + 1))
            else:
                raise StoreBusy("the database stayed locked")
            tx = self._open_write.tx = Tx(conn)
            try:
                yield tx
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already (disk full)
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._open_write.tx = None
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def counting(self, write: bool) -> Iterator[Tx]:
        """The retry counter's statements (recsvc.storage.sqlite_counter); any SQLite error comes out as StoreError.

        Inside this thread's ``writing()`` they join that transaction: the
        write lock is already this thread's (a second connection would wait
        for it until the busy timeout), and a retry's INCR then commits or
        rolls back with its job (CONTRACT 3, row 10b). Otherwise a write is
        its own ``BEGIN IMMEDIATE``, tried once: locked past the busy timeout
        it fails, and the caller fails open. A read is one statement.
        """
        try:
            joined = getattr(self._open_write, "tx", None)
            if joined is not None:
                yield joined
            elif not write:
                with self.single() as tx:
                    yield tx
            else:
                with self._connection(write=True) as conn:
                    conn.execute("BEGIN IMMEDIATE")
                    yield Tx(conn)
                    conn.execute("COMMIT")  # on an exception, _connection() rolls back
        except sqlite3.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
