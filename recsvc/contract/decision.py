"""The status decision of CONTRACT section 3 and the stuck rules of section 4, as pure functions.

Theory of operation. A play request is decided in two pure steps over
plain values and an injected ``now``; nothing here reads a clock, a socket
or the database:

1. ``decide_play(facts, now, settings)`` walks rows 1-10 of the table, first
   match wins, and returns one frozen outcome per row. Row 8 (a stuck active
   job) does not answer by itself: it sets ``stuck`` on the row-10 outcome
   that follows it, so the caller marks the job failed and continues.
2. Row 10b/10c depend on the retry counter, which is only worth asking when
   a retry is on the table. ``decide_retry(attempts, ...)`` settles it from
   the counter's current value: ``RetryAllowed`` (INCR + EXPIRE, new job) or
   ``RetryRefused`` (fail fast, nothing touched). ``attempts=None`` means
   the counter could not be read: the retry is allowed (fail open).

The caller (``service.py``) gathers the facts, runs these functions inside a
write transaction when the outcome has effects, and applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import (ACTIVE_STATUSES, COMPLETED, FAILED, QUEUED, RUNNING, STORAGE_ERROR, STUCK, UPSTREAM_NOT_FOUND,
                    Call, Job, nearest_seconds, wait_seconds)
from .settings import LIVENESS_BEATS, Settings

# ---------------------------------------------------------------- section 4


def stuck_reason(job: Job, now: float, settings: Settings, *, beats_excused: bool = False) -> str | None:
    """The reason text when an active job is stuck at ``now``, else None (CONTRACT 4).

    Rules are checked in the contract's order; the first that holds names
    the reason. A running job's heartbeat is judged by the interval of the
    worker that runs it. ``beats_excused``: the store failed within the
    liveness window, so no worker could write its beats; as with row 7
    (CONTRACT 3, storage faults), missing beats are not judged until every
    worker has had that window to write again. The job's own deadline still is.
    """
    if job.status == QUEUED:
        waited = now - job.created_at
        if waited > settings.job_timeout:
            return f"queued {nearest_seconds(waited)}s without worker pickup"
        return None
    if job.status != RUNNING:
        return None
    if job.started_at is not None and now - job.started_at > settings.job_timeout:
        return running_too_long(now - job.started_at)
    if job.started_at is None:
        return "marked running but no started_at"
    interval = job.worker_heartbeat_interval or settings.heartbeat_interval
    beat = job.heartbeat_at if job.heartbeat_at is not None else job.started_at
    if now - beat > LIVENESS_BEATS * interval and not beats_excused:
        return f"worker heartbeat lost {nearest_seconds(now - beat)}s ago"
    return None


def running_too_long(seconds: float) -> str:
    """The reason text of the second stuck rule, also given by a worker that cut a try at the job's deadline."""
    return f"running {nearest_seconds(seconds)}s without completion"


# The labels stuck_kind returns, so /metrics can show each at 0 before it first happens.
STUCK_KINDS = ("queued", "running", "no_started_at", "heartbeat_lost")


def stuck_kind(reason: str) -> str:
    """A short label of a stuck reason for metrics: queued, running, no_started_at, heartbeat_lost."""
    if reason.startswith("queued"):
        return "queued"
    if reason.startswith("running"):
        return "running"
    if reason.startswith("marked running"):
        return "no_started_at"
    return "heartbeat_lost"


# ---------------------------------------------------------------- section 3


@dataclass(frozen=True)
class PlayFacts:
    """Everything the decision looks at, read by the caller in one snapshot."""
    authenticated: bool
    call_sid_valid: bool
    call: Call | None
    recording_intact: bool          # a cached file that is whole and matches its row
    latest_job: Job | None          # the newest job for the call's current recording_url
    live_worker: bool
    beats_excused: bool = False     # the store failed within the liveness window (see stuck_reason)


@dataclass(frozen=True)
class Unauthorized:                 # row 1
    pass


@dataclass(frozen=True)
class InvalidCallSid:               # row 2
    pass


@dataclass(frozen=True)
class CallNotFound:                 # row 3
    pass


@dataclass(frozen=True)
class ServeFile:                    # row 4
    pass


@dataclass(frozen=True)
class NoRecordingUrl:               # row 5
    pass


