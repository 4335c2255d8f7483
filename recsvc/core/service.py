"""The effects of the contract: gather facts, ask the pure decision, apply what it says.

Theory of operation. ``play()`` is CONTRACT 3 end to end, one call per
request: it takes the request's facts (``PlayRequest``: credentials, call_sid,
the wait asked for), reads one snapshot (call, cached recording, latest job for
the current URL, whether a live worker exists) and asks ``decide_play`` once.
Outcomes without side effects (rows 1-6, 9) are answered from that snapshot:
the hot 202 poll costs one statement and no write. Outcomes with effects
(rows 7, 8, 10) are applied inside ``BEGIN IMMEDIATE``, where the snapshot's
decision stands if the transaction sees the same facts (else the transaction's
facts are decided), so fifty simultaneous requests create one job and one INCR
(CONTRACT 8.1), across threads and processes alike. A 202 that asked to wait
carries a ``Hold``; ``hold()`` waits for its job and looks again (CONTRACT 5b).

The retry counter is consulted only when a retry is on the table, inside
that same transaction: GET decides 10b or 10c, then INCR + EXPIRE. A shared
counter that is unreachable counts in the process meanwhile
(``recsvc.storage.fallback_counter``), and the jobs table is a floor under any
counter: it holds the retries of every process, also when Redis comes back
empty. A counter without a fallback that raises (sqlite://) is
logged and the retry allowed (fail open).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import BinaryIO, Callable

from ..contract.clock import Clock, iso_utc
from ..contract.decision import (
    CallNotFound, FirstJob, NoLiveWorker, NoRecordingUrl, PlayFacts, PlayOutcome, Processing,
    RecordingNotFoundUpstream, RetryAllowed, RetryNeeded, RetryRefused, ServeFile, StorageRetry,
    decide_play, decide_retry, stuck_kind, stuck_reason,
)
from ..contract.model import STUCK, SUPERSEDED, TWILIO_CREDENTIALS, Call, Job, Recording, TwilioAccount, wait_seconds
from ..contract.settings import Settings
from ..storage.counter import CounterError, RetryCounter, retry_key
from ..storage.files import HOSTNAME, TEMP_SUFFIX, RecordingFiles
from ..storage.store import PlaySnapshot, Store, StoreBusy, StoreError, Tx
from .links import LinkSigner
from .metrics import Metrics
from .twilio import RecordingStatus, media_url
from .upstream import check_recording_url
from .waiters import JobWaiters

log = logging.getLogger(__name__)

CALL_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_call_sid(raw: str) -> bool:
    """CONTRACT 3 row 2, applied to the raw path segment before any decoding."""
    return CALL_SID.fullmatch(raw) is not None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


TOKEN_PREFIX = "rs_"


def new_token() -> str:
    """A business token: ``rs_`` and 32 random bytes, URL-safe."""
    # CONTRACT 6: "rs_" first, so a token never starts with "-" and "--token TOKEN" always
    # parses; tokens are stored hashed, so tokens issued without the prefix keep working.
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TwilioAccountTaken(Exception):
    """The Twilio account is already registered to another business."""


@dataclass(frozen=True)
class PlayRequest:
    """A play request's facts, as the HTTP side read them once."""
    call_sid: str                       # the raw path segment
    token: str | None = None            # the bearer token
    link: str | None = None             # the query of a signed link, read when there is no token
    wait: int | None = None             # Prefer: wait, in seconds (CONTRACT 5b)


@dataclass(frozen=True)
class Hold:
    """A 202 held until its job ends or until ``until`` (time.monotonic), CONTRACT 5b."""
    business_id: int
    call_sid: str
    job_id: int
    until: float
    applied: int                        # the wait granted, for Preference-Applied


# What a held request answers at once when it looks again (CONTRACT 5b): the file, or a
# final answer that costs nothing to give.
HELD_FINAL_OUTCOMES = (ServeFile, CallNotFound, NoRecordingUrl, RecordingNotFoundUpstream)


