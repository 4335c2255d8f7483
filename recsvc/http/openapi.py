"""The OpenAPI 3.1 description of the HTTP surface of CONTRACT 3, 5 and 6, served at ``/openapi.json``.

Theory of operation. The document is written here as data, by hand, in the
contract's words; it is not generated from the route table, so comparing
the two (``route_template`` turns a ``routes.Route`` back into its path
template) is a real check that neither forgot a route. ``ERROR_CODES`` is
every machine code an error body can carry, with its status and meaning, as
the table of answers (``recsvc.http.answers``) gives them;
each response lists the codes it may carry under ``x-error-codes``, and the
``Error`` schema enumerates them all. HEAD operations are derived from GET
ones, as ``routes.make_route`` derives them.
"""

from __future__ import annotations

import copy
import re

from .. import __version__
from ..core.job_filters import ISO_UTC, MAX_LIMIT as MAX_JOBS, STATUSES as JOB_STATUSES
from .answers import ERRORS, TRANSPORT_CODES, play_codes
from .routes import Route

OPENAPI_VERSION = "3.1.0"
CALL_SID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"

# code -> (status, meaning), read from the one table of answers (recsvc.http.answers).
ERROR_CODES: dict[str, tuple[int, str]] = {code: (m.status, m.meaning) for code, m in ERRORS.items()}


def route_template(route: Route) -> str:
    """``/api/calls/{call_sid}`` back from the pattern ``routes.make_route`` compiled."""
    template = route.pattern.pattern.removeprefix("^").removesuffix("$")
    return re.sub(r"\(\?P<(\w+)>\[\^/\]\*\)", r"{\1}", template)


# ---------------------------------------------------------------- building blocks

def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _header(name: str) -> dict:
    return _ref("headers", name)


def _json(schema_name: str) -> dict:
    return {"application/json": {"schema": _ref("schemas", schema_name)}}


def _error(description: str, *codes: str, headers: tuple[str, ...] = (), schema: str = "Error") -> dict:
    for code in codes:
        if code not in ERROR_CODES:
            raise KeyError(f"unknown error code {code!r}: add it to ERROR_CODES")
    answer = {"description": f"{description} `error`: {', '.join(codes)}.", "content": _json(schema),
              "x-error-codes": list(codes)}
    if headers:
        answer["headers"] = {name: _header(name) for name in headers}
    return answer


def _ok(description: str, schema: str, headers: tuple[str, ...] = ()) -> dict:
    answer = {"description": description, "content": _json(schema)}
    if headers:
        answer["headers"] = {name: _header(name) for name in headers}
    return answer


UNAUTHORIZED = _error("No or wrong credentials (CONTRACT 3 row 1).", "unauthorized", headers=("WWW-Authenticate",))
ADMIN_OFF = _error("No admin token is set: the admin surface does not exist (CONTRACT 6).", "not_found")
ADMIN_ID_OR_OFF = _error("business_id outside 1..2^63-1, or no admin token is set (CONTRACT 6).", "not_found")
BAD_SID = _error("call_sid is not 1 to 64 of [A-Za-z0-9_-] (CONTRACT 3 row 2).", "invalid_call_sid")
BUSINESS = [{"businessBearer": []}]
ADMIN = [{"adminBearer": []}]
OPEN: list = []


def _op(operation_id: str, summary: str, responses: dict, *, security: list = OPEN, parameters: tuple = (),
        body: dict | None = None, tag: str = "open") -> dict:
    operation = {"operationId": operation_id, "summary": summary, "tags": [tag], "security": security,
                 "responses": {**responses, "default": _ref("responses", "TransportError")}}
    if parameters:
        operation["parameters"] = [_ref("parameters", name) for name in parameters]
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    return operation


