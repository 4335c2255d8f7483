"""The player's half of the contract: ask for a recording until it plays or the player must stop.

Theory of operation. CONTRACT section 7 tells a player what to do with each
answer of ``GET /api/recordings/file/{call_sid}``; ``player_action`` is that
table as a pure function of the HTTP status and the error code, and
``RecordingClient`` is the loop around it:

- 200 / 206: play (return a ``Recording``).
- 202: wait ``Retry-After`` clamped to 1..10 s (missing or garbage: 2), ask again.
- 404 ``call_not_found``: stop ``call_not_found``; any other 404: ``not_found``.
- 500 ``worker_not_processing_queue``: ``worker_offline``; 500
  ``recording_download_failed``: ``download_failed``; any other 500:
  ``server_error``.
- 400/401/403 and any other status: stop ``error``.
- a network error, 502, 503, 504: wait 1, 2, 4, 8, 8, ... s and ask again;
  any other answer starts the backoff over.
- ``max_wait`` spent: stop ``unavailable`` when the last answer was a network
  error, 502, 503 or 504 (the server could not be reached), else ``timeout``
  (it answered, the recording is not ready).

Every stop raises a ``RecordingError`` subclass whose ``outcome`` names a row
of recsvc.player.outcomes.OUTCOMES and whose message is that row's text.

Every request carries ``Prefer: wait=N`` (CONTRACT 5b), N the whole seconds
left before ``max_wait`` (omitted under 1 s), so a recording that is ready
within the server's hold needs a single request. The socket timeout of a
request is N plus ``request_timeout``.

Why the loop always ends (CONTRACT 8, invariant 3): a request asks to be held
no longer than the time left, a wait is cut to the time left, and a request
made after a cut wait is the last one: if it does not bring the recording,
the player stops. So the player stops within ``max_wait`` plus one request,
whatever the server answers; ``max_wait=0`` is exactly one request. A
recording that arrives on that last request still plays. "One request" is
bounded by the socket timeout, N + ``request_timeout``, which urllib applies
to each blocking step (connect, each read), not to a whole answer: a server
that trickles its answer a byte at a time can stretch that one request
further.

Progress (CONTRACT 7: "at least every few seconds"): with ``on_progress``,
the player reports a ``Progress`` when it sends a request, after each answer,
and at least every ``progress_every`` seconds (5) in between: a wait is
slept in pieces of at most that long, and a request the server holds runs
on a helper thread while the caller's thread reports. Every report comes
from the caller's thread.

Time is injected (``clock=``, ``sleep=``) so tests run the whole loop in fake
time; ``opener=`` takes anything with urllib's ``open(request, timeout=)``.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from .. import __version__
from .outcomes import LANGS, Heard, Progress, outcome_message

log = logging.getLogger(__name__)

# Player actions of CONTRACT 7; the stops are also the player's outcomes.
PLAY = "play"
WAIT = "wait"
BACKOFF = "backoff"
CALL_NOT_FOUND = "call_not_found"
NOT_FOUND = "not_found"
WORKER_OFFLINE = "worker_offline"
DOWNLOAD_FAILED = "download_failed"
SERVER_ERROR = "server_error"
ERROR = "error"
TIMEOUT = "timeout"
UNAVAILABLE = "unavailable"

RETRY_AFTER_MIN = 1
RETRY_AFTER_MAX = 10
RETRY_AFTER_DEFAULT = 2
BACKOFF_CAP = 8
PROGRESS_EVERY = 5.0
# A 202 or an error body is a small JSON object; never read more of one.
STATUS_BODY_LIMIT = 64 * 1024

_DELAY_SECONDS = re.compile(r"[0-9]+")
# CONTRACT 7: which 500 is which stop.
_STOPS_OF_500 = {"worker_not_processing_queue": WORKER_OFFLINE, "recording_download_failed": DOWNLOAD_FAILED}


def message(case: str, lang: str = "en", waited: float = 0) -> str:
    """The contract's text for outcome ``case`` in ``lang``; X is the whole seconds waited."""
    return outcome_message(case, lang, waited=waited)


