"""The player's half of the contract: ask for a recording until it plays or the player must stop.

Theory of operation. CONTRACT section 7 tells a player what to do with each
answer of ``GET /api/recordings/file/{call_sid}``; ``player_action`` is that
table as a pure function of the HTTP status, and ``RecordingClient`` is the
loop around it:

- 200 / 206: play (return a ``Recording``).
- 202: wait ``Retry-After`` clamped to 1..10 s (missing or garbage: 2), ask again.
- 404, 500, 400/401/403 and any other status: stop with the matching
  ``RecordingError`` subclass (outcome ``not_found``, ``worker_offline``,
  ``error``).
- a network error, 502, 503, 504: wait 1, 2, 4, 8, 8, ... s and ask again;
  any other answer starts the backoff over.

Every request carries ``Prefer: wait=N`` (CONTRACT 5b), N the whole seconds
left before ``max_wait`` (omitted under 1 s), so a recording that is ready
within the server's hold needs a single request. The socket timeout of a
request is N plus ``request_timeout``.

Why the loop always ends (CONTRACT 8, invariant 3): a request asks to be held
no longer than the time left, a wait is cut to the time left, and a request
made after a cut wait is the last one: if it does not bring the recording,
the player stops with ``timeout``. So the player stops within ``max_wait``
plus one request, whatever the server answers. A recording that arrives on
that last request still plays. "One request" is bounded by the socket
timeout, N + ``request_timeout``, which urllib applies to each blocking step
(connect, each read), not to a whole answer: a server that trickles its
answer a byte at a time can stretch that one request further.

Time is injected (``clock=``, ``sleep=``) so tests run the whole loop in fake
time; ``opener=`` takes anything with urllib's ``open(request, timeout=)``.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from recsvc import __version__

log = logging.getLogger(__name__)

# CONTRACT 7, the messages table, word for word; {waited} stands for X.
MESSAGES: dict[str, dict[str, str]] = {
    "he": {
        "not_found": "ההקלטה לא נמצאה. אין כתובת הקלטה לשיחה זו",
        "worker_offline": "שרת ההקלטות לא מגיב. אנא נסה שוב מאוחר יותר או פנה לתמיכה",
        "timeout": "ההקלטה עדיין בתהליך הכנה (חיכינו {waited} שניות). זה יכול לקחת עד 3 דקות",
    },
    "en": {
        "not_found": "Recording not found: this call has no recording.",
        "worker_offline": "The recording server is not responding. Try again later or contact support.",
        "timeout": "The recording is still being prepared (waited {waited} seconds). This can take up to 3 minutes.",
    },
}

# Player actions of CONTRACT 7; the last three are also the player's outcomes.
PLAY = "play"
WAIT = "wait"
BACKOFF = "backoff"
NOT_FOUND = "not_found"
WORKER_OFFLINE = "worker_offline"
ERROR = "error"

RETRY_AFTER_MIN = 1
RETRY_AFTER_MAX = 10
RETRY_AFTER_DEFAULT = 2
BACKOFF_CAP = 8
# A 202 or an error body is a small JSON object; never read more of one.
STATUS_BODY_LIMIT = 64 * 1024

_DELAY_SECONDS = re.compile(r"[0-9]+")


def message(case: str, lang: str = "en", waited: float = 0) -> str:
    """The contract's text for ``case`` in ``lang``; X of ``timeout`` is the whole seconds waited."""
    return MESSAGES[lang][case].format(waited=int(waited))


def player_action(status: int | None) -> str:
    """What a player does with an answer (CONTRACT 7); ``None`` is a network error."""
    if status is None or status in (502, 503, 504):
        return BACKOFF
    if status in (200, 206):
        return PLAY
    if status == 202:
        return WAIT
    if status == 404:
        return NOT_FOUND
    if status == 500:
        return WORKER_OFFLINE
    # 400 / 401 / 403 by the table; every other status is no promise of the
    # contract either, and asking again would not change it.
    return ERROR


