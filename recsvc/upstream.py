"""Upstream downloads: which URLs and addresses may be fetched, and fetching one under a deadline.

Theory of operation. A ``recording_url`` comes from a tenant, so every
download is a request the service makes on someone else's behalf (SSRF).
Three gates stand between the URL and a socket, and each judges exactly
what urllib will use, never a second parse of its own:

1. ``check_recording_url`` (CONTRACT 6, 422 ``recording_url_not_allowed``):
   https only, http only for hosts the word ``loopback`` allows (127.0.0.0/8,
   ::1, ``localhost``); the host must equal an ``--allow-upstream`` entry.
   URLs that parsers read differently are refused outright: credentials,
   backslashes, percent signs or control characters in the URL, IPv6 zone
   ids, and numeric hosts that are not a plain IP address (``2130706433``,
   ``0x7f.1``). Then the host urllib would hand to http.client must be the
   host ``urlsplit`` read. Given a ``resolver``, the host's addresses are
   judged too (gate 2).
2. Addresses: every address a name resolves to must be public. Private,
   loopback, link-local, multicast, reserved, unspecified and CGNAT
   addresses (and IPv6 wrappings of them) are refused unless allowed
   explicitly: loopback ones by the word ``loopback``, one address by an
   allowlist entry that is that IP literal.
3. The connection. ``_CheckedHTTPConnection`` / ``_CheckedHTTPSConnection``
   repeat gates 1 and 2 for the host they were given at connect time,
   connect to a checked address (so DNS cannot change its answer between
   the check and the connect), and verify the peer the socket reached. TLS
   still verifies the certificate against the host name. Every redirect hop
   goes through the same connection classes, after ``_CheckedRedirects``
   has checked the new URL (at most ``MAX_REDIRECTS``, http and https only)
   and dropped credentials when the origin changes. The opener holds only
   the http and https handlers: no file://, ftp:// or data: URLs, and no
   proxy taken from the environment.

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
from typing import BinaryIO, Callable, Iterable

from .media import SNIFF_BYTES, sniff_content_type
from .model import DOWNLOAD_FAILED, INVALID_AUDIO, STORAGE_ERROR, TOO_LARGE, UPSTREAM_AUTH_FAILED, UPSTREAM_NOT_FOUND
from .settings import Settings

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
REQUESTS_PER_DOWNLOAD = 3
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 5
LOOPBACK_WORD = "loopback"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Headers that carry credentials: never sent on to another origin.
CREDENTIAL_HEADERS = ("Authorization", "Proxy-authorization", "Cookie")

# Resolves (host, port) to IP address strings; socket.getaddrinfo by default.
Resolver = Callable[[str, int], Iterable[str]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


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


# ---------------------------------------------------------------- gate 1: the URL and its host


def is_loopback_host(host: str) -> bool:
    """True for the hosts the word ``loopback`` allows: localhost, 127.0.0.0/8, ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_recording_url(url: str, allow_upstream: tuple[str, ...], *, resolver: Resolver | None = None) -> None:
    """Raise UrlNotAllowed unless the URL may be downloaded (CONTRACT 6).

    Without ``resolver`` only the URL is judged (what a PUT can know);
    with one, every address its host resolves to is judged as well.
    """
    scheme, host, port = _checked_target(url, allow_upstream)
    if resolver is not None:
        resolve_allowed(host, port, allow_upstream, resolver)