@dataclass(frozen=True)
class PlayResult:
    """What the HTTP layer renders for a play request."""
    outcome: PlayOutcome | RetryAllowed | RetryRefused | StorageRetry
    job: Job | None = None              # the job the 202 is about
    attempt: int = 0
    recording: Recording | None = None  # with ``file`` open, for row 4
    file: BinaryIO | None = None

    hold: Hold | None = None            # a 202 that asked to wait (CONTRACT 5b): see RecordingService.hold

    @property
    def answers_processing(self) -> bool:
        """A result answered 202 (rows 9, 10a, 10b)."""
        return isinstance(self.outcome, (Processing, FirstJob, RetryAllowed))


class RecordingService:
    KNOWN_TOKENS = 10_000  # tokens remembered at most; past it the memory starts over

    def __init__(self, settings: Settings, store: Store, files: RecordingFiles, counter: RetryCounter,
                 clock: Clock, metrics: Metrics, signer: LinkSigner, waiters: JobWaiters, on_job_queued: Callable[[], None] = lambda: None,
                 on_job_ended: Callable[[int], None] = lambda job_id: None):
        self.settings = settings
        self.store = store
        self.files = files
        self.counter = counter
        self.clock = clock
        self.metrics = metrics
        self.signer = signer
        self.waiters = waiters
        # The play route's read path (credentials, one snapshot, the decision) is pure
        # CPU under the GIL: one request at a time through it, instead of every
        # connection thread at once, serves more 202 polls with a lower p99 (docs/measurements.md).
        # Nothing that can block for long (write locks, held requests, the counter,
        # sending) runs inside it. A store across the network (Redis) makes the snapshot a
        # round trip: holding the gate through it would serve one poll per round trip, so
        # there is no gate then.
        self._read_gate = contextlib.nullcontext() if store.remote else threading.Lock()
        self.on_job_queued = on_job_queued
        self.on_job_ended = on_job_ended
        self._counter_state_lock = threading.Lock()  # guards _counter_failing
        self._counter_failing = False
        self._known_tokens_lock = threading.Lock()  # guards _known_tokens
        self._known_tokens: dict[str, int] = {}  # bearer token -> business id, at most KNOWN_TOKENS
        if store.remote:
            store.data_lost_listeners.append(self.forget_tokens)

    def forget_tokens(self) -> None:
        """The store lost its data: a remembered token may name a business id that will be given again."""
        with self._known_tokens_lock:
            self._known_tokens.clear()

    # ------------------------------------------------------------ businesses

    def create_business(self, name: str) -> tuple[int, str]:
        token = new_token()
        with self.store.writing() as tx:
            business_id = tx.insert_business(name, hash_token(token), self.clock())
        return business_id, token

    def authenticate(self, token: str | None) -> int | None:
        """The business of a bearer token. Known tokens are remembered as they were sent (a
        business's token never changes, and no business is deleted), so the hot 202 poll
        neither hashes nor queries; an unknown one is hashed and asked every time."""
        if not token:
            return None
        with self._known_tokens_lock:
            business_id = self._known_tokens.get(token)
        if business_id is not None:
            return business_id
        with self.store.reading() as tx:
            business_id = tx.business_for_token(hash_token(token))
        if business_id is not None:
            with self._known_tokens_lock:
                if len(self._known_tokens) >= self.KNOWN_TOKENS:
                    self._known_tokens.clear()
                self._known_tokens[token] = business_id
        return business_id

    def businesses_with_call(self, call_sid: str) -> list[int]:
        """The businesses that have a call of this sid: the candidates of a signed link."""
        with self.store.reading() as tx:
            return tx.businesses_with_call(call_sid)

    # ------------------------------------------------------------ play (CONTRACT 3)

    def play(self, request: PlayRequest) -> PlayResult:
        """CONTRACT 3 for one request: its credentials, the snapshot and one decision.

        An outcome without effects (rows 1-6, 9) is answered from the snapshot read
        here: the hot 202 poll costs one statement and no write. An outcome with
        effects (rows 7, 8, 10) is applied inside ``BEGIN IMMEDIATE``: the decision
        stands when the transaction sees the same facts, and is taken on the
        transaction's facts when another request wrote in between. A 202 that asked
        to wait comes back with ``hold`` set (CONTRACT 5b; ``hold()`` waits).
        """
        with self._read_gate:  # one request at a time through the read path: see __init__
            business_id = self._play_business(request)
            valid = valid_call_sid(request.call_sid)
            if business_id is None or not valid:
                facts = PlayFacts(business_id is not None, valid, None, False, None, False)
                return PlayResult(decide_play(facts, self.clock(), self.settings))
            with self.store.single() as tx:  # the hot 202 poll: one statement, no transaction to open
                snapshot = tx.play_snapshot(business_id, request.call_sid, self.clock())
            facts, recording, handle = self._facts(snapshot)
            outcome = decide_play(facts, self.clock(), self.settings)
        if recording is not None and handle is None:
            self._drop_vanished(recording)
        if isinstance(outcome, NoLiveWorker):
            self._check_heartbeats_writable()
        if isinstance(outcome, (FirstJob, RetryNeeded, NoLiveWorker)) and self.store.optimistic:
            result = self._play_by_snapshot(business_id, request.call_sid, snapshot, outcome)  # rows 7, 8, 10
        elif isinstance(outcome, (FirstJob, RetryNeeded, NoLiveWorker)):  # rows 7, 8, 10: write
            result = self._play_with_effects(business_id, request.call_sid, facts, outcome)
        else:
            result = self._result(outcome, recording, handle)
        if request.wait is not None and result.job is not None and result.answers_processing:
            until = time.monotonic() + min(request.wait, self.settings.max_wait)
            applied = min(request.wait, wait_seconds(self.settings.max_wait)) if request.wait else 0
            result = replace(result, hold=Hold(business_id, request.call_sid, result.job.id, until, applied))
        return result

    def hold(self, result: PlayResult, client_gone: Callable[[], bool]) -> PlayResult:
        """CONTRACT 5b: wait until the held job ends or ``result.hold.until``, then look again.

        Looking again writes nothing: the file (or a final 404) is answered as it
        is now; a job that ended without a file leaves the request the 202 it had,
        and the retry of row 10b waits for the player's next request."""
        held = result.hold
        while not client_gone():
            left = held.until - time.monotonic()
            ended = left > 0 and self.waiters.wait(held.job_id, left, client_gone)
            with self.store.single() as tx:
                snapshot = tx.play_snapshot(held.business_id, held.call_sid, self.clock())
            facts, recording, handle = self._facts(snapshot)
            outcome = decide_play(facts, self.clock(), self.settings)
            if isinstance(outcome, NoLiveWorker):
                self._check_heartbeats_writable()
            if isinstance(outcome, HELD_FINAL_OUTCOMES):
                return replace(self._result(outcome, recording, handle), hold=held)
            if handle is not None:
                handle.close()
            if not isinstance(outcome, Processing):
                break
            result = replace(self._result(outcome, recording, None), hold=held)  # the job's status as of now
            if not ended:
                break
        return result

    def _play_business(self, request: PlayRequest) -> int | None:
        """The business a play request speaks for: its bearer token's, else its signed link's."""
        if request.token is not None or request.link is None:
            return self.authenticate(request.token)
        if not valid_call_sid(request.call_sid):
            return None
        candidates = self.businesses_with_call(request.call_sid)
        return self.signer.verify(request.link, request.call_sid, self.clock(), candidates)

    @staticmethod
    def _result(outcome: PlayOutcome, recording: Recording | None, handle: BinaryIO | None) -> PlayResult:
        """The answer to an outcome that writes nothing (rows 1-6, 9)."""
        if isinstance(outcome, ServeFile):
            return PlayResult(outcome, recording=recording, file=handle)
        if handle is not None:
            handle.close()
        if isinstance(outcome, Processing):
            return PlayResult(outcome, job=outcome.job, attempt=outcome.job.attempt)
        return PlayResult(outcome)

    def _facts(self, snapshot: PlaySnapshot | None) -> tuple[PlayFacts, Recording | None, BinaryIO | None]:
        """The decision's facts from a snapshot, with the cached file opened when it is intact."""
        if snapshot is None:
            return PlayFacts(True, True, None, False, None, False), None, None
        recording = snapshot.recording
        handle = self.files.open_intact(recording.path, recording.size) if recording is not None else None
        facts = PlayFacts(authenticated=True, call_sid_valid=True, call=snapshot.call,
                          recording_intact=handle is not None, latest_job=snapshot.latest_job,
                          live_worker=snapshot.live_worker, beats_excused=self._beats_excused())
        return facts, recording, handle

    def _beats_excused(self) -> bool:
        """Missing heartbeats are not judged within the liveness window of a storage fault: the
        workers could not write them (CONTRACT 3, storage faults; decision.stuck_reason)."""
        return self.store.fault_within(self.settings.liveness_window) is not None

    def _check_heartbeats_writable(self) -> None:
        """Row 7 is judged only while heartbeats can be written (CONTRACT 3, storage faults): a
        storage fault seen within the liveness window explains the missing beats better."""
        fault = self.store.fault_within(self.settings.liveness_window)
        if fault is not None:
            raise type(fault)(f"worker heartbeats could not be written: {fault}")

    def _drop_vanished(self, recording: Recording) -> None:
        """A cached file that vanished or changed size is not cached: drop its row (CONTRACT 3)."""
        with self.store.writing() as tx:
            dropped = tx.delete_recording(recording.business_id, recording.call_sid, recording.sha256)
        if dropped:
            log.warning("call_sid=%s cached file %s vanished or changed size; row dropped",
                        recording.call_sid, recording.path)

    def _play_with_effects(self, business_id: int, call_sid: str, seen: PlayFacts, decided: PlayOutcome) -> PlayResult:
        committed: list[Callable[[], None]] = []  # log lines and metrics, told once the commit made them true
        counted: list[str] = []  # the key of a retry counted outside the database, if any
        try:
            return self._apply_play(business_id, call_sid, seen, decided, committed, counted)
        except StoreError:
            # CONTRACT 3, storage faults change nothing: a count the rolled-back transaction
            # cannot take back with it is taken back here (sqlite:// counts inside it).
            decr = getattr(self.counter, "decr", None)
            for key in counted if decr is not None else ():
                with contextlib.suppress(CounterError):
                    decr(key)
            raise

    def _apply_play(self, business_id: int, call_sid: str, seen: PlayFacts, decided: PlayOutcome,
                    committed: list[Callable[[], None]], counted: list[str]) -> PlayResult:
        queued = False
        with self.store.writing() as tx:
            now = self.clock()
            facts, recording, handle = self._facts(tx.play_snapshot(business_id, call_sid, now))
            # The snapshot's decision stands on the same facts; another request wrote in between otherwise.
            outcome = decided if facts == seen else decide_play(facts, now, self.settings)
            call = facts.call
            if not isinstance(outcome, (FirstJob, RetryNeeded, NoLiveWorker)):
                return self._result(outcome, recording, handle)
            if isinstance(outcome, NoLiveWorker):                               # row 7
                job = None
                if outcome.create_job:
                    previous = facts.latest_job
                    job = self._insert_job(tx, call, previous.attempt if previous else 0, now)
                    queued = True
                else:
                    tx.probe_write()  # row 7 is judged only while this process can write (CONTRACT 3)
                result = PlayResult(outcome, job=job, attempt=job.attempt if job else 0)
            else:
                stuck = outcome.stuck
                if stuck is not None:                                           # row 8
                    self._mark_stuck(tx, stuck[0], stuck[1], now, committed)
                if isinstance(outcome, FirstJob):                               # row 10a
                    job = self._insert_job(tx, call, 0, now)
                    queued = True
                    result = PlayResult(outcome, job=job, attempt=0)
                else:
                    result = self._retry(tx, call, outcome, now, committed, counted)  # rows 10b / 10c
                    queued = isinstance(result.outcome, (RetryAllowed, StorageRetry))
        for note in committed:
            note()
        if queued:
            self.on_job_queued()
        stuck = getattr(outcome, "stuck", None)
        if stuck is not None:
            self.on_job_ended(stuck[0].id)  # wake requests held on the job that was just failed
        return result

    APPLY_TRIES = 8  # decisions a request may take before it answers 503 storage_busy: the call kept changing

    def _play_by_snapshot(self, business_id: int, call_sid: str, snapshot: PlaySnapshot,
                          outcome: PlayOutcome) -> PlayResult:
        """Rows 7, 8 and 10 on a store that applies a decision by compare-and-set (the Redis store).

        The decision taken on ``snapshot`` is applied by one script if the snapshot
        still holds there; otherwise the script hands back the snapshot as it is now,
        and that is decided again. The retry counter is in the snapshot and counted by
        the same script, so N nodes create one job and count one retry, as one does.
        """
        for _ in range(self.APPLY_TRIES):
            now = self.clock()
            call = snapshot.call
            stuck = getattr(outcome, "stuck", None)
            insert, number, verdict = "", 0, None
            if isinstance(outcome, NoLiveWorker):                               # row 7
                if outcome.create_job:
                    insert, number = "fixed", snapshot.latest_job.attempt if snapshot.latest_job else 0
            elif isinstance(outcome, FirstJob):                                 # row 10a (after row 8)
                insert = "fixed"
            elif not outcome.counts:                                            # row 10b, storage_error
                insert, number = "fixed", outcome.last_job.attempt
            else:                                                               # rows 10b / 10c
                number = self._attempts_on_record(outcome.last_job, now)
                verdict = self._retry_verdict(call, outcome, snapshot.retry_count or 0, number, now)
                insert = "count" if isinstance(verdict, RetryAllowed) else ""
            with self.store.writing() as tx:
                applied = tx.apply_play(business_id, call_sid, now, snapshot, stuck=stuck, insert=insert,
                                        number=number, window=self.settings.retry_window,
                                        probe=isinstance(outcome, NoLiveWorker) and not insert)
            if not applied[0]:  # another request or worker changed the call: decide on what is there now
                snapshot = applied[1]
                facts, recording, handle = self._facts(snapshot)
                outcome = decide_play(facts, self.clock(), self.settings)
                if recording is not None and handle is None:
                    self._drop_vanished(recording)
                if isinstance(outcome, NoLiveWorker):
                    self._check_heartbeats_writable()
                if not isinstance(outcome, (FirstJob, RetryNeeded, NoLiveWorker)):
                    return self._result(outcome, recording, handle)
                continue
            _, stuck_failed, job, attempt = applied
            if stuck_failed:
                self._stuck_note(*stuck)()
                self.on_job_ended(stuck[0].id)
            if job is not None:
                self.on_job_queued()
            if isinstance(outcome, NoLiveWorker):
                return PlayResult(outcome, job=job, attempt=job.attempt if job else 0)
            if isinstance(outcome, FirstJob):
                return PlayResult(outcome, job=job, attempt=0)
            if verdict is None:
                self._storage_retry_note(call, job, outcome.last_job)()
                return PlayResult(StorageRetry(), job=job, attempt=job.attempt)
            if isinstance(verdict, RetryRefused):
                self._refused_note(call, outcome, verdict)()
                return PlayResult(verdict, job=outcome.last_job, attempt=verdict.attempts)
            self._retry_note(call, attempt)()
            return PlayResult(verdict, job=job, attempt=attempt)
        raise StoreBusy(f"call_sid={call_sid} kept changing while its answer was decided")

    def _retry_verdict(self, call: Call, outcome: RetryNeeded, counted: int, floor: int,
                       now: float) -> RetryAllowed | RetryRefused:
        """Rows 10b / 10c from the retry count read with the snapshot, over the jobs' floor."""
        attempts = max(counted, floor)
        ttl = None
        if attempts >= self.settings.max_retry_attempts:
            ttl = self._window_left(outcome.last_job, now)
            if counted >= floor:
                with contextlib.suppress(CounterError):
                    ttl = self.counter.ttl(retry_key(call.business_id, call.call_sid))
        return decide_retry(attempts, ttl, outcome.last_failure, self.settings)

    def _insert_job(self, tx: Tx, call: Call, attempt: int, now: float) -> Job:
        job_id = tx.insert_job(call.business_id, call.call_sid, call.recording_url, attempt, now)
        return tx.get_job(job_id)

    def _mark_stuck(self, tx: Tx, job: Job, reason: str, now: float, committed: list[Callable[[], None]]) -> bool:
        """Fail a stuck job; its [STUCK] line and metric wait in ``committed`` for the commit (CONTRACT 3)."""
        if not tx.fail_job(job.id, job.status, STUCK, reason, now):
            return False
        committed.append(self._stuck_note(job, reason))
        return True

    def _stuck_note(self, job: Job, reason: str) -> Callable[[], None]:
        def note() -> None:
            self.metrics.stuck_job(stuck_kind(reason))
            log.warning("[STUCK] job=%d call_sid=%s reason=%s", job.id, job.call_sid, reason)
        return note

    def _refused_note(self, call: Call, outcome: RetryNeeded, verdict: RetryRefused) -> Callable[[], None]:
        what = "Worker not processing queue" if outcome.last_failure == STUCK else "Recording download failed"

        def refused() -> None:
            self.metrics.fail_fast_trip(verdict.error)
            log.warning("[FAIL_FAST] %s after %d attempts call_sid=%s", what, verdict.attempts, call.call_sid)
        return refused

    def _retry_note(self, call: Call, attempt: int) -> Callable[[], None]:
        def note() -> None:
            self.metrics.retry()
            log.warning("[FAIL_FAST] Retry attempt %d/%d for call_sid=%s", attempt,
                        self.settings.max_retry_attempts, call.call_sid)
        return note

    def _storage_retry_note(self, call: Call, job: Job, replaced: Job) -> Callable[[], None]:
        return lambda: log.warning("call_sid=%s job=%d replaces job=%d, failed storage_error; not counted as a "
                                   "retry", call.call_sid, job.id, replaced.id)

    def _counter_failed(self, exc: Exception, consequence: str) -> None:
        """A counter without a fallback (sqlite://, whose faults are the database's) fails open,
        with one warning per outage, not one per request."""
        with self._counter_state_lock:
            first = not self._counter_failing
            self._counter_failing = True
        if first:
            log.warning("retry counter unavailable (%s); %s, and failing open until it answers", exc, consequence)
        else:
            log.debug("retry counter still unavailable (%s); %s", exc, consequence)

    def _counter_answered(self) -> None:
        if self._counter_failing:
            with self._counter_state_lock:
                recovered, self._counter_failing = self._counter_failing, False
            if recovered:
                log.info("retry counter answers again")

    def _retry(self, tx: Tx, call: Call, outcome: RetryNeeded, now: float,
               committed: list[Callable[[], None]], counted: list[str]) -> PlayResult:
        if not outcome.counts:  # CONTRACT 4: storage_error is the host's fault; the counter is not touched
            job = self._insert_job(tx, call, outcome.last_job.attempt, now)
            committed.append(self._storage_retry_note(call, job, outcome.last_job))
            return PlayResult(StorageRetry(), job=job, attempt=job.attempt)
        key = retry_key(call.business_id, call.call_sid)
        # The jobs table, which every process shares, is a floor under the counter: a counter
        # that is unreachable, or came back empty (a restarted Redis keeps nothing), does not
        # know the retries other processes made (CONTRACT 3, the retry counter).
        floor = self._attempts_on_record(outcome.last_job, now)
        try:
            attempts = self.counter.get(key) or 0
            ttl = None
            if max(attempts, floor) >= self.settings.max_retry_attempts:
                ttl = self.counter.ttl(key) if attempts >= floor else self._window_left(outcome.last_job, now)
            attempts = max(attempts, floor)
            self._counter_answered()
        except CounterError as exc:
            self._counter_failed(exc, "allowing the retry")
            attempts, ttl = None, None
        verdict = decide_retry(attempts, ttl, outcome.last_failure, self.settings)
        if isinstance(verdict, RetryRefused):
            committed.append(self._refused_note(call, outcome, verdict))
            return PlayResult(verdict, job=outcome.last_job, attempt=verdict.attempts)
        try:
            attempt = max(self.counter.incr_and_expire(key, self.settings.retry_window), floor + 1)
            counted.append(key)
            self._counter_answered()
        except CounterError as exc:
            self._counter_failed(exc, "allowing the retry")
            attempt = outcome.last_job.attempt + 1
        job = self._insert_job(tx, call, attempt, now)
        committed.append(self._retry_note(call, attempt))
        return PlayResult(verdict, job=job, attempt=attempt)

    def _attempts_on_record(self, last_job: Job, now: float) -> int:
        """The call's retry count as its jobs record it, while the window of its last retry lasts.

        A shared counter that is unreachable or was restarted empty (CONTRACT 3) does not know
        the retries made so far, nor does this process's own count know those of other
        processes; the jobs table, which all of them share, does: a retry job's attempt is the
        count after its INCR.
        """
        return last_job.attempt if self._window_left(last_job, now) > 0 else 0

    def _window_left(self, last_job: Job, now: float) -> float:
        return last_job.created_at + self.settings.retry_window - now

    # ------------------------------------------------------------ calls (CONTRACT 6)

    def put_call(self, business_id: int, call_sid: str, recording_url: str | None) -> tuple[bool, dict]:
        """Create or update a call; True when created. Raises UrlNotAllowed."""
        return self._store_call(business_id, call_sid, recording_url, credentials=None, queue_now=False)

    def _store_call(self, business_id: int, call_sid: str, recording_url: str | None, *,
                    credentials: str | None, queue_now: bool) -> tuple[bool, dict]:
        """Upsert a call. A new URL supersedes active jobs, drops the cached file and the
        retry counter (CONTRACT 6); ``queue_now`` queues its download at once (webhooks)."""
        if recording_url is not None:
            check_recording_url(recording_url, self.settings.allow_upstream)
        with self.store.writing() as tx:
            created, url_changed, dropped, queued = tx.put_call(business_id, call_sid, recording_url, credentials,
                                                                self.clock(), queue_now)
            view = self._call_view(tx, business_id, call_sid)
        if queued:
            self.on_job_queued()
        if dropped is not None:
            self.files.remove(dropped)
        if url_changed:  # a new URL starts a fresh history (CONTRACT 6)
            try:
                self.counter.delete(retry_key(business_id, call_sid))
            except CounterError as exc:
                self._counter_failed(exc, f"the retry count of call_sid={call_sid} was not reset")
        return created, view

    def get_call(self, business_id: int, call_sid: str) -> dict | None:
        with self.store.reading() as tx:
            return self._call_view(tx, business_id, call_sid)

    def _call_view(self, tx: Tx, business_id: int, call_sid: str) -> dict | None:
        call = tx.get_call(business_id, call_sid)
        if call is None:
            return None
        recording = tx.get_recording(business_id, call_sid)
        latest = tx.latest_job(business_id, call_sid)
        return {
            "call_sid": call.call_sid,
            "recording_url": call.recording_url,
            "created_at": iso_utc(call.created_at),
            "cached": recording is not None,
            "latest_job": latest.to_json() if latest else None,
        }

    # ------------------------------------------------------------ Twilio

    def register_twilio(self, business_id: int, account_sid: str, auth_token: str, media_format: str) -> bool:
        """Store a business's Twilio account; False when there is no such business.

        Raises ``TwilioAccountTaken`` when another business already has this account
        (CONTRACT 6: 409): one account signs for one business only."""
        with self.store.writing() as tx:
            registered = tx.register_twilio_account(account_sid, business_id, auth_token, media_format)
        if registered == "taken":
            raise TwilioAccountTaken(account_sid)
        return registered == "ok"

    def twilio_account(self, account_sid: str) -> TwilioAccount | None:
        with self.store.reading() as tx:
            return tx.twilio_account_by_sid(account_sid)

    def twilio_recording_status(self, account: TwilioAccount, status: RecordingStatus) -> tuple[bool, dict]:
        """A verified recording-status callback: completed -> the call gets Twilio's media URL
        and its download is queued at once; anything else -> the call has no recording URL."""
        url = None
        if status.status == "completed" and status.recording_url:
            url = media_url(status.recording_url, account.media_format)
        return self._store_call(account.business_id, status.call_sid, url,
                                credentials=TWILIO_CREDENTIALS if url else None, queue_now=True)

    # ------------------------------------------------------------ admin (CONTRACT 6)

    def set_paused(self, paused: bool) -> bool:
        with self.store.writing() as tx:
            tx.set_paused(paused)
        log.warning("workers %s", "paused" if paused else "resumed")
        if not paused:
            self.on_job_queued()
        return paused

    def cleanup(self) -> int:
        """The sweeper's pass: mark every stuck active job failed; never creates jobs (CONTRACT 4)."""
        with self.store.reading() as tx:
            candidates = tx.active_jobs()
        now = self.clock()
        excused = self._beats_excused()
        stuck = [(job, reason) for job in candidates
                 if (reason := stuck_reason(job, now, self.settings, beats_excused=excused))]
        if not stuck:
            return 0
        committed: list[Callable[[], None]] = []
        with self.store.writing() as tx:
            ended = [job.id for job, reason in stuck if self._mark_stuck(tx, job, reason, now, committed)]
        for note in committed:
            note()
        for job_id in ended:
            self.on_job_ended(job_id)
        return len(ended)

    def fail_lost_leases(self) -> int:
        """A store of leases (Redis): fail the running jobs of every worker whose lease expired, on
        whichever node it ran (CONTRACT 4, heartbeat lost). Judged by the server's clock, so the
        nodes' clocks need not agree to the second. Not while this node saw the store fail within
        the liveness window: no worker could renew its lease then, and each gets that long to do so."""
        if self._beats_excused():
            return 0
        with self.store.writing() as tx:
            failed = tx.fail_lost_leases(STUCK, "worker heartbeat lost ", self.clock())
        for job_id, call_sid, reason in failed:
            self.metrics.stuck_job(stuck_kind(reason))
            log.warning("[STUCK] job=%d call_sid=%s reason=%s (its worker's lease expired)", job_id, call_sid, reason)
            self.on_job_ended(job_id)
        return len(failed)

    def jobs(self, call_sid: str | None, business_id: int | None, limit: int = 200, *,
             status: str | None = None, since: float | None = None) -> list[dict]:
        with self.store.reading() as tx:
            if status is None and since is None:
                return [job.to_json() for job in tx.jobs_newest_first(call_sid, business_id, limit)]
            return [job.to_json() for job in tx.jobs_filtered(call_sid, business_id, status, since, limit)]

    def retry_counter(self, business_id: int, call_sid: str) -> dict:
        key = retry_key(business_id, call_sid)
        view = {"key": key, "attempts": self.counter.get(key) or 0, "ttl": self.counter.ttl(key)}
        if getattr(self.counter, "in_fallback", False):
            # The view is the shared backend's (CONTRACT 3); while it is unreachable this process counts
            # alone, which /metrics shows (recsvc_counter_fallback): say so rather than pass one for the other.
            raise CounterError("the shared retry counter is unreachable; this process is counting on its own")
        return view

    # ------------------------------------------------------------ health

    def readiness(self) -> str | None:
        """None when ready, else the reason (CONTRACT 6, /readyz); a storage fault is named."""
        try:
            self.store.probe_write()
            self._probe_recordings_folder()
            with self.store.reading() as tx:
                live = tx.live_worker(self.clock())
                paused = tx.paused()
        except StoreError as exc:
            return f"storage {'busy' if isinstance(exc, StoreBusy) else 'unavailable'}: {exc}"
        except OSError as exc:
            return f"storage unavailable: the recordings folder cannot be written: {exc.strerror or exc}"
        except Exception as exc:  # any database failure means not ready
            return f"database unavailable: {exc}"
        if paused:
            return "workers are paused"
        if not live:
            return "no live worker"
        return None

    def _probe_recordings_folder(self) -> None:
        """Write one page into the recordings folder and remove it; raises OSError when the disk refuses.
        Named as a temporary file of this process, so a crash in between leaves nothing for long."""
        path = os.path.join(self.files.root, f".{HOSTNAME}.{os.getpid()}.readyz{TEMP_SUFFIX}")
        try:
            with open(path, "wb") as probe:
                probe.write(bytes(4096))
                probe.flush()
                os.fsync(probe.fileno())
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def gauges(self) -> dict:
        with self.store.reading() as tx:
            counts = tx.count_jobs_by_status()
            live = tx.live_worker_count(self.clock())
            paused = tx.paused()
            cache_bytes, cache_files = tx.cache_bytes()
        return {
            "recsvc_jobs": ("Jobs in the database, by status.",
                            [((("status", s),), n) for s, n in sorted(counts.items())]),
            "recsvc_queue_depth": ("Jobs queued and not yet claimed.", [((), counts.get("queued", 0))]),
            "recsvc_live_workers": ("Worker processes with a fresh heartbeat.", [((), live)]),
            "recsvc_workers_paused": ("1 while workers are paused.", [((), int(paused))]),
            "recsvc_cache_bytes": ("Bytes of cached recordings.", [((), cache_bytes)]),
            "recsvc_cache_files": ("Cached recordings.", [((), cache_files)]),
        }