def _paths() -> dict:
    file_headers = ("Content-Length", "Accept-Ranges", "ETag", "Last-Modified", "Cache-Control", "Preference-Applied")
    audio = {media: {"schema": {"type": "string", "contentMediaType": media}}
             for media in ("audio/wav", "audio/mpeg", "audio/ogg", "audio/flac")}
    play = _op("playRecording", "Play a call's recording, or learn why not yet (CONTRACT 3, 5, 5b).", {
        "200": {"description": "The recording, whole (3 row 4, 5). Several ranges, or If-Range with a stale "
                               "validator, also answer 200.",
                "headers": {name: _header(name) for name in file_headers}, "content": audio},
        "206": {"description": "One byte range of the recording (5).",
                "headers": {name: _header(name) for name in (*file_headers, "Content-Range")}, "content": audio},
        "304": {"description": "If-None-Match matched; no body (5).",
                "headers": {name: _header(name) for name in ("ETag", "Last-Modified", "Cache-Control", "Accept-Ranges")}},
        "202": _ok("Processing: ask again after Retry-After (3 rows 9, 10a, 10b). With Prefer: wait=N, held up to "
                   "min(N, max-wait) first (5b).", "Processing", ("Retry-After", "Preference-Applied")),
        "400": _error("call_sid is not 1 to 64 of [A-Za-z0-9_-] (3 row 2), or a signed link with more than 20 "
                      "query fields (6).", "invalid_call_sid", "invalid_request"),
        "401": UNAUTHORIZED,
        "404": _error("No such call, no recording URL, or the upstream has no such recording (3 rows 3, 5, 6).",
                      *play_codes(404)),
        "416": _error("The range is outside the recording; Content-Range is bytes */size (5).",
                      "range_not_satisfiable", headers=("Content-Range",)),
        "500": _error("No live worker (3 row 7) or the retry limit reached (3 row 10c); the player stops (7).",
                      *play_codes(500), "internal_error",
                      headers=("Retry-After", "Preference-Applied"), schema="PlayFailure"),
    }, security=[*BUSINESS, {"signedLinkExp": [], "signedLinkSig": []}], tag="recordings",
        parameters=("CallSid", "Prefer", "Range", "IfNoneMatch", "IfRange", "IfModifiedSince", "Exp", "Sig"))
    return {
        "/api/recordings/file/{call_sid}": {"get": play},
        "/api/recordings/{call_sid}/link": {"post": _op(
            "createLink", "A signed link for <audio src>, valid 15 minutes (CONTRACT 6).", {
                "200": _ok("The link.", "Link"), "400": BAD_SID, "401": UNAUTHORIZED,
                "404": _error("No such call.", "call_not_found")},
            security=BUSINESS, parameters=("CallSid",), tag="calls")},
        "/api/calls/{call_sid}": {
            "get": _op("getCall", "A call, whether its recording is cached, and its latest job (CONTRACT 6).", {
                "200": _ok("The call.", "Call"), "400": BAD_SID, "401": UNAUTHORIZED,
                "404": _error("No such call.", "call_not_found")},
                security=BUSINESS, parameters=("CallSid",), tag="calls"),
            "put": _op("putCall", "Create or update a call; a new URL starts a fresh history (CONTRACT 6).", {
                "200": _ok("Updated.", "Call"), "201": _ok("Created.", "Call"),
                "400": _error("Bad call_sid or body.", "invalid_call_sid", "invalid_json", "invalid_body"),
                "401": UNAUTHORIZED,
                "422": _error("The URL's host or scheme is not allowed.", "recording_url_not_allowed")},
                security=BUSINESS, parameters=("CallSid",), body="CallInput", tag="calls")},
        "/admin/businesses": {"post": _op("createBusiness", "Create a business; its token is shown once.", {
            "201": _ok("The business and its token.", "Business"),
            "400": _error("Bad body.", "invalid_json", "invalid_body"), "401": UNAUTHORIZED, "404": ADMIN_OFF},
            security=ADMIN, body="BusinessInput", tag="admin")},
        "/admin/businesses/{business_id}/twilio": {"put": _op(
            "registerTwilio", "Register a business's Twilio account; the auth token is stored, never returned.", {
                "200": _ok("The account, without its auth token.", "TwilioAccount"),
                "400": _error("Bad business_id or body.", "invalid_business_id", "invalid_json", "invalid_body"),
                "401": UNAUTHORIZED, "404": _error("No such business, business_id outside 1..2^63-1, or no admin "
                                                   "token is set.", "business_not_found", "not_found"),
                "409": _error("Another business already has this Twilio account.", "twilio_account_taken")},
            security=ADMIN, parameters=("BusinessIdPath",), body="TwilioAccountInput", tag="admin")},
        "/webhooks/twilio/recording-status": {"post": {
            **_op("twilioRecordingStatus", "Twilio's recording-status callback: completed stores the call with "
                  "the media URL and queues its download; absent or failed stores it without a URL.", {
                      "200": _ok("The call, updated.", "Call"), "201": _ok("The call, created.", "Call"),
                      "400": _error("Not form-encoded, or no CallSid.", "invalid_body", "invalid_call_sid"),
                      "403": _error("No valid X-Twilio-Signature of a registered account; nothing stored.",
                                    "invalid_signature"),
                      "422": _error("The media URL's host is not allowed.", "recording_url_not_allowed")},
                  tag="calls"),
            "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
                "type": "object", "required": ["AccountSid", "CallSid"],
                "properties": {
                    **{name: {"type": "string"} for name in ("RecordingSid", "RecordingUrl", "RecordingStatus")},
                    "AccountSid": {"type": "string", "minLength": 1},
                    "CallSid": {"type": "string", "pattern": CALL_SID_PATTERN},
                    "RecordingDuration": {"type": "string", "pattern": "^(-?[0-9]+)?$",
                                          "description": "Whole seconds, when given; negative means unknown."}},
            }}}},
            "parameters": [{"name": "X-Twilio-Signature", "in": "header", "required": True,
                            "description": "Base64 HMAC-SHA1 of the URL and the sorted form fields.",
                            "schema": {"type": "string"}}],
        }},
        "/admin/workers/pause": {"post": _op("pauseWorkers", "Pause every worker: the worker-offline drill.", {
            "200": _ok("Paused.", "Paused"), "401": UNAUTHORIZED, "404": ADMIN_OFF}, security=ADMIN, tag="admin")},
        "/admin/workers/resume": {"post": _op("resumeWorkers", "Resume the workers.", {
            "200": _ok("Resumed.", "Paused"), "401": UNAUTHORIZED, "404": ADMIN_OFF}, security=ADMIN, tag="admin")},
        "/admin/cleanup": {"post": _op("cleanup", "Run the stuck-job sweeper now (CONTRACT 4).", {
            "200": _ok("How many jobs were marked failed.", "Cleanup"), "401": UNAUTHORIZED, "404": ADMIN_OFF},
            security=ADMIN, tag="admin")},
        "/admin/jobs": {"get": _op("listJobs", "Jobs, newest first, of every business unless one is named; filtered by call, status and creation time.", {
            "200": _ok("The jobs.", "Jobs"),
            "400": _error("Bad query: call_sid, business_id not plain ASCII digits, status, limit or since not "
                          "taken, or more than 20 fields.", "invalid_call_sid", "invalid_request"),
            "401": UNAUTHORIZED, "404": ADMIN_ID_OR_OFF},
            security=ADMIN, parameters=("CallSidQuery", "BusinessIdQuery", "JobStatusQuery", "JobLimitQuery",
                                        "JobSinceQuery"), tag="admin")},
        "/admin/retry-counters/{business_id}/{call_sid}": {"get": _op(
            "getRetryCounter", "A call's retry counter as Redis has it (CONTRACT 3).", {
                "200": _ok("The counter; attempts 0 and ttl -2 when the key does not exist.", "RetryCounter"),
                "400": _error("Bad business_id or call_sid.", "invalid_business_id", "invalid_call_sid"),
                "401": UNAUTHORIZED, "404": ADMIN_ID_OR_OFF,
                "503": _error("The counter backend did not answer.", "counter_unavailable", headers=("Retry-After",))},
            security=ADMIN, parameters=("BusinessIdPath", "CallSid"), tag="admin")},
        "/healthz": {"get": _op("healthz", "200 while the process serves.", {"200": _ok("Serving.", "Health")})},
        "/readyz": {"get": _op("readyz", "Ready when the database answers and a live worker exists.", {
            "200": _ok("Ready.", "Ready"), "503": _ok("Not ready, and why.", "NotReady")})},
        "/metrics": {"get": _op("metrics", "Prometheus text format.", {"200": {
            "description": "Requests, jobs, stuck jobs, fail-fast trips, queue depth, job durations.",
            "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        "/openapi.json": {"get": _op("openapiDocument", "This document.", {"200": {
            "description": "The OpenAPI 3.1 document.", "content": {"application/json": {"schema": {"type": "object"}}}}})},
        "/": _page("indexPage", "The demo page when an admin token is set; else a plain index: name, version, "
                                "links to /player and /openapi.json (CONTRACT 6)."),
        "/player": _page("playerPage", "The browser player."),
        "/player.js": _page("playerScript", "The browser player's script."),
        "/static/{name}": {"get": _op("staticAsset", "A static asset of the player.", {
            "200": {"description": "The asset.", "headers": {"ETag": _header("ETag")}},
            "304": {"description": "If-None-Match matched.", "headers": {"ETag": _header("ETag")}},
            "404": _error("No such asset.", "not_found")},
            parameters=("AssetName", "IfNoneMatch"))},
    }


