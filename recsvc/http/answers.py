"""What each answer means in HTTP: status, machine code, English message, headers. One table, three readers.

Theory of operation. ``ERRORS`` is every machine code an error body can
carry, with its status, its default sentence, its meaning and the headers it
always has; ``PLAY`` says how each outcome of the play decision
(``recsvc.contract.decision``, CONTRACT 3) is answered. The handler (``recsvc.http.api``)
and the transport (``recsvc.http.protocol``) build every error from
``ERRORS`` by code, so an answer cannot carry a code the table lacks; the
OpenAPI document (``recsvc.http.openapi``) lists the table, and the conformance
kit (``recsvc.kit.target``) expects the status it gives each code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract.decision import (
    RECORDING_DOWNLOAD_FAILED, WORKER_NOT_PROCESSING_QUEUE, CallNotFound, FirstJob, InvalidCallSid, NoLiveWorker, NoRecordingUrl, Processing, RecordingNotFoundUpstream,
    RetryAllowed, RetryRefused, ServeFile, StorageRetry, Unauthorized,
)


@dataclass(frozen=True)
class Meaning:
    """One machine code of an error body (CONTRACT 3: {"error": code, "message": sentence, ...})."""
    status: int
    message: str                            # the sentence answered unless the site says more
    meaning: str                            # when the code is answered, for /openapi.json
    headers: tuple[tuple[str, str], ...] = ()  # headers every answer of this code carries
    retry_after: bool = False               # always with Retry-After: <integer seconds> (CONTRACT 3)


# Every "error" an error body may carry. CONTRACT 3, 4, 5, 6.
ERRORS: dict[str, Meaning] = {
    "unauthorized": Meaning(
        401, 'Missing or invalid credentials.',
        'No, malformed or wrong bearer token, or a bad, expired or altered signed link (3 row 1, 6).',
        headers=(("WWW-Authenticate", "Bearer"),)),
    "invalid_call_sid": Meaning(
        400, "call_sid must be 1 to 64 letters, digits, '_' or '-'.",
        'call_sid does not match ^[A-Za-z0-9_-]{1,64}$ on the raw path (3 row 2).'),
    "call_not_found": Meaning(
        404, 'No such call.',
        'No such call for this business (3 row 3).'),
    "no_recording_url": Meaning(
        404, 'This call has no recording.',
        'The call has no recording_url (3 row 5).'),
    "recording_not_found_upstream": Meaning(
        404, 'The upstream says this recording does not exist.',
        'The upstream answered 404 or 410 for the recording (3 row 6).'),
    "worker_not_processing_queue": Meaning(
        500, 'No worker is processing the recording queue.',
        'No live worker (3 row 7), or the retry limit was reached after a stuck job (3 row 10c).',
        retry_after=True),
    "recording_download_failed": Meaning(
        500, 'The recording could not be downloaded.',
        'The retry limit was reached after download failures (3 row 10c).',
        retry_after=True),
    "range_not_satisfiable": Meaning(
        416, 'The requested range is outside the recording.',
        'The one range asked for lies outside the recording (5).'),
    "invalid_json": Meaning(
        400, 'The request body must be a JSON object.',
        'The request body is not a JSON object (6).'),
    "invalid_body": Meaning(
        400, 'The request body is not what this route takes.',
        'The JSON body lacks a field or a field has the wrong type (6).'),
    "invalid_business_id": Meaning(
        400, 'business_id must be a whole number.',
        'business_id in the path is not plain ASCII digits (6).'),
    "invalid_request": Meaning(
        400, "The request's query is not what this route takes.",
        'A query field that must be digits is not plain ASCII digits, more than 20 query fields, or a GET /admin/jobs status, limit or since the route does not take (6).'),
    "twilio_account_taken": Meaning(
        409, 'This Twilio account is already registered to another business.',
        'The Twilio account is already registered to another business (6).'),
    "recording_url_not_allowed": Meaning(
        422, 'This recording_url is not allowed.',
        "The URL's host is not in allow-upstream, or its scheme is not https (6)."),
    "not_found": Meaning(
        404, 'No such resource.',
        'No such path, an /admin/* path while no admin token is set, or an id outside 1..2^63-1 (6).'),
    "method_not_allowed": Meaning(
        405, 'This method is not allowed here.',
        'A known path with another method; Allow lists the ones it takes (6).'),
    "not_implemented": Meaning(
        501, 'The request method is not implemented.',
        'A method other than GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (6).'),
    "bad_request": Meaning(
        400, 'The request is malformed.',
        'A malformed request line or header line, or an HTTP/1.1 request without one Host (6).'),
    "unsupported_transfer_encoding": Meaning(
        501, 'The only transfer coding accepted on requests is chunked.',
        'A transfer coding other than chunked on a request; the connection is closed (6).'),
    "bad_framing": Meaning(
        400, "The request's framing is ambiguous.",
        'Transfer-Encoding with Content-Length, or chunked named twice; the connection is closed (6).'),
    "bad_chunked_body": Meaning(
        400, 'The chunked request body is malformed.',
        'A malformed chunked request body; the connection is closed (6).'),
    "bad_content_length": Meaning(
        400, 'Content-Length must be a non-negative integer.',
        'A malformed, negative or doubled Content-Length; the connection is closed (6).'),
    "length_required": Meaning(
        411, 'This request needs a Content-Length header or a chunked body.',
        'A PUT or POST with neither Content-Length nor a chunked body (6).'),
    "body_too_large": Meaning(
        413, 'The request body is too large.',
        'A request body over 64 KiB, decoded (6).'),
    "uri_too_long": Meaning(
        414, 'The request line is too long.',
        'A request line over 8 KiB (6).'),
    "header_too_large": Meaning(
        431, "The request's header lines are too large.",
        'A header line over 8 KiB, or more than 100 header lines (6).'),
    "request_timeout": Meaning(
        408, 'The request was not received in time.',
        'The request head did not arrive within the idle timeout (2, --idle-timeout).'),
    "http_version_not_supported": Meaning(
        505, 'Only HTTP/1.0 and HTTP/1.1 are supported.',
        'Only HTTP/1.0 and HTTP/1.1 are spoken.'),
    "too_many_connections": Meaning(
        503, 'Too many connections; try again shortly.',
        'Past --max-connections; the connection is closed (2).',
        headers=(("Retry-After", "1"),)),
    "storage_busy": Meaning(
        503, 'The database is busy; try again.',
        'The database stayed locked; ask again after Retry-After (3, storage faults).',
        retry_after=True),
    "storage_unavailable": Meaning(
        503, 'Storage is unavailable (disk full, read-only or failing, or its server unreachable); try again.',
        'Disk full, I/O error, read-only storage or a store server that does not answer; nothing changed; ask again after Retry-After (3, storage faults).',
        retry_after=True),
    "counter_unavailable": Meaning(
        503, 'The retry counter is unavailable; try again.',
        'The retry counter backend did not answer (GET /admin/retry-counters).',
        headers=(("Retry-After", "1"),)),
    "invalid_signature": Meaning(
        403, 'The request is not signed by a registered Twilio account.',
        'A Twilio webhook without a valid X-Twilio-Signature of a registered account.'),
    "business_not_found": Meaning(
        404, 'No such business.',
        'No business with that id.'),
    "internal_error": Meaning(
        500, 'Internal server error.',
        'An unexpected failure; never carries a traceback (6).'),
}

# Errors the transport or the choke point may answer on any operation.
TRANSPORT_CODES = ("not_found", "method_not_allowed", "not_implemented", "bad_request", "unsupported_transfer_encoding",
                   "bad_framing", "bad_chunked_body", "bad_content_length", "length_required", "body_too_large",
                   "uri_too_long", "header_too_large", "request_timeout", "http_version_not_supported",
                   "too_many_connections", "storage_busy", "storage_unavailable", "internal_error")


def meaning(code: str) -> Meaning:
    """The table's row of ``code``; a code the table lacks is a bug of the caller, named here."""
    try:
        return ERRORS[code]
    except KeyError:
        raise KeyError(f"unknown error code {code!r}: add it to recsvc.http.answers.ERRORS") from None