def player_action(status: int | None, error_code: str | None = None) -> str:
    """What a player does with an answer (CONTRACT 7); ``None`` is a network error."""
    if status is None or status in (502, 503, 504):
        return BACKOFF
    if status in (200, 206):
        return PLAY
    if status == 202:
        return WAIT
    if status == 404:
        return CALL_NOT_FOUND if error_code == "call_not_found" else NOT_FOUND
    if status == 500:
        return _STOPS_OF_500.get(error_code or "", SERVER_ERROR)
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


class RecordingError(Exception):
    """The player stopped without a recording; ``outcome`` is its state in CONTRACT 7 (recsvc.player.outcomes)."""

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

    @property
    def waited(self) -> float:
        return self.seconds


class RecordingNotFound(RecordingError):
    """404 other than ``call_not_found``: the call has no recording (or the provider has none)."""

    outcome = NOT_FOUND


class CallNotFound(RecordingNotFound):
    """404 ``call_not_found``: no such call for this business (a mistyped call sid, say)."""

    outcome = CALL_NOT_FOUND


class WorkerOffline(RecordingError):
    outcome = WORKER_OFFLINE


class DownloadFailed(RecordingError):
    outcome = DOWNLOAD_FAILED


class ServerError(RecordingError):
    outcome = SERVER_ERROR


class RecordingTimeout(RecordingError):
    """``max_wait`` ran out while the server answered; ``status`` and ``error_code`` are those of the last answer."""

    outcome = TIMEOUT


class ServerUnavailable(RecordingError):
    """``max_wait`` ran out and the last answer was a network error, 502, 503 or 504."""

    outcome = UNAVAILABLE


class ClientError(RecordingError):
    outcome = ERROR


_STOPS: dict[str, type[RecordingError]] = {
    kind.outcome: kind
    for kind in (CallNotFound, RecordingNotFound, WorkerOffline, DownloadFailed, ServerError, ClientError)
}