def _page(operation_id: str, summary: str) -> dict:
    return {"get": _op(operation_id, summary, {
        "200": {"description": summary, "headers": {"ETag": _header("ETag")}},
        "304": {"description": "If-None-Match matched.", "headers": {"ETag": _header("ETag")}}},
        parameters=("IfNoneMatch",))}


def _with_head(paths: dict) -> dict:
    """HEAD wherever GET: GET's headers, no body (CONTRACT 5, routes.make_route)."""
    for item in paths.values():
        if "get" in item and "head" not in item:
            head = copy.deepcopy(item["get"])
            head["operationId"] += "Head"
            head["summary"] = "HEAD: " + head["summary"] + " Headers only, exactly as GET, no body."
            for response in head["responses"].values():
                response.pop("content", None)
            item["head"] = head
    return paths


# ---------------------------------------------------------------- components

def _string(description: str, **extra) -> dict:
    return {"type": "string", "description": description, **extra}


def _integer(description: str, **extra) -> dict:
    return {"type": "integer", "description": description, **extra}


TIME = {"type": ["string", "null"], "format": "date-time", "description": "ISO 8601 UTC with Z."}


# What a PUT can judge of a recording_url without knowing allow-upstream (upstream_rules): empty, or http(s)
# in any case followed by printable ASCII without a backslash or angle brackets.
RECORDING_URL_PATTERN = r"^([Hh][Tt][Tt][Pp][Ss]?://[!-;=?-\[\]-~]*)?$"