def retry_after_seconds(value: str | None) -> int:
    """A 202's ``Retry-After`` as the player waits it: clamped to 1..10, 2 when missing or not delay-seconds."""
    if value is None or not _DELAY_SECONDS.fullmatch(value.strip()):
        return RETRY_AFTER_DEFAULT
    return max(RETRY_AFTER_MIN, min(RETRY_AFTER_MAX, int(value.strip())))


def backoff_seconds(failures: int) -> int:
    """The wait after the ``failures``-th network-class answer in a row: 1, 2, 4, 8, 8, ..."""
    return min(BACKOFF_CAP, 2 ** (max(failures, 1) - 1))


def prefer_wait_seconds(left: float) -> int | None:
    """N of ``Prefer: wait=N``: the whole seconds left, never more; None under 1 s (CONTRACT 7, 5b)."""
    if left < 1:
        return None
    return math.floor(left)


@dataclass(frozen=True)
class Recording:
    body: bytes
    content_type: str
    requests: int
    seconds: float
    status: int


@dataclass(frozen=True)
class Progress:
    """What a player tells its user before each wait."""

    attempt: int  # requests made so far
    elapsed: float  # seconds since the player began
    status: int | None  # HTTP status of the last answer, None for a network error
    said: str  # the last answer in words: job status, error code or network error
    retry_after: float  # seconds the player waits now
    error_code: str | None = None
    job_status: str | None = None


class RecordingError(Exception):
    """The player stopped without a recording; ``outcome`` is its state in CONTRACT 7."""

    outcome = ERROR

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        requests: int = 0,
        seconds: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.requests = requests
        self.seconds = seconds


class RecordingNotFound(RecordingError):
    outcome = NOT_FOUND


class WorkerOffline(RecordingError):
    outcome = WORKER_OFFLINE


class RecordingTimeout(RecordingError):
    """``max_wait`` ran out; ``status`` and ``error_code`` are those of the last answer."""

    outcome = "timeout"

    @property
    def waited(self) -> float:
        return self.seconds


class ClientError(RecordingError):
    outcome = ERROR


@dataclass(frozen=True)
class _Answer:
    """One answer as the player needs it; status None means a network error."""

    status: int | None
    headers: Any = None
    body: bytes = b""
    network_error: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name) if self.headers is not None else None

    def json_fields(self) -> dict:
        try:
            fields = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return {}
        return fields if isinstance(fields, dict) else {}

    def said(self) -> str:
        if self.status is None:
            return f"network error: {self.network_error}"
        fields = self.json_fields()
        if self.status == 202:
            job_status = fields.get("job_status")
            if job_status is None:
                return "HTTP 202 processing"
            attempt = fields.get("attempt")
            max_attempts = fields.get("max_attempts")
            return f"HTTP 202 processing: job {job_status}, attempt {attempt}/{max_attempts}"
        code = fields.get("error")
        return f"HTTP {self.status} {code}" if code else f"HTTP {self.status}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a hop: the bearer token never follows a redirect elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def default_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirects)


_STOPS: dict[str, type[RecordingError]] = {
    NOT_FOUND: RecordingNotFound,
    WORKER_OFFLINE: WorkerOffline,
    ERROR: ClientError,
}


