"""Upstream downloads: which URLs and addresses may be fetched, and fetching one under a deadline.

Theory of operation. A ``recording_url`` comes from a tenant, so every
download is a request made on someone else's behalf (SSRF). Three gates
stand between the URL and a socket. The first two, which URLs and which
addresses, are the pure rules of ``upstream_rules`` (re-exported here). The
third is the connection: ``_CheckedHTTPConnection`` and
``_CheckedHTTPSConnection`` repeat gates 1 and 2 for the very host
http.client was given, at connect time, connect to an address that was
just checked (so DNS cannot change its answer between check and connect:
rebinding) and verify the peer the socket reached. TLS still verifies the
certificate against the host name. Every redirect hop goes through the same
connections, after ``_CheckedRedirects`` has checked the new URL (at most
``MAX_REDIRECTS``, http and https only) and dropped credentials when the
origin changes. The opener holds only the http and https handlers: no
file://, ftp:// or data: URLs, and no proxy taken from the environment.

``Downloader.download(url, dest)`` makes up to 3 requests (CONTRACT 4:
connection errors, timeouts and retryable HTTP statuses, with backoff
between them) and maps every failure to one job error code by raising
``DownloadFailed(code, message)``; a refused URL, address or redirect is
``download_failed`` at once, never retried. Each request has one deadline of
``--download-timeout`` seconds for all of it: name resolution, connect, TLS
handshake, response head, redirects and body. Every socket operation gets
only the time left, and a watchdog shuts the request's sockets down at the
deadline, so an upstream that trickles its head a byte at a time cannot
stretch it. Bytes are counted while reading against
``--max-recording-bytes`` whatever ``Content-Length`` said, and the first
bytes are sniffed: anything that is not audio fails with ``invalid_audio``.

A worker hands each download a ``JobCut`` (CONTRACT 4): the job's own
deadline (``started_at + job-timeout``) bounds every request and backoff
pause, no request starts after it, and a try still running there is cut and
raises ``JobDeadlinePassed``; when the next try's backoff would end past it,
the download fails ``download_failed`` with the errors seen so far at once; ``JobCut.abandon()``, called from another
thread when the job is no longer the worker's, shuts the request's sockets
at once and raises ``DownloadAbandoned``. So a hung upstream holds a
download thread for at most ``job-timeout``.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO, Callable

from ..contract.model import DOWNLOAD_FAILED, INVALID_AUDIO, STORAGE_ERROR, TOO_LARGE, UPSTREAM_AUTH_FAILED, UPSTREAM_NOT_FOUND
from ..contract.settings import Settings
from .media import SNIFF_BYTES, sniff_content_type
from .upstream_rules import (DEFAULT_PORTS, LOOPBACK_WORD, Resolver, UrlNotAllowed, check_recording_url,
                             ip_literal, is_loopback_host, is_public_address, judge_address, judge_host,
                             resolve_allowed, system_resolver)

__all__ = [
    "CHUNK", "MAX_REDIRECTS", "REQUESTS_PER_DOWNLOAD", "RETRYABLE_STATUSES", "LOOPBACK_WORD", "Resolver",
    "UrlNotAllowed", "DownloadFailed", "Downloaded", "Downloader", "DownloadCut", "DownloadAbandoned",
    "JobDeadlinePassed", "JobCut",
    "check_recording_url", "is_loopback_host", "is_public_address", "judge_address", "judge_host",
    "resolve_allowed", "system_resolver",
]

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
REQUESTS_PER_DOWNLOAD = 3
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 5
# Headers that carry credentials: never sent on to another origin.
CREDENTIAL_HEADERS = ("Authorization", "Proxy-authorization", "Cookie")


class DownloadFailed(Exception):
    """A download that failed for good; ``code`` is the job's error_code (CONTRACT 4)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _Retryable(Exception):
    """A failure worth another request: connection error, timeout, 5xx."""


class DownloadCut(Exception):
    """The download was cut short by its worker (CONTRACT 4); no job error code of its own."""