def _object(required: tuple[str, ...], properties: dict, extra_allowed: bool = True) -> dict:
    return {"type": "object", "required": list(required), "properties": properties,
            "additionalProperties": extra_allowed}


def _schemas() -> dict:
    job = _object(("id", "business_id", "call_sid", "recording_url", "status", "created_at", "started_at",
                   "finished_at", "heartbeat_at", "worker_id", "error_code", "error_message"), {
        "id": _integer("Job id."), "business_id": _integer("Owning business."),
        "call_sid": _string("The call.", pattern=CALL_SID_PATTERN),
        "recording_url": {"type": ["string", "null"]},
        "status": {"enum": ["queued", "running", "completed", "failed"]},
        "attempt": _integer("The retry counter when the job was created; 0 for a first job."),
        "created_at": TIME, "started_at": TIME, "finished_at": TIME, "heartbeat_at": TIME,
        "worker_id": {"type": ["string", "null"]},
        "error_code": {"enum": [None, "stuck", "orphaned", "superseded", "upstream_not_found", "upstream_auth_failed",
                                "download_failed", "invalid_audio", "too_large", "storage_error"]},
        "error_message": {"type": ["string", "null"]},
    })
    return {
        "Error": _object(("error", "message"), {
            "error": {"enum": sorted(ERROR_CODES), "description": "The machine code; see x-error-codes per response."},
            "message": _string("An English sentence."),
        }),
        "TwilioAccountInput": _object(("account_sid", "auth_token"), {
            "account_sid": _string("The Twilio account SID.", pattern="^AC[0-9a-fA-F]{32}$"),
            "auth_token": _string("The account's auth token; signs webhooks and fetches media.", minLength=8,
                                  maxLength=256),
            "media_format": {"enum": ["wav", "mp3"], "default": "wav"},
        }),
        "TwilioAccount": _object(("business_id", "account_sid", "media_format"), {
            "business_id": _integer("The business."), "account_sid": _string("The Twilio account SID."),
            "media_format": {"enum": ["wav", "mp3"]},
        }),
        "PlayFailure": _object(("error", "message"), {
            "error": {"enum": sorted(ERROR_CODES)}, "message": _string("An English sentence."),
            "reason": {"enum": ["no live worker", "retry limit reached"]},
            "retry_after": _integer("Equals the Retry-After header: 3 heartbeat intervals (row 7) or the counter's "
                                    "TTL (row 10c).", minimum=1),
            "attempts": _integer("Row 10c: the counter, equal to max_attempts."),
            "max_attempts": _integer("Row 10c: max-retry-attempts."),
            "retry_window_seconds": _integer("Row 10c: retry-window."),
        }),
        "Processing": _object(("status", "job_id", "job_status", "attempt", "max_attempts", "retry_after", "message"), {
            "status": {"const": "processing"}, "job_id": _integer("The active job."),
            "job_status": {"enum": ["queued", "running"]},
            "attempt": _integer("0 for a first job, else the retry counter.", minimum=0),
            "max_attempts": _integer("max-retry-attempts."),
            "retry_after": _integer("Equals the Retry-After header.", minimum=1),
            "message": _string("An English sentence."),
        }),
        "CallInput": _object(("recording_url",), {"recording_url": {
            "type": ["string", "null"], "maxLength": 2048, "pattern": RECORDING_URL_PATTERN,
            "description": "https on an allowed host (http only for loopback); null or empty: no recording."}}, False),
        "Call": _object(("call_sid", "recording_url", "created_at", "cached", "latest_job"), {
            "call_sid": _string("The call.", pattern=CALL_SID_PATTERN), "recording_url": {"type": ["string", "null"]},
            "created_at": TIME, "cached": {"type": "boolean"},
            "latest_job": {"oneOf": [_ref("schemas", "Job"), {"type": "null"}]},
        }),
        "Job": job,
        "Jobs": _object(("jobs",), {"jobs": {"type": "array", "items": _ref("schemas", "Job")}}),
        "Link": _object(("url", "expires_at"), {
            "url": _string("/api/recordings/file/{call_sid}?exp=<unix>&sig=<hex>"), "expires_at": TIME}),
        "BusinessInput": _object(("name",), {"name": _string("1 to 200 characters, not only blanks; stored without "
                                                             "surrounding blanks.", minLength=1, maxLength=200,
                                                             pattern="\\S")}),
        "Business": _object(("id", "name", "token"), {
            "id": _integer("Business id."), "name": _string("Its name."),
            "token": _string("Its bearer token, shown only here.")}),
        "Paused": _object(("paused",), {"paused": {"type": "boolean"}}),
        "Cleanup": _object(("marked_failed",), {"marked_failed": _integer("Stuck jobs marked failed.", minimum=0)}),
        "RetryCounter": _object(("key", "attempts", "ttl"), {
            "key": _string("recording_retry_attempts:{business_id}:{call_sid}"),
            "attempts": _integer("The count; 0 when the key does not exist.", minimum=0),
            "ttl": _integer("Seconds left, as Redis TTL says; -2 when the key does not exist.")}),
        "Health": _object(("status",), {"status": {"const": "ok"}}),
        "Ready": _object(("status",), {"status": {"const": "ready"}}),
        "NotReady": _object(("status", "reason"), {"status": {"const": "not_ready"}, "reason": _string("Why.")}),
    }


