"""The HTTP surface of CONTRACT 3, 5 and 6: requests in, decisions out, rendered as responses.

Theory of operation. ``Api`` is the application callable the transport
(``recsvc.http.server``) calls once per request. It routes (``routes.match``),
reads the request's facts, calls the service once, and renders the outcome
as the table of answers says (``recsvc.http.answers``); it never decides a status
itself. Every error is an ``ApiError`` named by its machine code, whose status
the table gives, and one choke point in ``__call__`` turns anything unexpected
into a JSON 500 with one log line, never a traceback to the client.
"""

from __future__ import annotations

import errno
import functools
import hmac
import json
import logging
import re
import time
import urllib.parse
from typing import Callable

from .. import __version__
from ..contract.clock import Clock, iso_utc
from ..contract.model import wait_seconds
from ..contract.settings import Settings
from ..core.cache import RecordingCache
from ..core.job_filters import parse_job_filters
from ..core.links import LinkSigner
from ..core.media import Conditions, plan_response, strong_etag
from ..core.metrics import Metrics
from ..core.service import PlayRequest, PlayResult, RecordingService, TwilioAccountTaken, valid_call_sid
from ..core.twilio import parse_recording_status, validate_signature
from ..core.upstream import UrlNotAllowed
from ..storage.counter import CounterError
from ..storage.store import StoreBusy, StoreError
from .answers import FILE, PLAY, PROCESSING, RETRY_LIMIT, meaning
from .openapi import openapi_document
from .protocol import FileBody, Request, Response, json_error
from .routes import Matched, MethodNotAllowed, Route, bind, make_route, match
from .static import PAGES, StaticFiles, plain_index

log = logging.getLogger(__name__)

JSON = "application/json"
TWILIO_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")


class ApiError(Exception):
    """An answer that is an error: a machine code of ``recsvc.http.answers.ERRORS``, which gives its
    status, and the English message when the site says more than the table (CONTRACT 3)."""

    def __init__(self, code: str, message: str | None = None, headers: tuple = (), **extra):
        row = meaning(code)
        super().__init__(message or row.message)
        self.status, self.code, self.message, self.headers, self.extra = row.status, code, message, headers, extra

    def response(self) -> Response:
        return json_error(self.code, self.message, self.headers, **self.extra)


UNAUTHORIZED = ApiError("unauthorized")


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps with separators builds one per call


# Errors of the disk, not of recsvc: answered 503 storage_unavailable (CONTRACT 3).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM})


def json_response(status: int, payload: dict, headers: tuple = ()) -> Response:
    body = _COMPACT_JSON.encode(payload).encode()
    return Response(status, [("Content-Type", JSON), *headers], body)


@functools.lru_cache(maxsize=1024, typed=True)
def processing_body(job_id: int, job_status: str, attempt: int, max_attempts: int, retry_after: int) -> bytes:
    """The body of a 202 (CONTRACT 3 rows 9, 10a, 10b). A player polls the same job again and
    again, so the same body is encoded once; ``typed``: 1 and True are different bodies."""
    return _COMPACT_JSON.encode({
        "status": "processing",
        "job_id": job_id,
        "job_status": job_status,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "retry_after": retry_after,
        "message": f"The recording is being prepared; ask again in {retry_after} seconds.",
    }).encode()