def _checked_target(url: str, allow_upstream: tuple[str, ...]) -> tuple[str, str, int]:
    """(scheme, host, port) of an allowed URL, as urllib will connect to it; else UrlNotAllowed."""
    if not isinstance(url, str) or not url:
        raise UrlNotAllowed("recording_url is not a valid URL")
    # Characters that parsers disagree on (browsers read "\" as "/", urllib
    # strips whitespace and unquotes the host) or that have no place in a URL.
    if any(not ("!" <= c <= "~") for c in url):
        raise UrlNotAllowed("recording_url must be printable ASCII without spaces")
    if "\\" in url or "<" in url or ">" in url:
        raise UrlNotAllowed("recording_url must not contain backslashes or angle brackets")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlNotAllowed("recording_url is not a valid URL") from None
    scheme = parts.scheme
    if scheme not in DEFAULT_PORTS:
        raise UrlNotAllowed(f"recording_url must use https, not {scheme or 'no'} scheme")
    if "@" in parts.netloc:
        raise UrlNotAllowed("recording_url must not carry credentials")
    if "%" in parts.netloc:
        raise UrlNotAllowed("recording_url host must not be percent-encoded or carry an IPv6 zone id")
    host = (parts.hostname or "").lower()
    if not host:
        raise UrlNotAllowed("recording_url has no host")
    port = port if port is not None else DEFAULT_PORTS[scheme]
    # What urllib itself would hand to http.client, split as http.client splits it.
    try:
        request = urllib.request.Request(url)
        connection = http.client.HTTPConnection(request.host)  # splits host and port; connects nowhere
    except (ValueError, http.client.InvalidURL):
        raise UrlNotAllowed("recording_url is not a valid URL") from None
    # Both fall back to the scheme's port when the URL names none (http.client's
    # stand-in default here is 80).
    split_port = parts.port if parts.port is not None else http.client.HTTP_PORT
    if request.type != scheme or connection.host.lower() != host or connection.port != split_port:
        raise UrlNotAllowed("recording_url is read differently by different URL parsers")
    judge_host(scheme, host, allow_upstream)
    return scheme, host, port


def judge_host(scheme: str, host: str, allow_upstream: tuple[str, ...]) -> None:
    """Raise UrlNotAllowed unless ``scheme://host`` may be fetched (CONTRACT 6, exact host match)."""
    host = host.lower()
    literal = _ip_literal(host)
    if literal is None and _looks_numeric(host):
        # 2130706433, 0x7f.1, 017700000001, 127.1: the C resolver reads these
        # as IPv4 addresses; only the plain dotted form is accepted.
        raise UrlNotAllowed(f"recording_url host {host!r} is not a plain IP address")
    loopback_allowed = LOOPBACK_WORD in allow_upstream and is_loopback_host(host)
    if scheme == "http" and not loopback_allowed:
        raise UrlNotAllowed("recording_url must use https")
    if scheme not in DEFAULT_PORTS:
        raise UrlNotAllowed("recording_url must use https")
    if loopback_allowed:
        return
    names, addresses = _allowlist(tuple(allow_upstream))
    if host in names or (literal is not None and literal in addresses):
        return
    raise UrlNotAllowed(f"recording_url host {host!r} is not in the allowed upstream hosts")


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally ("[::1]" or "::1" or "127.0.0.1"), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _looks_numeric(host: str) -> bool:
    # A name whose last label is a number is an IPv4 address to the resolver.
    last = host.rstrip(".").rpartition(".")[2]
    return last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:]))


@functools.lru_cache(maxsize=32)
def _allowlist(allow_upstream: tuple[str, ...]) -> tuple[frozenset[str], frozenset]:
    """The allowlist split into host names and IP literals (compared as addresses)."""
    names, addresses = set(), set()
    for entry in allow_upstream:
        entry = entry.strip().lower()
        literal = _ip_literal(entry)
        if literal is not None:
            addresses.add(literal)
        elif entry and entry != LOOPBACK_WORD:
            names.add(entry)
    return frozenset(names), frozenset(addresses)


# ---------------------------------------------------------------- gate 2: the addresses