@dataclass(frozen=True)
class _Answer:
    """One answer as the player needs it; status None means a network error."""

    status: int | None
    headers: Any = None
    body: bytes = b""
    network_error: str | None = None
    network: str = "other"

    def header(self, name: str) -> str | None:
        return self.headers.get(name) if self.headers is not None else None

    def json_fields(self) -> dict:
        try:
            fields = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return {}
        return fields if isinstance(fields, dict) else {}

    def heard(self, fields: dict) -> Heard:
        if self.status is None:
            return Heard(None, network=self.network)
        return Heard(
            self.status,
            error_code=_text_or_none(fields.get("error")),
            job_status=_text_or_none(fields.get("job_status")) if self.status == 202 else None,
            attempt=fields.get("attempt"),
            max_attempts=fields.get("max_attempts"),
        )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a hop: the bearer token never follows a redirect elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def default_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirects)


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
        progress_every: float = PROGRESS_EVERY,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if lang not in LANGS:
            raise ValueError(f"lang must be one of {sorted(LANGS)}, got {lang!r}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be a number >= 0, got {max_wait!r}")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be a positive number, got {request_timeout!r}")
        if not progress_every > 0:
            raise ValueError(f"progress_every must be a positive number, got {progress_every!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.max_wait = max_wait
        self.lang = lang
        self.request_timeout = request_timeout
        self.progress_every = progress_every
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
        heard: Heard | None = None
        last_request = False
        left = self.max_wait

        def report(asking: bool, seconds: float) -> None:
            self._on_progress(Progress(requests, self._clock() - start, self.base_url, heard, asking, seconds))

        while True:
            prefer_wait = prefer_wait_seconds(left)
            requests += 1
            answer = self._ask_reporting(url, prefer_wait, lambda: report(True, prefer_wait or 0))
            elapsed = self._clock() - start
            fields = answer.json_fields()
            heard = answer.heard(fields)
            action = player_action(answer.status, heard.error_code)
            log.debug("call_sid=%s attempt=%d %s -> %s", call_sid, requests, heard.describe(), action)
            if action == PLAY:
                return Recording(
                    body=answer.body,
                    content_type=_media_type(answer.header("Content-Type")),
                    requests=requests,
                    seconds=elapsed,
                    status=answer.status,
                )
            if action in _STOPS:
                raise _STOPS[action](
                    self._stop_message(action, answer, fields),
                    status=answer.status,
                    error_code=heard.error_code,
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
                # CONTRACT 7: a server that could not be reached is unavailable;
                # one that answered and is not done is still preparing.
                kind = ServerUnavailable if action == BACKOFF else RecordingTimeout
                raise kind(
                    outcome_message(kind.outcome, self.lang, waited=elapsed),
                    status=answer.status,
                    error_code=heard.error_code,
                    requests=requests,
                    seconds=elapsed,
                )
            # Never sleep past max_wait: a wait cut to the time left is followed
            # by one last request, decided here rather than by re-reading the
            # clock, so a sleep that wakes a hair early cannot add another.
            if delay >= left:
                delay, last_request = left, True
            self._wait(delay, lambda seconds: report(False, seconds))
            left = self.max_wait - (self._clock() - start)

    def _wait(self, delay: float, report: Callable[[float], None]) -> None:
        """Sleep ``delay``, telling ``on_progress`` at its start and at least every ``progress_every`` s."""
        if self._on_progress is None:
            self._sleep(delay)
            return
        while True:
            report(delay)
            piece = min(delay, self.progress_every)
            self._sleep(piece)
            delay -= piece
            if delay <= 0:
                return

    def _ask_reporting(self, url: str, prefer_wait: int | None, report: Callable[[], None]) -> _Answer:
        """``_ask``; with ``on_progress``, on a helper thread while this one reports every ``progress_every`` s."""
        if self._on_progress is None:
            return self._ask(url, prefer_wait)
        outcome: list = []
        done = threading.Event()

        def ask() -> None:
            try:
                outcome.append(self._ask(url, prefer_wait))
            except BaseException as err:  # handed to the caller's thread, raised there
                outcome.append(err)
            finally:
                done.set()

        threading.Thread(target=ask, name="recsvc-player-request", daemon=True).start()
        while not done.wait(self.progress_every):
            report()  # a held request is waiting, not silence (CONTRACT 7)
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _stop_message(self, action: str, answer: _Answer, fields: dict) -> str:
        if action != ERROR:
            return outcome_message(action, self.lang)
        # The contract has no text for `error`: say what the server answered,
        # in its own words when it gave some.
        code = _text_or_none(fields.get("error"))
        said = f"HTTP {answer.status}" + (f" {code}" if code else "")
        return outcome_message(ERROR, self.lang, answer=said, detail=_text_or_none(fields.get("message")) or "")

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
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            return _Answer(None, network_error=_describe(reason), network=_network_kind(reason))


def _describe(reason: object) -> str:
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return str(reason)


def _network_kind(reason: object) -> str:
    """The kind of a network error, as recsvc.player.outcomes words it (``net_<kind>``)."""
    if isinstance(reason, ConnectionRefusedError):
        return "refused"
    # RemoteDisconnected is a ConnectionResetError too: it is tested first.
    if isinstance(reason, (http.client.RemoteDisconnected, http.client.IncompleteRead, http.client.BadStatusLine)):
        return "closed"
    if isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "reset"
    if isinstance(reason, (TimeoutError, socket.timeout)) or getattr(reason, "errno", None) == errno.ETIMEDOUT:
        return "timeout"
    if isinstance(reason, socket.gaierror):
        return "name"
    return "other"


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return "application/octet-stream"
    return content_type.split(";", 1)[0].strip().lower()


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