def bearer_token(request: Request) -> str | None:
    value = request.header("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def read_json_object(request: Request) -> dict:
    try:
        payload = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
        raise ApiError("invalid_json") from None
    if not isinstance(payload, dict):
        raise ApiError("invalid_json")
    return payload


# CONTRACT 6, "Bad input never gets a 5xx".
MAX_QUERY_FIELDS = 20
LARGEST_ID = 2**63 - 1  # ids are SQLite INTEGERs
NOT_FOUND = ApiError("not_found")


def query_fields(request: Request) -> dict[str, list[str]]:
    """The request's query fields, percent-decoded, blank ones dropped; more than 20 is 400."""
    if request.query.count("&") >= MAX_QUERY_FIELDS:  # what parse_qs counts, before it does any work
        raise ApiError("invalid_request", f"A query may have at most {MAX_QUERY_FIELDS} fields.")
    return urllib.parse.parse_qs(request.query)


def query_number(fields: dict[str, list[str]], name: str) -> int | None:
    """Query field ``name`` as a whole number, None when absent; 400 unless it is plain ASCII digits.

    A number past 2^63-1 comes back as 2^63, so any range check refuses it
    without converting thousands of digits."""
    value = fields.get(name, [None])[0]
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise ApiError("invalid_request", f"{name} must be a whole number in ASCII digits.")
    return int(value) if len(value.lstrip("0")) <= 19 else LARGEST_ID + 1


def query_id(fields: dict[str, list[str]], name: str) -> int | None:
    """Query field ``name`` as an id, None when absent; 400 unless digits, 404 outside 1..2^63-1."""
    value = query_number(fields, name)
    if value is not None and not 1 <= value <= LARGEST_ID:
        raise NOT_FOUND
    return value


def path_business_id(raw: str) -> int:
    """A business id from the raw path: 400 unless ASCII digits, 404 outside 1..2^63-1."""
    if not (raw.isascii() and raw.isdigit()):
        raise ApiError("invalid_business_id")
    if len(raw.lstrip("0")) > 19 or not 1 <= int(raw) <= LARGEST_ID:
        raise NOT_FOUND
    return int(raw)


# A wait longer than any --max-wait; longer numbers are cut to it, not refused.
_LONGEST_WAIT = 10**9


def prefer_wait(value: str | None) -> int | None:
    """The ``wait`` preference of Prefer, all its lines joined by ", ", in whole seconds (RFC 7240 4.3), or None.

    Only the first ``wait`` counts (RFC 7240 2); a value that is not
    delta-seconds (ASCII digits only) is ignored, and a huge one means "as
    long as you allow" (RFC 9111 1.2.2).
    """
    if not value:
        return None
    for preference in value.split(","):
        name, _, rest = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            seconds = rest.split(";", 1)[0].strip().strip('"')
            if not (seconds.isascii() and seconds.isdigit()):
                return None
            return int(seconds) if len(seconds) <= 9 else _LONGEST_WAIT
    return None


class Api:
    """The application: ``api(request) -> response``."""

    def __init__(self, settings: Settings, service: RecordingService, signer: LinkSigner, metrics: Metrics,
                 clock: Clock, cache: RecordingCache):
        self.settings = settings
        self.service = service
        self.signer = signer
        self.metrics = metrics
        self.clock = clock
        self.cache = cache
        self._admin_token = settings.admin_token.encode() if settings.admin_token else None
        self.routes: tuple[Route, ...] = bind(ROUTES, self)
        # The other serving processes' metrics families (serve --processes N; recsvc.run.prefork).
        self.peer_metrics: Callable[[], list] = list
        self.static = StaticFiles()
        self._plain_index = plain_index(__version__)

    def mount(self, route: Route) -> None:
        """Add a route whose handlers are bound already (the demo's drills use this)."""
        self.routes = self.routes + (route,)

    # ------------------------------------------------------------ choke point

    def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        route_name = "unknown"
        try:
            found = match(request.method, request.path, self.routes)
            if request.path.startswith("/admin/") or request.path == "/admin":
                if self._admin_token is None:  # CONTRACT 6: no admin token, no admin surface
                    raise ApiError("not_found")
            if isinstance(found, MethodNotAllowed):
                route_name = found.route.name
                raise ApiError("method_not_allowed", f"{request.method} is not allowed here.",
                               (("Allow", found.allow),))
            if not isinstance(found, Matched):
                raise ApiError("not_found")
            route_name = found.route.name
            response = found.handler(request, **found.params)
        except ApiError as exc:
            response = exc.response()
        except (StoreError, OSError) as exc:
            response = self._storage_fault(exc, request)
        except CounterError:  # only the admin view raises it: the shared counter is unreachable (CONTRACT 3)
            response = json_error("counter_unavailable")
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            response = json_error("internal_error")
        self.metrics.observe_request(route_name, request.method, response.status, time.perf_counter() - started)
        return response

    def _storage_fault(self, exc: Exception, request: Request) -> Response:
        """CONTRACT 3, storage faults: 503 with Retry-After, never 500; the transaction changed nothing.
        An OSError that is not a fault of the disk is a bug of ours: 500 with its traceback."""
        if isinstance(exc, OSError) and exc.errno not in STORAGE_ERRNOS:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return json_error("internal_error")
        seconds = wait_seconds(self.settings.retry_after)
        code = "storage_busy" if isinstance(exc, StoreBusy) else "storage_unavailable"
        log.debug("%s %s answered 503 %s: %s", request.method, request.path, code, exc)
        return json_error(code, headers=(("Retry-After", str(seconds)),), retry_after=seconds)

    # ------------------------------------------------------------ credentials

    def _business(self, request: Request) -> int:
        business_id = self.service.authenticate(bearer_token(request))
        if business_id is None:
            raise UNAUTHORIZED                                          # CONTRACT 3 row 1
        return business_id

    def _admin(self, request: Request) -> None:
        given = (bearer_token(request) or "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, self._admin_token):
            raise UNAUTHORIZED

    @staticmethod
    def _call_sid(raw: str) -> str:
        if not valid_call_sid(raw):
            raise ApiError("invalid_call_sid")                          # CONTRACT 3 row 2
        return raw

    # ------------------------------------------------------------ CONTRACT 3: playing a recording

    def play(self, request: Request, call_sid: str) -> Response:
        token, link = bearer_token(request), None
        if request.query and token is None:
            if valid_call_sid(call_sid):  # a link to a call_sid that cannot be is 401 whatever its query
                query_fields(request)  # only its limit: the signer reads the fields
            link = request.query
        wanted = prefer_wait(", ".join(value for name, value in request.headers if name == "prefer"))
        result = self.service.play(PlayRequest(call_sid, token, link, wanted))
        if result.hold is None:
            return self.render_play(request, result)
        result = self.service.hold(result, request.client_gone)  # CONTRACT 5b
        try:
            response = self.render_play(request, result)
        except ApiError as exc:
            response = exc.response()
        response.headers.append(("Preference-Applied", f"wait={result.hold.applied}"))
        return response

    def render_play(self, request: Request, result: PlayResult) -> Response:
        """The outcome as the table of answers says (``recsvc.http.answers.PLAY``, CONTRACT 3)."""
        outcome = result.outcome
        answer = PLAY[type(outcome)]
        seconds = wait_seconds(getattr(self.settings, answer.retry_after)) if answer.retry_after else None
        if answer.answer == FILE:
            return self._send_file(request, result)
        if answer.answer == PROCESSING:
            job = result.job
            body = processing_body(job.id, job.status, result.attempt, self.settings.max_retry_attempts, seconds)
            return Response(202, [("Content-Type", JSON), ("Retry-After", str(seconds))], body)
        if answer.answer == RETRY_LIMIT:
            s = self.settings
            raise ApiError(outcome.error, None, (("Retry-After", str(outcome.retry_after)),),
                           reason=answer.reason, attempts=outcome.attempts, max_attempts=s.max_retry_attempts,
                           retry_window_seconds=wait_seconds(s.retry_window), retry_after=outcome.retry_after)
        if seconds is None:
            raise ApiError(answer.answer)
        extra = {"reason": answer.reason} if answer.reason else {}
        raise ApiError(answer.answer, None, (("Retry-After", str(seconds)),), **extra, retry_after=seconds)

    def _send_file(self, request: Request, result: PlayResult) -> Response:
        recording, handle = result.recording, result.file
        mtime = recording.stored_at
        conditions = Conditions(if_none_match=request.header("if-none-match"),
                                if_modified_since=request.header("if-modified-since"),
                                if_range=request.header("if-range"))
        plan = plan_response(request.method, conditions, request.header("range"), recording.size,
                             strong_etag(recording.sha256), mtime, content_type=recording.content_type)
        if plan.status == 416:
            handle.close()
            raise ApiError("range_not_satisfiable", None, plan.headers)
        if request.method == "GET" and plan.status in (200, 206):
            self.cache.played(recording.business_id, recording.call_sid)  # CONTRACT 5: a play
        if plan.count == 0:
            handle.close()
            return Response(plan.status, list(plan.headers), b"")
        return Response(plan.status, list(plan.headers), FileBody(handle, plan.offset, plan.count))

    # ------------------------------------------------------------ CONTRACT 6: calls and links

    def put_call(self, request: Request, call_sid: str) -> Response:
        business_id = self._business(request)
        self._call_sid(call_sid)
        payload = read_json_object(request)
        if "recording_url" not in payload:
            raise ApiError("invalid_body", "The body must have a recording_url (a string or null).")
        url = payload["recording_url"]
        if url is not None and (not isinstance(url, str) or len(url) > 2048):
            raise ApiError("invalid_body", "recording_url must be a string of at most 2048 characters, or null.")
        if url == "":
            url = None
        try:
            created, view = self.service.put_call(business_id, call_sid, url)
        except UrlNotAllowed as exc:
            raise ApiError("recording_url_not_allowed", f"{exc}.") from None
        return json_response(201 if created else 200, view)

    def get_call(self, request: Request, call_sid: str) -> Response:
        business_id = self._business(request)
        self._call_sid(call_sid)
        view = self.service.get_call(business_id, call_sid)
        if view is None:
            raise ApiError("call_not_found")
        return json_response(200, view)

    def create_link(self, request: Request, call_sid: str) -> Response:
        business_id = self._business(request)
        self._call_sid(call_sid)
        if self.service.get_call(business_id, call_sid) is None:
            raise ApiError("call_not_found")
        url, expires = self.signer.link(business_id, call_sid, self.clock())
        return json_response(200, {"url": url, "expires_at": iso_utc(expires)})

    # ------------------------------------------------------------ CONTRACT 6: admin

    def create_business(self, request: Request) -> Response:
        self._admin(request)
        payload = read_json_object(request)
        name = payload.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ApiError("invalid_body", "name must be a non-empty string of at most 200 characters.")
        business_id, token = self.service.create_business(name.strip())
        return json_response(201, {"id": business_id, "name": name.strip(), "token": token})

    def register_twilio(self, request: Request, business_id: str) -> Response:
        self._admin(request)
        business = path_business_id(business_id)
        payload = read_json_object(request)
        account_sid, auth_token = payload.get("account_sid"), payload.get("auth_token")
        media_format = payload.get("media_format", "wav")
        if not isinstance(account_sid, str) or not TWILIO_ACCOUNT_SID.fullmatch(account_sid):
            raise ApiError("invalid_body", "account_sid must be a Twilio account SID (AC followed by 32 hex digits).")
        if not isinstance(auth_token, str) or not 8 <= len(auth_token) <= 256:
            raise ApiError("invalid_body", "auth_token must be a string of 8 to 256 characters.")
        if media_format not in ("wav", "mp3"):
            raise ApiError("invalid_body", "media_format must be wav or mp3.")
        try:
            registered = self.service.register_twilio(business, account_sid, auth_token, media_format)
        except TwilioAccountTaken:
            raise ApiError("twilio_account_taken") from None
        if not registered:
            raise ApiError("business_not_found")
        return json_response(200, {"business_id": business, "account_sid": account_sid,
                                   "media_format": media_format})

    def twilio_recording_status(self, request: Request) -> Response:
        """Twilio's recording-status callback, accepted only with a valid X-Twilio-Signature."""
        try:
            fields = urllib.parse.parse_qsl(request.body.decode("utf-8"), keep_blank_values=True,
                                            max_num_fields=100, strict_parsing=bool(request.body))
        except (UnicodeDecodeError, ValueError):
            raise ApiError("invalid_body", "The body must be form-encoded.") from None
        form = dict(fields)
        account = self.service.twilio_account(form.get("AccountSid", ""))
        signature = request.header("x-twilio-signature")
        if account is None or not any(validate_signature(url, fields, signature, account.auth_token)
                                      for url in self._request_urls(request)):
            raise ApiError("invalid_signature")
        try:
            status = parse_recording_status(form)
        except ValueError as exc:
            raise ApiError("invalid_body", f"{exc}.") from None
        if not valid_call_sid(status.call_sid):
            raise ApiError("invalid_call_sid", "CallSid must be 1 to 64 letters, digits, '_' or '-'.")
        try:
            created, view = self.service.twilio_recording_status(account, status)
        except UrlNotAllowed as exc:
            raise ApiError("recording_url_not_allowed", f"{exc}.") from None
        return json_response(201 if created else 200, view)

    @staticmethod
    def _request_urls(request: Request) -> list[str]:
        """The URL Twilio requested, as far as this server can tell: the host and scheme a
        trusted proxy names (CONTRACT 6, --trusted-proxies), else the Host header, over https
        and plain http. Headers from a peer that is not a trusted proxy are never read here."""
        forwarded = request.forwarded
        host = (forwarded.host if forwarded is not None else None) or request.header("host") or ""
        named = forwarded.scheme if forwarded is not None else None
        schemes = dict.fromkeys([s for s in (named, "https", "http") if s])
        return [f"{scheme}://{host}{request.target}" for scheme in schemes]

    def pause_workers(self, request: Request) -> Response:
        self._admin(request)
        return json_response(200, {"paused": self.service.set_paused(True)})

    def resume_workers(self, request: Request) -> Response:
        self._admin(request)
        return json_response(200, {"paused": self.service.set_paused(False)})

    def cleanup(self, request: Request) -> Response:
        self._admin(request)
        return json_response(200, {"marked_failed": self.service.cleanup()})

    def list_jobs(self, request: Request) -> Response:
        self._admin(request)
        query = query_fields(request)
        call_sid = query.get("call_sid", [None])[0]
        business = query_id(query, "business_id")
        if call_sid is not None and not valid_call_sid(call_sid):
            raise ApiError("invalid_call_sid")
        try:
            filters = parse_job_filters(query)
        except ValueError as exc:
            raise ApiError("invalid_request", str(exc)) from None
        return json_response(200, {"jobs": self.service.jobs(call_sid, business, filters.limit, status=filters.status,
                                                             since=filters.since)})

    def retry_counter(self, request: Request, business_id: str, call_sid: str) -> Response:
        self._admin(request)
        business = path_business_id(business_id)
        self._call_sid(call_sid)
        return json_response(200, self.service.retry_counter(business, call_sid))

    # ------------------------------------------------------------ open

    def healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    def readyz(self, request: Request) -> Response:
        reason = self.service.readiness()
        if reason is None:
            return json_response(200, {"status": "ready"})
        return json_response(503, {"status": "not_ready", "reason": reason})

    def static_page(self, request: Request, name: str | None = None) -> Response:
        if name is None and request.path == "/" and self._admin_token is None:
            asset = self._plain_index  # CONTRACT 6: no admin token, no demo page
        else:
            asset = self.static.get(name if name is not None else PAGES.get(request.path, ""))
        if asset is None:
            raise ApiError("not_found")
        body, content_type, etag = asset
        headers = [("Content-Type", content_type), ("ETag", etag), ("Cache-Control", "no-cache"),
                   ("X-Content-Type-Options", "nosniff")]
        if request.header("if-none-match") == etag:
            return Response(304, headers, b"")
        return Response(200, headers, body)

    def metrics_page(self, request: Request) -> Response:
        text = self.metrics.render(self.service.gauges(), self.peer_metrics())
        return Response(200, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], text.encode())

    def openapi_document(self, request: Request) -> Response:
        return json_response(200, openapi_document())


# The route table (CONTRACT 3, 5, 6): each method with the handler that answers it.
ROUTES: tuple[Route, ...] = (
    make_route("recording_file", "/api/recordings/file/{call_sid}", get=Api.play),
    make_route("recording_link", "/api/recordings/{call_sid}/link", post=Api.create_link),
    make_route("call", "/api/calls/{call_sid}", get=Api.get_call, put=Api.put_call),
    make_route("admin_businesses", "/admin/businesses", post=Api.create_business),
    make_route("admin_business_twilio", "/admin/businesses/{business_id}/twilio", put=Api.register_twilio),
    make_route("twilio_recording_status", "/webhooks/twilio/recording-status", post=Api.twilio_recording_status),
    make_route("admin_pause", "/admin/workers/pause", post=Api.pause_workers),
    make_route("admin_resume", "/admin/workers/resume", post=Api.resume_workers),
    make_route("admin_cleanup", "/admin/cleanup", post=Api.cleanup),
    make_route("admin_jobs", "/admin/jobs", get=Api.list_jobs),
    make_route("admin_retry_counter", "/admin/retry-counters/{business_id}/{call_sid}", get=Api.retry_counter),
    make_route("healthz", "/healthz", get=Api.healthz),
    make_route("readyz", "/readyz", get=Api.readyz),
    make_route("metrics", "/metrics", get=Api.metrics_page),
    make_route("openapi", "/openapi.json", get=Api.openapi_document),
    make_route("index", "/", get=Api.static_page),
    make_route("player_page", "/player", get=Api.static_page),
    make_route("player_script", "/player.js", get=Api.static_page),
    make_route("static", "/static/{name}", get=Api.static_page),
)
