"""Upstream downloads: which URLs may be fetched, and fetching one under a deadline.

Theory of operation. ``check_recording_url`` is the allowlist rule of
CONTRACT 6 (https only; http only for loopback when ``--allow-upstream``
names the word ``loopback``; the host must be listed). It runs when a call
is stored and again before each download.

``Downloader.download(url, dest)`` makes up to 3 requests (CONTRACT 4:
connection errors, timeouts and retryable HTTP statuses, with backoff
between them) and maps every failure to one job error code by raising
``DownloadFailed(code, message)``. Each request has one deadline of
``--download-timeout`` seconds for the whole transfer, not per read: every
socket read gets only the time left, and the clock is checked after each
chunk, so a trickling upstream cannot stretch it. Bytes are counted while
reading against ``--max-recording-bytes``, and the first bytes are sniffed:
anything that is not audio fails with ``invalid_audio``.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO, Callable

from .media import SNIFF_BYTES, sniff_content_type
from .model import DOWNLOAD_FAILED, INVALID_AUDIO, STORAGE_ERROR, TOO_LARGE, UPSTREAM_AUTH_FAILED, UPSTREAM_NOT_FOUND
from .settings import Settings

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
REQUESTS_PER_DOWNLOAD = 3
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 5


class UrlNotAllowed(ValueError):
    """A recording_url the allowlist refuses (CONTRACT 6: 422 recording_url_not_allowed)."""


class DownloadFailed(Exception):
    """A download that failed for good; ``code`` is the job's error_code (CONTRACT 4)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _Retryable(Exception):
    """A failure worth another request: connection error, timeout, 5xx."""


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_recording_url(url: str, allow_upstream: tuple[str, ...]) -> None:
    """Raise UrlNotAllowed unless the URL may be downloaded (CONTRACT 6)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise UrlNotAllowed("recording_url is not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        raise UrlNotAllowed("recording_url must not carry credentials")
    if not host:
        raise UrlNotAllowed("recording_url has no host")
    loopback_allowed = "loopback" in allow_upstream and is_loopback_host(host)
    if parts.scheme == "https":
        if host in allow_upstream or loopback_allowed:
            return
    elif parts.scheme == "http":
        if loopback_allowed:
            return
        raise UrlNotAllowed("recording_url must use https")
    else:
        raise UrlNotAllowed("recording_url must use https")
    raise UrlNotAllowed(f"recording_url host {host!r} is not in the allowed upstream hosts")


@dataclass(frozen=True)
class Downloaded:
    size: int
    sha256: str
    content_type: str


class _AllowlistRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an allowed URL, at most MAX_REDIRECTS times."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, allow_upstream: tuple[str, ...]):
        self.allow_upstream = allow_upstream

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            check_recording_url(newurl, self.allow_upstream)
        except UrlNotAllowed as exc:
            raise DownloadFailed(DOWNLOAD_FAILED, f"redirect refused: {exc}") from None
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).hostname != urllib.parse.urlsplit(req.full_url).hostname:
            new.remove_header("Authorization")  # credentials never go to another host
        return new


class Downloader:
    """Fetches one recording URL into an open file."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, backoff: float | None = None):
        self.settings = settings
        self._sleep = sleep
        self._monotonic = monotonic
        # 1 s then 2 s between requests; scaled down with short download
        # timeouts so that short test timings stay short.
        self.backoff = backoff if backoff is not None else min(1.0, settings.download_timeout / 30)
        # Only the http and https handlers: no file://, ftp:// or data: URLs.
        self._opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                        urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor(),
                        _AllowlistRedirects(settings.allow_upstream)):
            self._opener.add_handler(handler)

    def download(self, url: str, dest: BinaryIO, headers: dict[str, str] | None = None) -> Downloaded:
        try:
            check_recording_url(url, self.settings.allow_upstream)
        except UrlNotAllowed as exc:
            raise DownloadFailed(DOWNLOAD_FAILED, str(exc)) from None
        last_error = "no request made"
        for attempt in range(REQUESTS_PER_DOWNLOAD):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
                dest.seek(0)
                dest.truncate()
            try:
                return self._request(url, dest, headers or {})
            except _Retryable as exc:
                last_error = str(exc)
                log.info("download of %s failed (%s), request %d/%d", _loggable(url), exc,
                         attempt + 1, REQUESTS_PER_DOWNLOAD)
        raise DownloadFailed(DOWNLOAD_FAILED, f"{last_error} (after {REQUESTS_PER_DOWNLOAD} requests)")

    def _request(self, url: str, dest: BinaryIO, headers: dict[str, str]) -> Downloaded:
        timeout = self.settings.download_timeout
        deadline = self._monotonic() + timeout
        request = urllib.request.Request(url, headers={"User-Agent": "recsvc", **headers})
        try:
            response = self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise self._status_error(exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retryable(f"connection failed: {reason}") from None
        except http.client.HTTPException as exc:  # not HTTP at all: a connection error (CONTRACT 4)
            raise _Retryable(f"upstream answered no valid HTTP: {exc!r}") from None
        with response:
            limit = self.settings.max_recording_bytes
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise DownloadFailed(TOO_LARGE, f"upstream announced {length} bytes, over the limit of {limit}")
            digest = hashlib.sha256()
            head = b""
            size = 0
            while True:
                left = deadline - self._monotonic()
                if left <= 0:
                    raise _Retryable(f"download took longer than {timeout:g}s")
                try:
                    _set_read_timeout(response, left)
                    chunk = response.read1(CHUNK) if hasattr(response, "read1") else response.read(CHUNK)
                except (socket.timeout, TimeoutError):
                    raise _Retryable(f"download took longer than {timeout:g}s") from None
                except (OSError, http.client.HTTPException) as exc:  # IncompleteRead: a cut chunked body
                    raise _Retryable(f"connection lost: {exc}") from None
                if not chunk:
                    break
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
        if length and length.isdigit() and size != int(length):
            # The connection closed early: a cut download is not a recording (CONTRACT 1, invariant 4).
            raise _Retryable(f"connection closed after {size} of {length} bytes")
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