class RecordingClient:
    """A player of CONTRACT 7 for one service: ``wait_for_recording(call_sid)`` plays or raises."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        max_wait: float = 180,
        lang: str = "en",
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        opener=None,
        on_progress: Callable[[Progress], None] | None = None,
        request_timeout: float = 30,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if lang not in MESSAGES:
            raise ValueError(f"lang must be one of {sorted(MESSAGES)}, got {lang!r}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be a number >= 0, got {max_wait!r}")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be a positive number, got {request_timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.max_wait = max_wait
        self.lang = lang
        self.request_timeout = request_timeout
        self._clock = clock
        self._sleep = sleep
        self._opener = opener if opener is not None else default_opener()
        self._on_progress = on_progress

    def recording_url(self, call_sid: str) -> str:
        # Quoted whole, so a call_sid with "/" or "?" reaches the server as
        # one path segment and is refused there (CONTRACT 3, row 2).
        return f"{self.base_url}/api/recordings/file/{urllib.parse.quote(call_sid, safe='')}"

    def wait_for_recording(self, call_sid: str) -> Recording:
        url = self.recording_url(call_sid)
        start = self._clock()
        requests = 0
        failures = 0  # network-class answers in a row
        last_request = False
        left = self.max_wait
        while True:
            answer = self._ask(url, prefer_wait_seconds(left))
            requests += 1
            elapsed = self._clock() - start
            action = player_action(answer.status)
            log.debug("call_sid=%s attempt=%d %s -> %s", call_sid, requests, answer.said(), action)
            if action == PLAY:
                return Recording(
                    body=answer.body,
                    content_type=_media_type(answer.header("Content-Type")),
                    requests=requests,
                    seconds=elapsed,
                    status=answer.status,
                )
            fields = answer.json_fields()
            if action in _STOPS:
                raise _STOPS[action](
                    self._stop_message(action, answer, fields),
                    status=answer.status,
                    error_code=_text_or_none(fields.get("error")),
                    requests=requests,
                    seconds=elapsed,
                )
            if action == WAIT:
                failures = 0
                delay = retry_after_seconds(answer.header("Retry-After"))
            else:
                failures += 1
                delay = backoff_seconds(failures)
            left = self.max_wait - elapsed
            if last_request or left <= 0:
                raise RecordingTimeout(
                    message("timeout", self.lang, elapsed),
                    status=answer.status,
                    error_code=_text_or_none(fields.get("error")),
                    requests=requests,
                    seconds=elapsed,
                )
            # Never sleep past max_wait: a wait cut to the time left is followed
            # by one last request, decided here rather than by re-reading the
            # clock, so a sleep that wakes a hair early cannot add another.
            if delay >= left:
                delay, last_request = left, True
            if self._on_progress is not None:
                self._on_progress(
                    Progress(
                        attempt=requests,
                        elapsed=elapsed,
                        status=answer.status,
                        said=answer.said(),
                        retry_after=delay,
                        error_code=_text_or_none(fields.get("error")),
                        job_status=_text_or_none(fields.get("job_status")),
                    )
                )
            self._sleep(delay)
            left = self.max_wait - (self._clock() - start)

    def _stop_message(self, action: str, answer: _Answer, fields: dict) -> str:
        if action in (NOT_FOUND, WORKER_OFFLINE):
            return message(action, self.lang)
        # The contract has no text for `error`; the server's own sentence is
        # the most precise one there is.
        code = _text_or_none(fields.get("error"))
        server_message = _text_or_none(fields.get("message"))
        text = f"Request refused: HTTP {answer.status}" + (f" {code}" if code else "")
        return f"{text}: {server_message}" if server_message else f"{text}."

    def _ask(self, url: str, prefer_wait: int | None) -> _Answer:
        headers = {"User-Agent": f"recsvc-client/{__version__}"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if prefer_wait is not None:
            headers["Prefer"] = f"wait={prefer_wait}"
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            with self._opener.open(request, timeout=(prefer_wait or 0) + self.request_timeout) as response:
                status = response.status
                # The recording is read whole; a status body only up to its limit.
                body = response.read() if status in (200, 206) else response.read(STATUS_BODY_LIMIT)
                return _Answer(status, response.headers, body)
        except urllib.error.HTTPError as err:
            with err:
                try:
                    body = err.read(STATUS_BODY_LIMIT)
                except (OSError, http.client.HTTPException):
                    body = b""  # the status alone decides
                return _Answer(err.code, err.headers, body)
        except (OSError, http.client.HTTPException) as err:
            # Refused, reset, timed out, or a malformed answer (URLError is an
            # OSError): all are network errors to a player.
            return _Answer(None, network_error=_describe(err))


def _describe(err: BaseException) -> str:
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return str(reason)


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return "application/octet-stream"
    return content_type.split(";", 1)[0].strip().lower()


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