class JobDeadlinePassed(DownloadCut):
    """The job's deadline (``started_at + job-timeout``) came before the download ended."""


class DownloadAbandoned(DownloadCut):
    """The job is no longer the worker's (failed stuck, superseded, orphaned): stop at once."""


class JobCut:
    """A worker's hold on one download: the job's deadline, and a way to abandon it from another thread.

    ``seconds_left`` is the time from the start of ``download()`` to the job's
    deadline (None: no deadline but ``--download-timeout`` per request).
    ``abandon()`` may be called at any time from any thread: it shuts the
    sockets of the request in flight and ends a backoff pause.
    """

    def __init__(self, seconds_left: float | None = None):
        self.seconds_left = seconds_left
        self.abandoned = threading.Event()
        self._fetch_lock = threading.Lock()  # guards _fetch
        self._fetch: _Fetch | None = None

    def abandon(self) -> None:
        self.abandoned.set()
        with self._fetch_lock:
            fetch = self._fetch
        if fetch is not None:
            fetch.expire()

    def attach(self, fetch: "_Fetch | None") -> None:
        """The request now in flight (None between requests)."""
        with self._fetch_lock:
            self._fetch = fetch
        if fetch is not None and self.abandoned.is_set():
            fetch.expire()


# ---------------------------------------------------------------- gate 3: the connection


class _Fetch:
    """One request's rules and deadline, shared by its connections (redirect hops included).

    The watchdog shuts every socket of the request down at the deadline, so
    a read blocked on a trickling or silent upstream returns at once.
    """

    def __init__(self, allow_upstream: tuple[str, ...], resolver: Resolver | None, timeout: float,
                 monotonic: Callable[[], float]):
        self.allow_upstream = allow_upstream
        self.resolver = resolver
        self.timeout = timeout
        self._monotonic = monotonic
        self.deadline = monotonic() + timeout
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._sockets_lock = threading.Lock()  # guards _sockets and expired
        self._watchdog = threading.Timer(timeout, self.expire)
        self._watchdog.daemon = True

    def __enter__(self) -> "_Fetch":
        self._watchdog.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._watchdog.cancel()

    def left(self) -> float:
        """Seconds before the deadline; raises socket.timeout when none are left."""
        left = self.deadline - self._monotonic()
        if left <= 0 or self.expired:
            raise socket.timeout(f"download took longer than {self.timeout:g}s")
        return left

    def watch(self, sock: socket.socket) -> None:
        with self._sockets_lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def expire(self) -> None:
        """Shut every socket of the request down: at the deadline, or when the job is abandoned."""
        with self._sockets_lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def resolve(self, host: str, port: int) -> list:
        """``resolve_allowed`` within the time left (getaddrinfo itself has no timeout)."""
        if ip_literal(host) is not None:
            return resolve_allowed(host, port, self.allow_upstream)
        outcome: list = []

        def run() -> None:
            try:
                outcome.append((True, resolve_allowed(host, port, self.allow_upstream, self.resolver)))
            except BaseException as exc:  # handed to the waiting thread
                outcome.append((False, exc))

        resolving = threading.Thread(target=run, name="recsvc-resolve", daemon=True)
        resolving.start()
        resolving.join(self.left())
        if not outcome:
            raise socket.timeout(f"resolving {host} took longer than {self.timeout:g}s")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def connect(self, scheme: str, host: str, port: int) -> socket.socket:
        """A socket connected to a checked address of ``host`` (gates 1-3, CONTRACT 6)."""
        judge_host(scheme, host, self.allow_upstream)
        last_error: OSError = OSError(f"could not connect to {host}")
        for address in self.resolve(host, port):
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            self.watch(sock)
            try:
                sock.settimeout(self.left())
                sock.connect((str(address), port))
                peer = ipaddress.ip_address(sock.getpeername()[0].partition("%")[0])
            except OSError as exc:
                sock.close()
                last_error = exc
                if isinstance(exc, socket.timeout) or self.expired:
                    raise
                continue
            if peer != address:
                sock.close()
                raise UrlNotAllowed(f"connected to {peer} instead of the checked address {address}")
            try:
                judge_address(peer, self.allow_upstream, host=host)
            except UrlNotAllowed:
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise last_error


