"""The layout of recsvc's state on a Redis server (``--store redis://``): every key, every field.

Theory of operation. The Redis store (``recsvc.storage.redis_store``) keeps
what the SQLite store keeps in tables, one Redis key per row plus the
indexes a query needs. Every key starts with ``PREFIX``. A value that SQL
would hold as NULL is a hash field that is absent. Numbers are written as
Python's ``repr`` of the float or int, and read back as such.

Rows:

- ``recsvc:business:{id}``: hash ``name``, ``token_hash``, ``created_at``;
  ``recsvc:business:by-token``: hash token_hash -> id; ids from
  ``recsvc:next:business`` (INCR).
- ``recsvc:call:{business_id}:{call_sid}``: hash ``recording_url``,
  ``credentials``, ``created_at``, ``updated_at``;
  ``recsvc:calls:by-sid:{call_sid}``: set of business ids.
- ``recsvc:job:{id}``: hash of ``JOB_FIELDS``; ids from ``recsvc:next:job``.
  Indexes: ``recsvc:jobs`` (zset, every id scored by itself),
  ``recsvc:jobs:of:{business_id}:{call_sid}`` (zset, the call's ids),
  ``recsvc:jobs:active:{business_id}:{call_sid}`` (string, the call's one
  active job: CONTRACT 8.1), ``recsvc:queue`` (zset of queued ids, member
  ``queue_member(id)``, score ``queue_seq``: the queue order is score then
  id), ``recsvc:jobs:running`` (set) and ``recsvc:jobs:running:{worker_id}``
  (set), ``recsvc:jobs:count`` (hash status -> number of jobs).
- ``recsvc:recording:{business_id}:{call_sid}``: hash of ``RECORDING_FIELDS``
  plus ``last_played_at``; ``recsvc:recordings:by-play`` (zset of
  ``{business_id}:{call_sid}`` scored by last_played_at);
  ``recsvc:recordings:size`` (hash ``bytes``, ``files``).
- ``recsvc:worker:{id}``: hash ``host``, ``pid``, ``threads``,
  ``heartbeat_interval``, ``started_at``, ``heartbeat_at``. It is the
  worker's lease: every heartbeat sets it to expire after
  ``LIVENESS_BEATS`` intervals, so a dead worker's row goes by itself on
  any machine. ``recsvc:workers``: set of worker ids (pruned of expired ones).
- ``recsvc:control``: hash ``workers_paused`` (0 or 1).
- ``recsvc:twilio:{account_sid}``: hash ``business_id``, ``auth_token``,
  ``media_format``; ``recsvc:twilio:of:{business_id}``: string account_sid.
- The retry counter of a call: ``recording_retry_attempts:{business_id}:{call_sid}``
  (CONTRACT 3's own name, no prefix), an integer with a TTL, as ``--counter
  redis://`` keeps it.
- ``recsvc:layout``: the version of this layout (``LAYOUT_VERSION``).

Channel ``recsvc:events`` carries ``ended:{job_id}`` when a job ends and
``queued`` when one is queued, so every node wakes its held requests and its
idle download threads (CONTRACT 5b across nodes).
"""

from __future__ import annotations

PREFIX = "recsvc:"
LAYOUT_VERSION = 1

LAYOUT = PREFIX + "layout"
NEXT_BUSINESS = PREFIX + "next:business"
NEXT_JOB = PREFIX + "next:job"
BUSINESS_BY_TOKEN = PREFIX + "business:by-token"
JOBS = PREFIX + "jobs"
QUEUE = PREFIX + "queue"
RUNNING = PREFIX + "jobs:running"
JOB_COUNT = PREFIX + "jobs:count"
RECORDINGS_BY_PLAY = PREFIX + "recordings:by-play"
RECORDINGS_SIZE = PREFIX + "recordings:size"
WORKERS = PREFIX + "workers"
CONTROL = PREFIX + "control"
EVENTS = PREFIX + "events"

# The fields of a job hash, in the order of recsvc.contract.model.Job's first fields.
JOB_FIELDS = ("id", "business_id", "call_sid", "recording_url", "status", "created_at", "started_at",
              "finished_at", "heartbeat_at", "worker_id", "error_code", "error_message", "attempt", "queue_seq")
RECORDING_FIELDS = ("business_id", "call_sid", "recording_url", "path", "size", "sha256", "content_type",
                    "stored_at")
WORKER_FIELDS = ("host", "pid", "threads", "heartbeat_interval", "started_at", "heartbeat_at")


def business(business_id: int) -> str:
    return f"{PREFIX}business:{business_id}"


def call(business_id: int, call_sid: str) -> str:
    return f"{PREFIX}call:{business_id}:{call_sid}"


def calls_by_sid(call_sid: str) -> str:
    return f"{PREFIX}calls:by-sid:{call_sid}"


def job(job_id: int) -> str:
    return f"{PREFIX}job:{job_id}"


def jobs_of(business_id: int, call_sid: str) -> str:
    return f"{PREFIX}jobs:of:{business_id}:{call_sid}"


def active_job(business_id: int, call_sid: str) -> str:
    return f"{PREFIX}jobs:active:{business_id}:{call_sid}"


def running_of(worker_id: str) -> str:
    return f"{PREFIX}jobs:running:{worker_id}"


def recording(business_id: int, call_sid: str) -> str:
    return f"{PREFIX}recording:{business_id}:{call_sid}"


def recording_member(business_id: int, call_sid: str) -> str:
    return f"{business_id}:{call_sid}"


def worker(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"


def twilio(account_sid: str) -> str:
    return f"{PREFIX}twilio:{account_sid}"


def twilio_of(business_id: int) -> str:
    return f"{PREFIX}twilio:of:{business_id}"


def queue_member(job_id: int) -> str:
    """A queued job's member in ``QUEUE``: zero-padded, so equal scores sort by id."""
    return "%015d" % job_id