# ---------------------------------------------------------------- play outcomes (CONTRACT 3)

FILE = "file"               # the recording, as the request's conditions and range ask (CONTRACT 5)
PROCESSING = "processing"   # 202 with the job's progress
RETRY_LIMIT = "retry_limit"  # row 10c: 500 with the code the outcome names (two codes) and the counter's TTL


@dataclass(frozen=True)
class PlayAnswer:
    """How one outcome of ``decide_play`` / ``decide_retry`` is answered."""
    answer: str                     # FILE, PROCESSING, RETRY_LIMIT, or an error code of ERRORS
    retry_after: str | None = None  # the setting whose whole seconds Retry-After carries
    reason: str | None = None       # the body's "reason", where the contract gives one


PLAY: dict[type, PlayAnswer] = {
    Unauthorized: PlayAnswer("unauthorized"),                                               # row 1
    InvalidCallSid: PlayAnswer("invalid_call_sid"),                                         # row 2
    CallNotFound: PlayAnswer("call_not_found"),                                             # row 3
    ServeFile: PlayAnswer(FILE),                                                            # row 4
    NoRecordingUrl: PlayAnswer("no_recording_url"),                                         # row 5
    RecordingNotFoundUpstream: PlayAnswer("recording_not_found_upstream"),                  # row 6
    NoLiveWorker: PlayAnswer("worker_not_processing_queue", "liveness_window", "no live worker"),  # row 7
    Processing: PlayAnswer(PROCESSING, "retry_after"),                                      # row 9
    FirstJob: PlayAnswer(PROCESSING, "retry_after"),                                        # row 10a
    RetryAllowed: PlayAnswer(PROCESSING, "recovery_retry_after"),                           # row 10b
    StorageRetry: PlayAnswer("storage_unavailable", "retry_after"),                         # row 10b, storage_error
    RetryRefused: PlayAnswer(RETRY_LIMIT, reason="retry limit reached"),                    # row 10c
}

# The codes row 10c answers with: the outcome names one of them (RetryRefused.error).
RETRY_LIMIT_CODES = (WORKER_NOT_PROCESSING_QUEUE, RECORDING_DOWNLOAD_FAILED)


def play_codes(status: int) -> list[str]:
    """The error codes a play outcome may be answered with under ``status``, in table order."""
    codes = [a.answer for a in PLAY.values() if a.answer in ERRORS]
    codes += [code for a in PLAY.values() if a.answer == RETRY_LIMIT for code in RETRY_LIMIT_CODES]
    return [code for code in dict.fromkeys(codes) if ERRORS[code].status == status]