def _headers() -> dict:
    def h(description: str, schema: dict | None = None) -> dict:
        return {"description": description, "schema": schema or {"type": "string"}}

    return {
        "Retry-After": h("Whole seconds to wait, at least 1; equals the body's retry_after.",
                         {"type": "integer", "minimum": 1}),
        "Preference-Applied": h("wait=<min(N, max-wait)> when Prefer: wait=N was honoured (5b).",
                                {"type": "string", "pattern": "^wait=[0-9]+$"}),
        "WWW-Authenticate": h("Bearer", {"type": "string", "pattern": "^Bearer"}),
        "Allow": h("The methods the path takes, e.g. 'GET, HEAD'."),
        "Content-Range": h("bytes a-b/size on 206; bytes */size on 416."),
        "Content-Length": h("The body's length in bytes.", {"type": "integer", "minimum": 0}),
        "ETag": h("A strong entity tag derived from the file's sha256.", {"type": "string", "pattern": '^"'}),
        "Last-Modified": h("An HTTP date."),
        "Cache-Control": h("private, max-age=3600", {"const": "private, max-age=3600"}),
        "Accept-Ranges": h("bytes", {"const": "bytes"}),
    }


def _parameters() -> dict:
    def header(name: str, description: str, schema: dict | None = None) -> dict:
        return {"name": name, "in": "header", "required": False, "description": description,
                "schema": schema or {"type": "string"}}

    return {
        "CallSid": {"name": "call_sid", "in": "path", "required": True,
                    "description": "Checked on the raw path, before any percent-decoding (3 row 2).",
                    "schema": {"type": "string", "pattern": CALL_SID_PATTERN}},
        "BusinessIdPath": {"name": "business_id", "in": "path", "required": True,
                           "description": "ASCII digits (else 400); a value outside 1..2^63-1 is 404 (6).",
                           "schema": {"type": "string", "pattern": "^[0-9]+$"}},
        "AssetName": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
        "CallSidQuery": {"name": "call_sid", "in": "query", "required": False, "allowEmptyValue": True,
                         "description": "Empty is no filter.",
                         "schema": {"type": "string", "pattern": "^([A-Za-z0-9_-]{1,64})?$"}},
        "BusinessIdQuery": {"name": "business_id", "in": "query", "required": False, "allowEmptyValue": True,
                            "description": "ASCII digits (else 400); a value outside 1..2^63-1 is 404 (6). "
                                           "Empty is no filter.",
                            "schema": {"type": "string", "pattern": "^[0-9]*$"}},
        "JobStatusQuery": {"name": "status", "in": "query", "required": False, "allowEmptyValue": True,
                           "description": "Only jobs of this status; another value is 400 invalid_request. "
                                          "Empty is no filter.",
                           "schema": {"type": "string", "enum": list(JOB_STATUSES)}},
        "JobLimitQuery": {"name": "limit", "in": "query", "required": False, "allowEmptyValue": True,
                          "description": f"At most this many jobs, newest first (default {MAX_JOBS}); "
                                         "another value is 400 invalid_request. Empty is the default.",
                          "schema": {"type": "integer", "minimum": 1, "maximum": MAX_JOBS, "default": MAX_JOBS}},
        "JobSinceQuery": {"name": "since", "in": "query", "required": False, "allowEmptyValue": True,
                          "description": "Only jobs created at or after this UTC time (2026-11-28T23:16:31Z, "
                                         "fractions allowed, no other offset than Z); another form is 400 "
                                         "invalid_request. Empty is no filter.",
                          "schema": {"type": "string", "format": "date-time", "pattern": f"^{ISO_UTC.pattern}$"}},
        "Exp": {"name": "exp", "in": "query", "required": False,
                "description": "Signed link: expiry, Unix seconds (6).", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
        "Sig": {"name": "sig", "in": "query", "required": False,
                "description": "Signed link: hex HMAC-SHA256 over business, call and expiry (6).",
                "schema": {"type": "string", "pattern": "^[0-9a-f]+$"}},
        "Prefer": header("Prefer", "wait=N (RFC 7240): hold a would-be 202 up to min(N, max-wait) seconds (5b).",
                         {"type": "string", "pattern": "wait=[0-9]+"}),
        "Range": header("Range", "One range bytes=a-b, bytes=a- or bytes=-n gives 206; several give 200 (5)."),
        "IfNoneMatch": header("If-None-Match", "The ETag; a match gives 304 with no body (5)."),
        "IfRange": header("If-Range", "A validator; a stale one turns a Range request into a 200 (5)."),
        "IfModifiedSince": header("If-Modified-Since", "An HTTP date (RFC 9110 13.1.3)."),
    }


def _components() -> dict:
    transport = _error("An error of the transport or of routing, possible on any request (CONTRACT 6).",
                       *TRANSPORT_CODES, headers=("Allow", "Retry-After"))
    transport["description"] += (" 405 carries Allow; 503 carries Retry-After; 400 for framing and 503 "
                                 "too_many_connections close the connection.")
    return {
        "schemas": _schemas(),
        "headers": _headers(),
        "parameters": _parameters(),
        "responses": {"TransportError": transport},
        "securitySchemes": {
            "businessBearer": {"type": "http", "scheme": "bearer", "description": "A business's token (POST /admin/businesses)."},
            "adminBearer": {"type": "http", "scheme": "bearer",
                            "description": "The --admin-token; without one every /admin/* path is 404."},
            "signedLinkExp": {"type": "apiKey", "in": "query", "name": "exp",
                              "description": "Signed link expiry; used together with sig (CONTRACT 6)."},
            "signedLinkSig": {"type": "apiKey", "in": "query", "name": "sig",
                              "description": "Signed link signature; used together with exp (CONTRACT 6)."},
        },
    }


def openapi_document() -> dict:
    """The OpenAPI 3.1 document of recsvc's HTTP surface, a fresh dict each call."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "recsvc",
            "version": __version__,
            "summary": "Call recordings for browser players, with a status contract that always ends.",
            "description": "CONTRACT.md is the authority; this document describes it. Every error body is "
                           "JSON {error, message, ...}; x-error-codes lists the codes each response may carry.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": name} for name in ("recordings", "calls", "admin", "open")],
        "paths": _with_head(_paths()),
        "components": _components(),
        "x-error-codes": {code: {"status": status, "meaning": meaning} for code, (status, meaning) in ERROR_CODES.items()},
    }
