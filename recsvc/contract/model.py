"""The contract's nouns as frozen values: call, job, cached recording (CONTRACT 1).

These are plain data read from the store; nothing here does I/O. JSON views
use the contract's field names and ISO 8601 UTC times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .clock import iso_utc

QUEUED = "queued"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
ACTIVE_STATUSES = (QUEUED, RUNNING)

# Job failures, CONTRACT 4.
STUCK = "stuck"
ORPHANED = "orphaned"
ORPHANED_MESSAGE = "worker restarted"  # the error_message of a job failed orphaned (CONTRACT 4)
SUPERSEDED = "superseded"
UPSTREAM_NOT_FOUND = "upstream_not_found"
UPSTREAM_AUTH_FAILED = "upstream_auth_failed"
DOWNLOAD_FAILED = "download_failed"
INVALID_AUDIO = "invalid_audio"
TOO_LARGE = "too_large"
STORAGE_ERROR = "storage_error"


@dataclass(frozen=True)
class Call:
    business_id: int
    call_sid: str
    recording_url: str | None
    created_at: float


@dataclass(frozen=True)
class Job:
    id: int
    business_id: int
    call_sid: str
    recording_url: str
    status: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    worker_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempt: int = 0
    queue_seq: int = 0
    # The heartbeat interval of the worker that runs the job: liveness is
    # judged by each worker's own interval (CONTRACT 4). None while queued.
    worker_heartbeat_interval: float | None = None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "business_id": self.business_id,
            "call_sid": self.call_sid,
            "recording_url": self.recording_url,
            "status": self.status,
            "attempt": self.attempt,
            "created_at": iso_utc(self.created_at),
            "started_at": iso_utc(self.started_at),
            "finished_at": iso_utc(self.finished_at),
            "heartbeat_at": iso_utc(self.heartbeat_at),
            "worker_id": self.worker_id,
            "error_code": self.error_code,
            "error_message": self.error_message,
        }


@dataclass(frozen=True)
class Recording:
    """A cached recording's metadata row; ``path`` is relative to recordings/."""
    business_id: int
    call_sid: str
    recording_url: str
    path: str
    size: int
    sha256: str
    content_type: str
    stored_at: float


# calls.credentials: the media of this call is fetched with its business's Twilio account.
TWILIO_CREDENTIALS = "twilio"


@dataclass(frozen=True)
class TwilioAccount:
    """A business's Twilio account: verifies its webhooks and fetches its media."""
    account_sid: str
    business_id: int
    auth_token: str
    media_format: str  # wav | mp3: the suffix asked of Twilio's media URL

    def __repr__(self) -> str:  # the auth token never reaches a log
        return f"TwilioAccount(account_sid={self.account_sid!r}, business_id={self.business_id})"


# ---------------------------------------------------------------- whole seconds (CONTRACT 1, 3, 4)

def nearest_seconds(seconds: float) -> int:
    """A duration told as whole seconds, half up: the ``n`` of a stuck reason (CONTRACT 4; a job
    stuck past a job-timeout of 0.5 s reads "1s", not "0s") and a TTL as Redis reports it."""
    return int(seconds + 0.5)


def wait_seconds(seconds: float) -> int:
    """A duration telling a client to wait: whole seconds, rounded up, at least 1 (CONTRACT 1)."""
    return max(1, math.ceil(seconds - 1e-9))