@dataclass(frozen=True)
class RecordingNotFoundUpstream:    # row 6
    pass


@dataclass(frozen=True)
class NoLiveWorker:                 # row 7
    create_job: bool                # the call has no active job: queue one for when a worker is back


@dataclass(frozen=True)
class Processing:                   # row 9
    job: Job


@dataclass(frozen=True)
class FirstJob:                     # row 10a
    stuck: tuple[Job, str] | None = None   # row 8 found this job stuck first


@dataclass(frozen=True)
class RetryNeeded:                  # rows 10b / 10c, settled by decide_retry
    last_job: Job                   # the failed (or completed, file gone) job
    last_failure: str | None        # error_code of the last failure, None when its file is gone
    stuck: tuple[Job, str] | None = None

    @property
    def counts(self) -> bool:
        """Whether this retry counts against the limit: a job failed ``storage_error`` is replaced
        without touching the counter, the fault being the host's, not the call's (CONTRACT 4)."""
        return self.last_failure != STORAGE_ERROR


PlayOutcome = (Unauthorized | InvalidCallSid | CallNotFound | ServeFile | NoRecordingUrl
               | RecordingNotFoundUpstream | NoLiveWorker | Processing | FirstJob | RetryNeeded)


def decide_play(facts: PlayFacts, now: float, settings: Settings) -> PlayOutcome:
    """CONTRACT 3: the first matching row wins."""
    if not facts.authenticated:
        return Unauthorized()                                   # row 1
    if not facts.call_sid_valid:
        return InvalidCallSid()                                 # row 2
    call = facts.call
    if call is None:
        return CallNotFound()                                   # row 3
    if facts.recording_intact:
        return ServeFile()                                      # row 4
    if not call.recording_url:
        return NoRecordingUrl()                                 # row 5
    job = facts.latest_job
    if job is not None and job.status == FAILED and job.error_code == UPSTREAM_NOT_FOUND:
        return RecordingNotFoundUpstream()                      # row 6
    if not facts.live_worker:
        return NoLiveWorker(create_job=job is None or job.status not in ACTIVE_STATUSES)  # row 7
    stuck = None
    if job is not None and job.status in ACTIVE_STATUSES:
        reason = stuck_reason(job, now, settings, beats_excused=facts.beats_excused)
        if reason is None:
            return Processing(job)                              # row 9
        stuck = (job, reason)                                   # row 8: continue at row 10
    if job is None:
        return FirstJob()                                       # row 10a
    if stuck is not None:
        return RetryNeeded(last_job=job, last_failure=STUCK, stuck=stuck)
    if job.status == COMPLETED:                                 # completed, but its file is gone
        return RetryNeeded(last_job=job, last_failure=None)
    return RetryNeeded(last_job=job, last_failure=job.error_code)  # failed


@dataclass(frozen=True)
class RetryAllowed:                 # row 10b
    pass


@dataclass(frozen=True)
class StorageRetry:                 # row 10b after a storage_error (CONTRACT 3, storage faults; 4)
    """The last job failed ``storage_error``: a replacement is queued without touching the counter,
    and the answer is 503 ``storage_unavailable`` — the fault is the host's, and may still be on."""


@dataclass(frozen=True)
class RetryRefused:                 # row 10c
    error: str                      # worker_not_processing_queue | recording_download_failed
    attempts: int
    retry_after: int                # the counter's TTL, at least 1


WORKER_NOT_PROCESSING_QUEUE = "worker_not_processing_queue"
RECORDING_DOWNLOAD_FAILED = "recording_download_failed"


def decide_retry(attempts: int | None, ttl: int | None, last_failure: str | None,
                 settings: Settings) -> RetryAllowed | RetryRefused:
    """Rows 10b/10c from the counter's value before this retry.

    ``attempts`` None means the counter backend failed: allow (fail open).
    ``ttl`` is the key's TTL as Redis reports it; a key without one (-1) is
    reported as the whole window.
    """
    if attempts is None or attempts < settings.max_retry_attempts:
        return RetryAllowed()
    error = WORKER_NOT_PROCESSING_QUEUE if last_failure == STUCK else RECORDING_DOWNLOAD_FAILED
    seconds = ttl if ttl is not None and ttl > 0 else settings.retry_window
    return RetryRefused(error=error, attempts=attempts, retry_after=wait_seconds(seconds))
