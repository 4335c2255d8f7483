"""The Redis store (``--store redis://host:port/db``): the SQLite store's interface, for several nodes.

Theory of operation. ``RedisStore`` offers what ``recsvc.storage.store.Store``
offers (``reading()``, ``single()``, ``writing()`` yielding a transaction
object with the same methods, ``probe_write()``, ``fault_within()``), so the
service, the workers and the sweeper run unchanged on either; the layout is
``recsvc.storage.redis_keys``. Every node of a cluster names the same server.

What differs, and why it still decides as one node does:

- Redis has no multi-statement transaction that can read, decide in Python and
  write. Each method of ``RedisTx`` is one Lua script (``redis_scripts``), so
  each is atomic on its own, and every step that reads, decides and writes is
  one script: claiming the next job, finishing or failing a job by
  compare-and-set, a heartbeat, storing a call, registering a Twilio account,
  replacing an orphan. ``writing()`` therefore gives no isolation beyond the
  single method, and the service uses no multi-method write sequence on this
  store (``optimistic``).
- A play request's decision (CONTRACT 3 rows 7, 8, 10) stays the pure
  ``decide_play`` in Python: it is taken on a snapshot the ``play_snapshot``
  script read, and ``apply_play`` applies it only if the snapshot, computed
  again inside the script, is still the same; otherwise the script hands back
  the fresh snapshot and the service decides again. The retry counter is part
  of that snapshot and is counted by the same script, so one retry is one INCR.
- A finished download is renamed into place under a name of its own job
  (``unique_file_names``) before ``complete_job`` records it; the script records
  it only while the job is still the worker's, so a job that lost its place
  never replaces the file of a newer one.
- A worker's row is its lease: every heartbeat sets it to expire after
  LIVENESS_BEATS intervals (Redis's clock, the same for every node), and any
  node's ``fail_lost_leases`` fails the jobs of a worker whose row is gone.
- Every node subscribes to ``recsvc:events`` (``listen()``): a job that ends
  anywhere wakes the requests held on it here, and a job queued anywhere wakes
  an idle download thread here (CONTRACT 5b across nodes).

Redis that does not answer (refused, timed out, closed) is ``StoreUnavailable``
(CONTRACT 3: 503 ``storage_unavailable``; the store cannot fail open), and a
server still loading its data is ``StoreBusy``. A connection is opened on
demand, so the first command after Redis returns works again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from typing import Callable, Iterator

from ..contract.model import COMPLETED, FAILED, QUEUED, RUNNING, Call, Job, Recording, TwilioAccount
from ..contract.settings import LIVENESS_BEATS, parse_redis_url
from . import redis_keys as K
from .redis_scripts import SCRIPTS, script_source
from .resp import RedisConnection, RedisProtocolError, RedisReplyError, Reply
from .store import PlaySnapshot, StoreBusy, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 2.0  # a script runs in microseconds; a server silent this long is not answering


class AccessRefused(StoreUnavailable):
    """The server refused AUTH or SELECT: a setting to correct, where the other faults pass by themselves."""


class ActiveJobExists(StoreError):
    """An insert for a call that already has an active job (CONTRACT 8.1), as SQLite's unique index refuses it."""


def _text(value) -> str | None:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _float(value) -> float | None:
    return None if value is None or value is False else float(value)


def _int(value) -> int | None:
    return None if value is None or value is False else int(value)


def _absent(value):
    """cjson's ``false`` (an absent field) as None."""
    return None if value is False else value


def _job(row) -> Job | None:
    if not row:
        return None
    t = [_text(v) for v in row]
    return Job(int(t[0]), int(t[1]), t[2], t[3], t[4], float(t[5]), _float(t[6]), _float(t[7]), _float(t[8]),
               t[9], t[10], t[11], int(t[12]), int(t[13]), worker_heartbeat_interval=_float(t[14]))


def _recording(business_id: int, call_sid: str, fields) -> Recording | None:
    """A recording from its six fields (url, path, size, sha256, content_type, stored_at)."""
    if fields[1] is None:
        return None
    url, path, size, sha, ctype, stored = (_text(v) for v in fields)
    return Recording(business_id, call_sid, url, path, int(size), sha, ctype, float(stored))