def _shut(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: the TLS object stays
    # intact for the thread reading it, which sees end of file.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, *, fetch: _Fetch, **kwargs):
        super().__init__(host, **kwargs)
        self._fetch = fetch

    def connect(self) -> None:
        self.sock = self._fetch.connect("http", self.host, self.port)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, *, fetch: _Fetch, **kwargs):
        super().__init__(host, **kwargs)
        self._fetch = fetch

    def connect(self) -> None:
        sock = self._fetch.connect("https", self.host, self.port)
        try:
            # The certificate is verified against the name, though the socket
            # was connected to an address.
            tls = self._context.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        self._fetch.watch(tls)
        self.sock = tls
        tls.settimeout(self._fetch.left())
        tls.do_handshake()


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, fetch: _Fetch):
        super().__init__()
        self._fetch = fetch

    def http_open(self, req):
        return self.do_open(functools.partial(_CheckedHTTPConnection, fetch=self._fetch), req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    """``tls_context`` is called only when an https URL is opened: plain http never loads a trust store."""

    def __init__(self, fetch: _Fetch, tls_context: Callable[[], ssl.SSLContext]):
        super().__init__()
        self._fetch = fetch
        self._tls_context = tls_context

    def https_open(self, req):
        return self.do_open(functools.partial(_CheckedHTTPSConnection, fetch=self._fetch), req,
                            context=self._tls_context())


class _RefuseOtherSchemes(urllib.request.BaseHandler):
    """Any scheme without a handler (file, ftp, data) is refused, not silently unanswered."""

    def unknown_open(self, req):
        raise UrlNotAllowed(f"scheme {req.type!r} is not allowed")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an allowed URL, at most MAX_REDIRECTS times, without credentials across origins."""

    # urllib's own limits sit above ours, so that ours, with its clear message, trips first.
    max_redirections = MAX_REDIRECTS + 1
    max_repeats = MAX_REDIRECTS + 1

    def __init__(self, allow_upstream: tuple[str, ...]):
        self.allow_upstream = allow_upstream

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("Location") or headers.get("URI")
        if location is not None:
            hops = getattr(req, "recsvc_hops", 0) + 1
            if hops > MAX_REDIRECTS:
                fp.close()
                raise UrlNotAllowed(f"redirect refused: more than {MAX_REDIRECTS} redirects")
            scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, location.strip())).scheme
            if scheme not in DEFAULT_PORTS:
                fp.close()
                raise UrlNotAllowed(f"redirect refused: scheme {scheme!r} is not allowed")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        # newurl is exactly what urllib opens next; its address is judged when it connects.
        try:
            check_recording_url(newurl, self.allow_upstream)
        except UrlNotAllowed as exc:
            fp.close()
            raise UrlNotAllowed(f"redirect refused: {exc}") from None
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        new.recsvc_hops = getattr(req, "recsvc_hops", 0) + 1
        if _origin(newurl) != _origin(req.full_url):
            for name in CREDENTIAL_HEADERS:  # credentials never go to another origin
                new.remove_header(name)
        return new


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(parts.scheme, 0)


# ---------------------------------------------------------------- the download


@dataclass(frozen=True)
class Downloaded:
    size: int
    sha256: str
    content_type: str


class Downloader:
    """Fetches one recording URL into an open file."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic, backoff: float | None = None,
                 resolver: Resolver | None = None, ssl_context: ssl.SSLContext | None = None,
                 requests_per_download: int = REQUESTS_PER_DOWNLOAD):
        self.settings = settings
        self._sleep = sleep  # None: a pause waits on the job's cut, so abandoning ends it at once
        self._monotonic = monotonic
        self.resolver = resolver
        self.ssl_context = ssl_context  # None: the system's trust store, hostname checked
        self.requests_per_download = requests_per_download
        # 1 s then 2 s between requests; scaled down with short download
        # timeouts so that short test timings stay short.
        self.backoff = backoff if backoff is not None else min(1.0, settings.download_timeout / 30)

    def tls_context(self) -> ssl.SSLContext:
        return self.ssl_context if self.ssl_context is not None else default_tls_context()

    def download(self, url: str, dest: BinaryIO, headers: dict[str, str] | None = None,
                 cut: JobCut | None = None) -> Downloaded:
        """Fetch ``url`` into ``dest``. Raises DownloadFailed, or DownloadCut when ``cut`` ends it."""
        try:
            check_recording_url(url, self.settings.allow_upstream)
        except UrlNotAllowed as exc:
            raise DownloadFailed(DOWNLOAD_FAILED, str(exc)) from None
        cut = cut if cut is not None else JobCut()
        deadline = None if cut.seconds_left is None else self._monotonic() + cut.seconds_left
        last_error = "no request made"
        made = 0
        for attempt in range(self.requests_per_download):
            if attempt:
                pause = self.backoff * 2 ** (attempt - 1)
                if deadline is not None and self._monotonic() + pause >= deadline:
                    # CONTRACT 4: no request starts after the job's deadline, so the errors
                    # seen so far are the job's end: download_failed now, not stuck later.
                    break
                self._pause(pause, deadline, cut)
                dest.seek(0)
                dest.truncate()
            timeout = self._time_for_request(deadline, cut)  # CONTRACT 4: none starts after the deadline
            made += 1
            try:
                return self._request(url, dest, headers or {}, timeout, cut)
            except _Retryable as exc:
                self._time_for_request(deadline, cut)  # a try cut at the job's deadline ends the job
                last_error = str(exc)
                log.info("download of %s failed (%s), request %d/%d", _loggable(url), exc,
                         attempt + 1, self.requests_per_download)
        raise DownloadFailed(DOWNLOAD_FAILED, f"{last_error} (after {made} request{'s' if made > 1 else ''})")

    def _time_for_request(self, deadline: float | None, cut: JobCut) -> float:
        """Seconds the next request may take; raises DownloadCut when the job was abandoned or is out of time."""
        if cut.abandoned.is_set():
            raise DownloadAbandoned("the job is no longer this worker's")
        timeout = self.settings.download_timeout
        if deadline is None:
            return timeout
        left = deadline - self._monotonic()
        if left <= 0:
            raise JobDeadlinePassed("the job's deadline passed")
        return min(timeout, left)

    def _pause(self, seconds: float, deadline: float | None, cut: JobCut) -> None:
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - self._monotonic()))
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            cut.abandoned.wait(seconds)

    def _opener(self, fetch: _Fetch) -> urllib.request.OpenerDirector:
        """A fresh opener per request: its handlers carry that request's deadline."""
        opener = urllib.request.OpenerDirector()
        for handler in (_CheckedHTTPHandler(fetch), _CheckedHTTPSHandler(fetch, self.tls_context),
                        urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor(),
                        _CheckedRedirects(self.settings.allow_upstream), _RefuseOtherSchemes()):
            opener.add_handler(handler)
        return opener

    def _request(self, url: str, dest: BinaryIO, headers: dict[str, str], timeout: float,
                 cut: JobCut) -> Downloaded:
        too_slow = f"download took longer than {timeout:g}s"
        request = urllib.request.Request(url, headers={"User-Agent": "recsvc", **headers})
        with _Fetch(self.settings.allow_upstream, self.resolver, timeout, self._monotonic) as fetch:
            cut.attach(fetch)
            try:
                return self._open_and_receive(request, fetch, dest, timeout, too_slow)
            finally:
                cut.attach(None)

    def _open_and_receive(self, request, fetch: "_Fetch", dest: BinaryIO, timeout: float,
                          too_slow: str) -> Downloaded:
        try:
            response = self._opener(fetch).open(request, timeout=timeout)
        except UrlNotAllowed as exc:
            raise DownloadFailed(DOWNLOAD_FAILED, str(exc)) from None
        except urllib.error.HTTPError as exc:
            exc.close()
            raise self._status_error(exc.code) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if fetch.expired or isinstance(getattr(exc, "reason", exc), (socket.timeout, TimeoutError)):
                raise _Retryable(too_slow) from None
            raise _Retryable(f"connection failed: {getattr(exc, 'reason', exc) or type(exc).__name__}") from None
        with response:
            return self._receive(response, dest, fetch, too_slow)

    def _receive(self, response, dest: BinaryIO, fetch: _Fetch, too_slow: str) -> Downloaded:
        limit = self.settings.max_recording_bytes
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise DownloadFailed(TOO_LARGE, f"upstream announced {length} bytes, over the limit of {limit}")
        digest = hashlib.sha256()
        head = b""
        size = 0
        while True:
            try:
                _set_read_timeout(response, fetch.left())
                chunk = response.read1(CHUNK)
            except (socket.timeout, TimeoutError):
                raise _Retryable(too_slow) from None
            except (OSError, http.client.HTTPException) as exc:
                if fetch.expired:
                    raise _Retryable(too_slow) from None
                raise _Retryable(f"connection lost: {exc or type(exc).__name__}") from None
            if not chunk:
                if fetch.expired:  # the watchdog's shutdown reads as end of file
                    raise _Retryable(too_slow)
                if response.length:  # read1 reports a body cut short as a plain end
                    raise _Retryable(f"connection lost: the body ended {response.length} bytes early")
                break
            # Counted as read: a missing, negative or lying Content-Length changes nothing.
            size += len(chunk)
            if size > limit:
                raise DownloadFailed(TOO_LARGE, f"recording is larger than the limit of {limit} bytes")
            if len(head) < SNIFF_BYTES:
                head += chunk[:SNIFF_BYTES - len(head)]
            digest.update(chunk)
            try:
                dest.write(chunk)
            except OSError as exc:
                raise DownloadFailed(STORAGE_ERROR, f"could not write the recording: {exc.strerror or exc}") from None
        content_type = sniff_content_type(head)
        if content_type is None:
            raise DownloadFailed(INVALID_AUDIO, "upstream answered something that is not audio "
                                 f"({response.headers.get('Content-Type') or 'no content type'}, {size} bytes)")
        return Downloaded(size=size, sha256=digest.hexdigest(), content_type=content_type)

    @staticmethod
    def _status_error(status: int) -> Exception:
        if status in (404, 410):
            return DownloadFailed(UPSTREAM_NOT_FOUND, f"upstream answered {status}: the recording does not exist")
        if status in (401, 403):
            return DownloadFailed(UPSTREAM_AUTH_FAILED, f"upstream refused access ({status})")
        if status in RETRYABLE_STATUSES or status >= 500:
            return _Retryable(f"upstream answered {status}")
        return DownloadFailed(DOWNLOAD_FAILED, f"upstream answered {status}")


_default_context: ssl.SSLContext | None = None
_default_context_lock = threading.Lock()


def default_tls_context() -> ssl.SSLContext:
    """The system's trust store, certificates verified against the host name.

    Built on the first https download and then shared: each context loads
    the whole trust store in native memory. Plain http never builds it. The
    lock makes "once" hold when many download threads start together:
    without it, each of them may build a context of its own (docs/measurements.md).
    """
    global _default_context
    with _default_context_lock:
        if _default_context is None:
            _default_context = ssl.create_default_context()
        return _default_context


def _set_read_timeout(response, seconds: float) -> None:
    """Give the next socket read only the time left before the deadline."""
    sock = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(sock, "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def _loggable(url: str) -> str:
    """A URL without its query string: upstream query strings may carry credentials."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