def resolve_allowed(host: str, port: int, allow_upstream: tuple[str, ...],
                    resolver: Resolver | None = None) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` resolves to, each judged; UrlNotAllowed if any is refused.

    One refused address refuses the host: a name that answers both public
    and private addresses is not trusted with either.
    """
    literal = _ip_literal(host)
    if literal is not None:
        answers = [literal]
    else:
        answers = list((resolver or system_resolver)(host, port))
        if not answers:
            raise OSError(f"{host} has no address")
    addresses = []
    for answer in answers:
        address = answer if isinstance(answer, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else _parse_address(answer, host)
        judge_address(address, allow_upstream, host=host)
        addresses.append(address)
    return addresses


def _parse_address(text: str, host: str):
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise UrlNotAllowed(f"recording_url host {host!r} resolves to {text!r}, which is not an IP address") from None


def judge_address(address, allow_upstream: tuple[str, ...], *, host: str = "") -> None:
    """Raise UrlNotAllowed unless a connection to ``address`` is allowed."""
    if getattr(address, "scope_id", None):
        raise UrlNotAllowed(f"recording_url host {host!r} resolves to {address}, a scoped IPv6 address")
    plain = address.ipv4_mapped if address.version == 6 and address.ipv4_mapped else address
    if LOOPBACK_WORD in allow_upstream and plain.is_loopback:
        return
    listed_addresses = _allowlist(tuple(allow_upstream))[1]
    if address in listed_addresses or plain in listed_addresses:
        return
    if not is_public_address(address):
        raise UrlNotAllowed(f"recording_url host {host!r} resolves to {address}, which is not a public address")


def is_public_address(address) -> bool:
    """True for an address on the public internet; False for anything local or special."""
    if address.version == 6:
        embedded = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(inner is not None and not is_public_address(inner) for inner in embedded):
            return False
        if address.ipv4_mapped is not None:
            return True  # judged by the IPv4 address it wraps
    if address.version == 4 and address in _CGNAT:
        return False
    return address.is_global and not (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified)


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the operating system resolves ``host`` to, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for *_, sockaddr in infos:
        seen.setdefault(sockaddr[0], None)
    return list(seen)


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
        self._watchdog = threading.Timer(timeout, self._expire)
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

    def _expire(self) -> None:
        with self._sockets_lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def resolve(self, host: str, port: int) -> list:
        """``resolve_allowed`` within the time left (getaddrinfo itself has no timeout)."""
        if _ip_literal(host) is not None:
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
    def __init__(self, fetch: _Fetch, context: ssl.SSLContext):
        super().__init__(context=context)
        self._fetch = fetch

    def https_open(self, req):
        return self.do_open(functools.partial(_CheckedHTTPSConnection, fetch=self._fetch), req,
                            context=self._context)


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

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, backoff: float | None = None,
                 resolver: Resolver | None = None, ssl_context: ssl.SSLContext | None = None,
                 requests_per_download: int = REQUESTS_PER_DOWNLOAD):
        self.settings = settings
        self._sleep = sleep
        self._monotonic = monotonic
        self.resolver = resolver
        self.ssl_context = ssl_context if ssl_context is not None else ssl.create_default_context()
        self.requests_per_download = requests_per_download
        # 1 s then 2 s between requests; scaled down with short download
        # timeouts so that short test timings stay short.
        self.backoff = backoff if backoff is not None else min(1.0, settings.download_timeout / 30)

    def download(self, url: str, dest: BinaryIO, headers: dict[str, str] | None = None) -> Downloaded:
        try:
            check_recording_url(url, self.settings.allow_upstream)
        except UrlNotAllowed as exc:
            raise DownloadFailed(DOWNLOAD_FAILED, str(exc)) from None
        last_error = "no request made"
        for attempt in range(self.requests_per_download):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
                dest.seek(0)
                dest.truncate()
            try:
                return self._request(url, dest, headers or {})
            except _Retryable as exc:
                last_error = str(exc)
                log.info("download of %s failed (%s), request %d/%d", _loggable(url), exc,
                         attempt + 1, self.requests_per_download)
        raise DownloadFailed(DOWNLOAD_FAILED, f"{last_error} (after {self.requests_per_download} requests)")

    def _opener(self, fetch: _Fetch) -> urllib.request.OpenerDirector:
        """A fresh opener per request: its handlers carry that request's deadline."""
        opener = urllib.request.OpenerDirector()
        for handler in (_CheckedHTTPHandler(fetch), _CheckedHTTPSHandler(fetch, self.ssl_context),
                        urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor(),
                        _CheckedRedirects(self.settings.allow_upstream), _RefuseOtherSchemes()):
            opener.add_handler(handler)
        return opener

    def _request(self, url: str, dest: BinaryIO, headers: dict[str, str]) -> Downloaded:
        timeout = self.settings.download_timeout
        too_slow = f"download took longer than {timeout:g}s"
        request = urllib.request.Request(url, headers={"User-Agent": "recsvc", **headers})
        with _Fetch(self.settings.allow_upstream, self.resolver, timeout, self._monotonic) as fetch:
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