def _arg(value) -> str:
    """A script argument: None travels as '' (the scripts read it as absent), numbers as repr."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


class RedisTx:
    """The store's methods (``recsvc.storage.store.Tx``'s names), each one script or command on one connection."""

    def __init__(self, store: RedisStore, conn: RedisConnection):
        self.store = store
        self.conn = conn

    def _eval(self, name: str, *args) -> Reply:
        return self.store._eval(self.conn, name, [_arg(a) for a in args])

    def _command(self, *command) -> Reply:
        return self.store._command(self.conn, command)

    # businesses
    def insert_business(self, name: str, token_hash: str, now: float) -> int:
        return self._eval("insert_business", name, token_hash, now)

    def business_for_token(self, token_hash: str) -> int | None:
        return _int(self._eval("business_for_token", token_hash))

    def business_exists(self, business_id: int) -> bool:
        return self._command("EXISTS", K.business(business_id)) == 1

    # calls
    def get_call(self, business_id: int, call_sid: str) -> Call | None:
        url, created = self._command("HMGET", K.call(business_id, call_sid), "recording_url", "created_at")
        return Call(business_id, call_sid, _text(url), float(created)) if created is not None else None

    def play_snapshot(self, business_id: int, call_sid: str, now: float) -> PlaySnapshot | None:
        encoded = self._eval("play_snapshot", business_id, call_sid, now)
        return None if encoded is None else self.store.snapshot(business_id, call_sid, _text(encoded))

    def apply_play(self, business_id: int, call_sid: str, now: float, seen: PlaySnapshot, *,
                   stuck: tuple[Job, str] | None = None, insert: str = "", number: int = 0,
                   window: float = 0.0, probe: bool = False):
        """Apply a play decision if ``seen`` still holds (see the module's text).

        ``insert``: '' none, 'fixed' (a job with attempt ``number``), 'count' (INCR the retry counter,
        EXPIRE it to ``window``; the attempt is the count, at least ``number`` + 1).
        Returns ``(True, stuck_failed, job, attempt)`` or ``(False, fresh snapshot or None)``."""
        stuck_id, stuck_status, reason = (stuck[0].id, stuck[0].status, stuck[1]) if stuck else ("", "", "")
        reply = self._eval("apply_play", business_id, call_sid, now, seen.seen, stuck_id, stuck_status, reason,
                           insert, number, int(round(window * 1000)), probe)
        if _text(reply[0]) == "changed":
            fresh = reply[1]
            return False, (self.store.snapshot(business_id, call_sid, _text(fresh)) if fresh else None)
        job = self.get_job(int(reply[2])) if reply[2] is not None else None
        return True, _text(reply[1]) == "1", job, int(reply[3])

    def businesses_with_call(self, call_sid: str) -> list[int]:
        return sorted(int(v) for v in self._command("SMEMBERS", K.calls_by_sid(call_sid)))

    def put_call(self, business_id: int, call_sid: str, url: str | None, credentials: str | None, now: float,
                 queue_now: bool) -> tuple[bool, bool, str | None, int | None]:
        """Create or update a call in one step: (created, url changed, dropped file path, queued job id)."""
        created, changed, dropped, queued = self._eval("put_call", business_id, call_sid, url, credentials, now,
                                                       queue_now)
        return _text(created) == "1", _text(changed) == "1", _text(dropped), _int(queued)

    def register_twilio_account(self, account_sid: str, business_id: int, auth_token: str,
                                media_format: str) -> str:
        """'ok', 'no_business' or 'taken' (another business holds the account), in one step."""
        return _text(self._eval("register_twilio", account_sid, business_id, auth_token, media_format))

    def twilio_account_by_sid(self, account_sid: str) -> TwilioAccount | None:
        bid, token, fmt = self._command("HMGET", K.twilio(account_sid), "business_id", "auth_token", "media_format")
        return TwilioAccount(account_sid, int(bid), _text(token), _text(fmt)) if bid is not None else None

    def twilio_account_of_business(self, business_id: int) -> TwilioAccount | None:
        sid = self._command("GET", K.twilio_of(business_id))
        return self.twilio_account_by_sid(_text(sid)) if sid is not None else None

    def call_credentials(self, business_id: int, call_sid: str) -> str | None:
        return _text(self._command("HGET", K.call(business_id, call_sid), "credentials"))

    # jobs
    def latest_job_for_url(self, business_id: int, call_sid: str, url: str) -> Job | None:
        return _job(self._eval("latest_job", business_id, call_sid, url))

    def latest_job(self, business_id: int, call_sid: str) -> Job | None:
        return _job(self._eval("latest_job", business_id, call_sid, ""))

    def get_job(self, job_id: int) -> Job | None:
        return _job(self._eval("jobs", job_id)[0])

    def active_jobs_of_call(self, business_id: int, call_sid: str) -> list[Job]:
        active = self._command("GET", K.active_job(business_id, call_sid))
        job = self.get_job(int(active)) if active is not None else None
        return [job] if job is not None and job.status in (QUEUED, RUNNING) else []

    def active_jobs(self) -> list[Job]:
        return [_job(row) for row in self._eval("active_jobs")]

    def running_jobs(self) -> list[Job]:
        return [job for job in self.active_jobs() if job.status == RUNNING]

    def jobs_newest_first(self, call_sid: str | None, business_id: int | None, limit: int) -> list[Job]:
        return self.jobs_filtered(call_sid, business_id, None, None, limit)

    def jobs_filtered(self, call_sid: str | None, business_id: int | None, status: str | None,
                      since: float | None, limit: int) -> list[Job]:
        if limit <= 0:
            return []
        return [_job(row) for row in self._eval("jobs_filtered", call_sid, business_id, status, since, limit)]

    def insert_job(self, business_id: int, call_sid: str, url: str, attempt: int, now: float) -> int:
        return self._eval("insert_job", business_id, call_sid, url, attempt, now)

    def replace_job(self, job: Job, code: str, message: str, now: float) -> int | None:
        """Fail a running job and queue its replacement (same attempt and queue place) in one step."""
        return _int(self._eval("replace_job", job.id, code, message, now))

    def fail_job(self, job_id: int, expected_status: str, code: str, message: str, now: float) -> bool:
        return self._eval("fail_job", job_id, expected_status, code, message, now, None) == 1

    def fail_owned_job(self, job_id: int, worker_id: str, code: str, message: str, now: float) -> bool:
        return self._eval("fail_job", job_id, RUNNING, code, message, now, worker_id) == 1

    def complete_job(self, job_id: int, worker_id: str, rec: Recording, now: float) -> tuple[bool, str | None]:
        """Record a file renamed into place and complete the job, if it is still the worker's:
        (completed, the previous recording's path)."""
        reply = self._eval("complete_job", job_id, worker_id, now, rec.recording_url, rec.path, rec.size,
                           rec.sha256, rec.content_type, rec.stored_at)
        return reply[0] == 1, (_text(reply[1]) if reply[0] == 1 else None)

    def owns_job(self, job_id: int, worker_id: str) -> bool:
        status, owner = self._command("HMGET", K.job(job_id), "status", "worker_id")
        return _text(status) == RUNNING and _text(owner) == worker_id

    def claim_next_job(self, worker_id: str, now: float) -> Job | None:
        return _job(self._eval("claim_next_job", worker_id, now))

    def ended_jobs(self, job_ids: list[int]) -> list[int]:
        rows = self._eval("jobs", *job_ids) if job_ids else []
        return [job_id for job_id, row in zip(job_ids, rows)
                if row and _text(row[4]) in (COMPLETED, FAILED)]

    def count_jobs_by_status(self) -> dict[str, int]:
        counts = {status: 0 for status in (QUEUED, RUNNING, COMPLETED, FAILED)}
        reply = self._command("HGETALL", K.JOB_COUNT)
        for name, value in zip(reply[::2], reply[1::2]):
            counts[_text(name)] = int(value)
        return counts

    # recordings
    def get_recording(self, business_id: int, call_sid: str) -> Recording | None:
        fields = self._command("HMGET", K.recording(business_id, call_sid), *K.RECORDING_FIELDS[2:])
        return _recording(business_id, call_sid, fields)

    def delete_recording(self, business_id: int, call_sid: str, sha256: str | None = None) -> bool:
        return self._eval("delete_recording", business_id, call_sid, sha256) == 1

    def note_plays(self, plays: list[tuple[float, int, str]]) -> None:
        if plays:
            self._eval("note_plays", *(value for play in plays for value in play))

    def least_recently_played(self, keep: tuple[int, str] | None) -> Recording | None:
        row = self._eval("least_recently_played", K.recording_member(*keep) if keep else "")
        if row is None:
            return None
        return _recording(int(row[0]), _text(row[1]), row[2:])

    def cache_bytes(self) -> tuple[int, int]:
        size, files = self._command("HMGET", K.RECORDINGS_SIZE, "bytes", "files")
        return int(size or 0), int(files or 0)

    # workers
    def upsert_worker(self, worker_id: str, host: str, pid: int, threads: int, interval: float, now: float) -> None:
        self._eval("upsert_worker", worker_id, self.store.lease_ms(interval), host, pid, threads, interval, now)

    def beat(self, worker_id: str, now: float, *, lease: tuple = ()) -> set[int]:
        """The worker's lease and its running jobs' heartbeats (CONTRACT 4); the ids still its own.
        ``lease``: (host, pid, threads, interval, started_at) to write the row again if it expired."""
        host, pid, threads, interval, started = lease or ("", 0, 0, 1.0, now)
        mine = self._eval("beat", worker_id, now, self.store.lease_ms(interval), host, pid, threads, interval, started)
        return {int(job_id) for job_id in mine}

    def lost_jobs(self, job_ids: list[int], worker_id: str) -> list[int]:
        rows = self._eval("jobs", *job_ids) if job_ids else []
        return [job_id for job_id, row in zip(job_ids, rows)
                if not (row and _text(row[4]) == RUNNING and _text(row[9]) == worker_id)]

    def fail_lost_leases(self, code: str, reason_prefix: str, now: float) -> list[tuple[int, str, str]]:
        """Fail the running jobs of every worker whose lease expired: (job id, call_sid, reason) of each."""
        return [(int(job_id), _text(sid), _text(reason))
                for job_id, sid, reason in self._eval("fail_lost_leases", now, code, reason_prefix)]

    def probe_write(self) -> None:
        self._command("SET", K.PREFIX + "probe", repr(time.time()), "PX", 1000)

    def delete_worker(self, worker_id: str) -> None:
        self._command("DEL", K.worker(worker_id))
        self._command("SREM", K.WORKERS, worker_id)

    def all_workers(self) -> list[tuple]:
        return [(_text(w), _text(host), int(pid), int(threads), float(interval), float(started), float(beat))
                for w, host, pid, threads, interval, started, beat in self._eval("all_workers")]

    def _workers_state(self, now: float) -> tuple[int, bool, bool]:
        live, any_live, paused = self._eval("workers_state", now)
        return int(live), _text(any_live) == "1", _text(paused) == "1"

    def live_worker(self, now: float) -> bool:
        return self._workers_state(now)[1]

    def live_worker_count(self, now: float) -> int:
        return self._workers_state(now)[0]

    def paused(self) -> bool:
        return _text(self._command("HGET", K.CONTROL, "workers_paused")) == "1"

    def set_paused(self, paused: bool) -> None:
        self._command("HSET", K.CONTROL, "workers_paused", int(paused))


class RedisStore:
    """The connections to one Redis server, the scripts loaded on it, and its faults."""

    optimistic = True          # the service applies play decisions with apply_play (module text)
    unique_file_names = True   # every job renames into a file name of its own (module text)
    leases = True              # a worker's row expires; fail_lost_leases fails its jobs
    remote = True              # every read is a round trip to the server

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT,
                 max_idle: int = 8):
        self.address = parse_redis_url(url)
        self.path = str(self.address)  # what log lines and errors name
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle_lock = threading.Lock()  # guards _idle, _open and _closed
        self._idle: list[RedisConnection] = []
        self._open = 0
        self._closed = False
        self._sources = {name: script_source(name) for name in SCRIPTS}
        self._shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in self._sources.items()}
        self.last_fault: tuple[float, StoreError] | None = None
        # Told when the server turns out to hold no recsvc data: what a process remembers of it
        # (the service's known tokens) is forgotten, since ids start again in an empty store.
        self.data_lost_listeners: list[Callable[[], None]] = []
        self._check_layout()

    def __repr__(self) -> str:
        return f"RedisStore({self.path!r})"

    # ---- the interface of recsvc.storage.store.Store

    def reading(self) -> contextlib.AbstractContextManager[RedisTx]:
        return self._tx()

    def single(self) -> contextlib.AbstractContextManager[RedisTx]:
        return self._tx()

    def writing(self) -> contextlib.AbstractContextManager[RedisTx]:
        return self._tx()

    def probe_write(self) -> None:
        with self._tx() as tx:
            tx.probe_write()

    def fault_within(self, seconds: float) -> StoreError | None:
        last = self.last_fault
        if last is not None and time.monotonic() - last[0] < seconds:
            return last[1]
        return None

    def schema_version(self) -> int:
        return K.LAYOUT_VERSION

    @property
    def open_connections(self) -> int:
        with self._idle_lock:
            return self._open

    def close(self) -> None:
        with self._idle_lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn in idle:
            conn.close()

    @staticmethod
    def lease_ms(interval: float) -> int:
        """A worker's lease: LIVENESS_BEATS heartbeat intervals, in whole milliseconds."""
        return max(1, int(round(LIVENESS_BEATS * interval * 1000)))

    def snapshot(self, business_id: int, call_sid: str, encoded: str) -> PlaySnapshot:
        """A PlaySnapshot from the play_snapshot script's reply, keeping that reply as ``seen``."""
        row = [_absent(v) for v in json.loads(encoded)]
        call = Call(business_id, call_sid, row[0], float(row[1]))
        recording = _recording(business_id, call_sid, row[2:8])
        job = _job(row[8:23]) if row[8] is not None else None
        return PlaySnapshot(call, recording, job, row[23] == "1", seen=encoded, retry_count=_int(row[24]))

    def listen(self, on_event: Callable[[str], None], stopping: threading.Event, retry_every: float) -> None:
        """Run until ``stopping``: one subscriber connection to ``recsvc:events``, each message given to
        ``on_event``; a lost connection is opened again every ``retry_every`` seconds until it works."""
        outage_since: float | None = None
        while not stopping.is_set():
            try:
                conn = RedisConnection(self.address, self._connect_timeout, retry_every)
            except (OSError, RedisReplyError, RedisProtocolError) as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("events from other nodes: cannot subscribe to %s (%s); trying again", self.path, exc)
                stopping.wait(retry_every)
                continue
            try:
                reply = conn.pipeline([("SUBSCRIBE", K.EVENTS)])[0]
                if isinstance(reply, RedisReplyError):
                    raise reply
                if outage_since is not None:
                    log.warning("events from other nodes: subscribed again after %.1fs",
                                time.monotonic() - outage_since)
                    outage_since = None
                on_event("subscribed")  # whatever happened while unsubscribed: look again
                pinged = False
                while not stopping.is_set():
                    if not conn.wait_for_reply(retry_every):
                        # A quiet channel: a PING tells a live server from a lost one, whose
                        # connection would otherwise look quiet for ever.
                        if pinged:
                            raise TimeoutError(f"no answer to PING within {retry_every:g}s")
                        conn.send("PING")
                        pinged = True
                        continue
                    message = conn.read()
                    if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                        on_event(_text(message[2]))
                    elif isinstance(message, list) and message[:1] == [b"pong"]:
                        pinged = False
            except (OSError, RedisReplyError, RedisProtocolError) as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("events from other nodes: %s dropped the subscription (%s); trying again",
                                self.path, exc)
            finally:
                conn.close()

    # ---- connections, scripts and faults

    @contextlib.contextmanager
    def _tx(self) -> Iterator[RedisTx]:
        conn = self._checkout()
        try:
            yield RedisTx(self, conn)
        finally:
            if getattr(conn, "broken", False):  # out of step after a connection error: never reused
                self._discard(conn)
            else:
                self._checkin(conn)

    def _checkout(self) -> RedisConnection:
        while True:
            with self._idle_lock:
                if self._closed:
                    raise StoreUnavailable(f"the store {self.path} is closed")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if not conn.closed_by_server():
                return conn
            self._discard(conn)
        try:
            conn = RedisConnection(self.address, self._connect_timeout, self._read_timeout)
        except RedisReplyError as exc:
            raise self._remember(AccessRefused(f"{self.path} refused AUTH or SELECT: {exc}")) from None
        except (OSError, RedisProtocolError) as exc:
            raise self._remember(StoreUnavailable(f"cannot connect to {self.path}: {_describe(exc)}")) from None
        with self._idle_lock:
            self._open += 1
        return conn

    def _checkin(self, conn: RedisConnection) -> None:
        with self._idle_lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        self._discard(conn)

    def _discard(self, conn: RedisConnection) -> None:
        with self._idle_lock:
            self._open -= 1
        conn.close()

    def _remember(self, fault: StoreError) -> StoreError:
        self.last_fault = (time.monotonic(), fault)
        return fault

    def _send(self, conn: RedisConnection, commands: list[tuple]) -> list[Reply]:
        try:
            return conn.pipeline(commands)
        except (OSError, RedisProtocolError) as exc:
            conn.broken = True
            raise self._remember(StoreUnavailable(f"{self.path} did not answer: {_describe(exc)}")) from None

    def _command(self, conn: RedisConnection, command: tuple) -> Reply:
        return self._checked(self._send(conn, [command])[0])

    def _eval(self, conn: RedisConnection, name: str, args: list[str]) -> Reply:
        reply = self._send(conn, [("EVALSHA", self._shas[name], 0, *args)])[0]
        if isinstance(reply, RedisReplyError) and str(reply).startswith("NOSCRIPT"):
            # A restarted (or flushed) server forgot the scripts: load this one and run it again.
            reply = self._send(conn, [("SCRIPT", "LOAD", self._sources[name]),
                                      ("EVALSHA", self._shas[name], 0, *args)])[1]
        return self._checked(reply)

    def _checked(self, reply: Reply) -> Reply:
        if not isinstance(reply, RedisReplyError):
            return reply
        text = str(reply)
        if text.startswith("ACTIVE"):
            raise ActiveJobExists(text)
        if text.startswith("NOLAYOUT"):
            for listener in self.data_lost_listeners:
                listener()
            raise self._remember(StoreUnavailable(
                f"{self.path} holds no recsvc data (restarted empty, or flushed): restore it, or start a node "
                "to begin again with an empty store"))
        if text.startswith(("LOADING", "BUSY", "TRYAGAIN")):
            raise self._remember(StoreBusy(f"{self.path} is busy: {text}"))
        # READONLY (a replica), OOM, MISCONF (cannot persist), NOPERM, ...: it cannot take our writes.
        raise self._remember(StoreUnavailable(f"{self.path} refused: {text}"))

    def _check_layout(self) -> None:
        """Mark an empty server with this layout's version; refuse one written by a newer recsvc."""
        with self._tx() as tx:
            tx._command("SET", K.LAYOUT, K.LAYOUT_VERSION, "NX")
            tx._command("HSETNX", K.CONTROL, "workers_paused", 0)
            version = int(tx._command("GET", K.LAYOUT))
        if version > K.LAYOUT_VERSION:
            raise RuntimeError(f"the Redis layout version {version} is newer than this recsvc ({K.LAYOUT_VERSION})")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
