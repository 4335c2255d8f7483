"""HTTP/1.1 protocol without sockets: request heads in, values out; ``Response`` values in, bytes out.

Theory of operation
-------------------
This is the pure half of the transport, in the manner of h11: nothing here
reads or writes a socket or starts a thread (``recsvc.http.server`` does that).
It holds the values that cross between the transport and the app,
``app(request) -> Response``, and the rules that turn bytes into them and
back:

- ``Request``, ``Response`` and ``FileBody`` are what the app receives and
  returns; ``json_error`` builds every JSON error answer (CONTRACT 3).
- ``RequestHead`` reads a request head within the limits of CONTRACT 6
  (``MAX_LINE_BYTES``, ``MAX_HEADER_LINES``), line by line as the bytes
  arrive, or at once when ``head_end`` finds the whole head already
  received (the common case; one pattern then checks every header line).
  ``wants_keep_alive`` reads its Connection header; the body's framing is
  ``recsvc.http.framing``'s. ``request_target`` applies RFC 9112 3.2 (one
  Host on HTTP/1.1; an absolute-form target is served by its path, its
  authority taking the place of Host). Every refusal is a ``RequestError``
  that carries the status and code it implies, so the caller only renders
  ``error.response()`` (CONTRACT 6, "HTTP hygiene").
- ``render_response`` turns a ``Response`` into head bytes and the body to
  send, framed by Content-Length only, and refuses (ValueError/TypeError)
  one that cannot be sent truthfully. It adds ``Date`` and ``Server`` unless
  the app set them; the Date value is formatted once per second, which is
  the only clock this module reads.
"""

from __future__ import annotations

import email.utils
import http
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable

from .answers import meaning
from .proxies import ForwardedView

__all__ = [
    "Request",
    "Response",
    "FileBody",
    "json_error",
    "RequestError",
    "parse_request_line",
    "parse_header_line",
    "RequestHead",
    "head_end",
    "request_target",
    "wants_keep_alive",
    "render_response",
    "MAX_LINE_BYTES",
    "MAX_HEADER_LINES",
    "MAX_BODY_BYTES",
    "METHODS",
    "METHODS_WITH_BODY",
]

# CONTRACT 6: the limits of one request.
MAX_LINE_BYTES = 8192  # request line and each header line, without CRLF
MAX_HEADER_LINES = 100  # 100 are fine, 101 are not
MAX_BODY_BYTES = 65536
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # the others close if sent one

_TOKEN_CHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN = re.compile(_TOKEN_CHARS.encode("ascii"))
_TOKEN_STR = re.compile(_TOKEN_CHARS)
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_ORIGIN_FORM = re.compile(rb"/[\x21-\x7e]*")  # visible ASCII only
# RFC 9112 3.2.2: an http(s) URI with a host (no userinfo), then a path and/or query, or neither.
_AUTHORITY_CHARS = r"[A-Za-z0-9\-._~!$&'()*+,;=:%\[\]]"
_ABSOLUTE_FORM = re.compile(rf"(?i:https?)://({_AUTHORITY_CHARS}+)([/?][\x21-\x7e]*)?".encode("ascii"))
_HOST_VALUE = re.compile(f"{_AUTHORITY_CHARS}*")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB
_BAD_VALUE_STR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# A whole head (request line to blank line, decoded as latin-1) with nothing to refuse
# in it: what parse_request_line and parse_header_line accept, spelled as patterns. No
# repeat can end where the next one starts (values hold no CR or LF), so a failing
# match backtracks linearly, never quadratically. A head they do not match is read
# line by line for its exact refusal.
_VALUE_CHARS = r"[\t\x20-\x7e\x80-\xff]*"  # no CTL but HTAB
_SIMPLE_HEAD = re.compile(rf"({_TOKEN_CHARS}) (/[\x21-\x7e]*) (HTTP/1\.[01])\r?\n"  # request line
                          rf"((?:{_TOKEN_CHARS}:{_VALUE_CHARS}\r?\n)*)\r?\n")  # header lines, blank line
_HEADER_FIELD = re.compile(rf"({_TOKEN_CHARS}):({_VALUE_CHARS})\r?\n")


# Status line reasons, looked up once (an HTTPStatus(...) call per response
# showed in the profile of the 202 poll).
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


class _DateHeader:
    """The Date value of this second, formatted once per second rather than per response (the 202 poll's CPU)."""

    def __init__(self):
        self._lock = threading.Lock()  # guards _second and _value
        self._second = -1
        self._value = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        with self._lock:
            if second != self._second:
                self._second, self._value = second, email.utils.formatdate(second, usegmt=True)
            return self._value


_http_date = _DateHeader()


def _never_gone() -> bool:
    return False


@dataclass(frozen=True)
class Request:
    """One parsed request, as the app sees it. Nothing in it is decoded."""

    method: str  # as sent: methods are case-sensitive
    target: str  # the raw request-target, in origin form (an absolute-form one is cut to its path and query)
    path: str  # raw path before '?', not percent-decoded (CONTRACT 3, row 2)
    query: str = ""  # raw query after '?', '' if none
    version: str = "HTTP/1.1"
    # repr=False: a Request in a log line must not leak Authorization.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    body: bytes = field(default=b"", repr=False)
    client_address: tuple = ("127.0.0.1", 0)
    # What a --trusted-proxies peer said about the client (recsvc.http.proxies); None from anyone else.
    forwarded: ForwardedView | None = field(default=None, repr=False)
    # True once the peer closed or reset; a held request (CONTRACT 5b) polls it.
    client_gone: Callable[[], bool] = field(default=_never_gone, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class FileBody:
    """``count`` bytes of ``file`` from ``offset``, sent with ``socket.sendfile``.

    The transport closes ``file`` once the response is sent (or abandoned).
    """

    file: BinaryIO
    offset: int
    count: int


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | FileBody = b""
    close: bool = False  # close the connection after this response


def json_error(code: str, message: str | None = None, headers: Iterable[tuple[str, str]] = (), **extra) -> Response:
    """An error answer: ``{"error": code, "message": message, **extra}`` (CONTRACT 3), with the
    status, default message and headers the table of answers (``recsvc.http.answers``) gives ``code``."""
    row = meaning(code)
    body = json.dumps({"error": code, "message": message or row.message, **extra}).encode()
    return Response(row.status, [("Content-Type", "application/json"), *row.headers, *headers], body)


class RequestError(Exception):
    """A request the transport refuses; its code names its status (``recsvc.http.answers``)."""

    def __init__(self, code: str, message: str | None = None, headers: Iterable[tuple[str, str]] = ()):
        row = meaning(code)
        super().__init__(message or row.message)
        self.status = row.status
        self.code = code
        self.message = message or row.message
        self.headers = tuple(headers)

    def response(self) -> Response:
        response = json_error(self.code, self.message, self.headers)
        response.close = True  # CONTRACT 6: a refused request ends its connection
        return response


def _bad_request(message: str) -> RequestError:
    return RequestError("bad_request", message)


def _header_too_large() -> RequestError:
    return RequestError("header_too_large",
                        f"Header lines are limited to {MAX_LINE_BYTES} bytes each and {MAX_HEADER_LINES} in all.")


# ---------------------------------------------------------------- request heads


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """``METHOD SP target SP HTTP/1.x`` -> (method, target, version)."""
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise _bad_request("The request line must be 'METHOD /path HTTP/1.1'.")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise _bad_request("The request method is not a valid token.")
    if not _VERSION.fullmatch(version):
        raise _bad_request("The request line must end with an HTTP version such as HTTP/1.1.")
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise RequestError("http_version_not_supported")
    if method.decode("ascii") not in METHODS:  # 405 for known methods is the app's job
        raise RequestError("not_implemented")
    if not (_ORIGIN_FORM.fullmatch(target) or _ABSOLUTE_FORM.fullmatch(target)):
        raise _bad_request("The request target must be a path starting with '/' (or an http URL), in visible ASCII.")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def parse_header_line(line: bytes) -> tuple[str, str]:
    """``name: value`` -> (lower-cased name, value without surrounding blanks)."""
    if line[:1] in (b" ", b"\t"):
        raise _bad_request("Folded header lines (obs-fold) are not accepted.")
    name, colon, value = line.partition(b":")
    if not colon:
        raise _bad_request("A header line has no colon.")
    if not _TOKEN.fullmatch(name):  # also refuses whitespace before the colon
        raise _bad_request("A header name is not a valid token.")
    value = value.strip(b" \t")
    if _BAD_VALUE.search(value):
        raise _bad_request("A header value contains control characters.")
    return name.decode("ascii").lower(), value.decode("latin-1")


def head_end(received: bytes | bytearray) -> int:
    """The offset just past the blank line ending the head that ``received`` starts with, or -1.

    -1 also when ``received`` starts with an empty line (RFC 9112 2.2 lets a
    client send some before a request): ``RequestHead.feed_line`` skips those.
    A bare LF ends a line as CRLF does.
    """
    if received[:1] in (b"\r", b"\n", b""):
        return -1
    crlf = received.find(b"\n\r\n")
    lf = received.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


class RequestHead:
    """One request head, read within the limits of CONTRACT 6 (h11-style: bytes in, values out).

    Feed it line by line as lines arrive (``feed_line``), or whole once
    ``head_end`` found it all received (``feed_head``): both take the same
    bytes to the same values and refusals, in the same order, so a bad request
    line is refused before anything about its headers.
    """

    def __init__(self):
        self.request_line: tuple[str, str, str] | None = None  # method, target, version
        self.headers: list[tuple[str, str]] = []  # (lower-cased name, value) in order

    def too_long(self) -> RequestError:
        """The refusal of a line over MAX_LINE_BYTES: 414 for the request line, 431 for a header line."""
        if self.request_line is None:
            return RequestError("uri_too_long", f"The request line is longer than {MAX_LINE_BYTES} bytes.")
        return _header_too_large()

    def feed_line(self, line: bytes) -> bool:
        """One line without its CRLF or LF; True once it was the blank line that ends the head."""
        if len(line) > MAX_LINE_BYTES:
            raise self.too_long()
        if self.request_line is None:
            if line:  # RFC 9112 2.2: empty lines before a request line are ignored
                self.request_line = parse_request_line(line)
            return False
        if not line:
            return True
        if len(self.headers) == MAX_HEADER_LINES:
            raise _header_too_large()
        self.headers.append(parse_header_line(line))
        return False

    def feed_head(self, head: bytes) -> None:
        """A whole head as ``head_end`` delimits it: request line to blank line, each line ending in LF."""
        simple = _SIMPLE_HEAD.fullmatch(head.decode("latin-1")) if len(head) <= MAX_LINE_BYTES else None
        if simple is not None and simple[1] in METHODS:  # no line can be too long: the head is not
            fields = _HEADER_FIELD.findall(simple[4])
            if len(fields) <= MAX_HEADER_LINES:
                self.request_line = simple.group(1, 2, 3)
                self.headers = [(name.lower(), value.strip(" \t")) for name, value in fields]
                return
        for line in head.split(b"\n"):  # the exact refusal, or a head longer than one line may be
            if self.feed_line(line[:-1] if line.endswith(b"\r") else line):
                return
        raise ValueError("feed_head takes a whole head, through its blank line")


def request_target(target: str, version: str, headers: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """RFC 9112 3.2: (origin-form target, headers) of a parsed request line and head.

    An HTTP/1.1 request needs exactly one Host (400 without, or with more);
    its value must be a host[:port]. An absolute-form target
    (``http://host/path?q``, which proxies may send) is served by its path
    and query, and its authority replaces the Host header (3.2.2).
    """
    hosts = [value for name, value in headers if name == "host"]
    if len(hosts) > 1:
        raise _bad_request("A request must carry one Host header, not several.")
    if not hosts and version == "HTTP/1.1":
        raise _bad_request("An HTTP/1.1 request must carry a Host header.")
    if hosts and not _HOST_VALUE.fullmatch(hosts[0]):
        raise _bad_request("The Host header must be a host name or address, with an optional port.")
    if target[:1] == "/":
        return target, headers
    absolute = _ABSOLUTE_FORM.fullmatch(target.encode("ascii"))
    authority, rest = absolute[1].decode("ascii"), (absolute[2] or b"").decode("ascii")
    origin = rest if rest[:1] == "/" else "/" + rest
    return origin, [(name, value) for name, value in headers if name != "host"] + [("host", authority)]


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    return {token.strip().lower() for name, value in headers if name == "connection" for token in value.split(",")}


def wants_keep_alive(version: str, headers: Iterable[tuple[str, str]]) -> bool:
    """HTTP/1.1 stays open unless ``close``; HTTP/1.0 only with ``keep-alive``."""
    tokens = _connection_tokens(headers)
    if "close" in tokens:
        return False
    return version == "HTTP/1.1" or "keep-alive" in tokens

# ---------------------------------------------------------------- responses


def render_response(response: Response, method: str, version: str, keep_alive: bool) -> tuple[bytes, bytes | FileBody | None, bool]:
    """Response -> (head bytes, body to send or None, keep_alive).

    Raises ValueError/TypeError for a response that cannot be sent truthfully
    (bad status, header injection, a Content-Length that lies about the body);
    the caller treats that as an application bug.
    """
    status = response.status
    if not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"response status {status!r} is not a final status")
    body = response.body
    if isinstance(body, (bytes, bytearray)):
        size = len(body)
    elif isinstance(body, FileBody):
        if body.offset < 0 or body.count < 0:
            raise ValueError("FileBody offset and count must not be negative")
        size = body.count
    else:
        raise TypeError(f"response body must be bytes or FileBody, not {type(body).__name__}")
    reason = _REASONS.get(status, "")
    lines = [f"HTTP/1.1 {status} {reason}"]
    names = set()
    declared_length = None
    keep_alive = keep_alive and not response.close
    for name, value in response.headers:
        if not _TOKEN_STR.fullmatch(name) or _BAD_VALUE_STR.search(value):
            raise ValueError(f"response header {name!r} is not a valid header")
        lower = name.lower()
        if lower == "connection":  # the transport owns Connection; it honours "close"
            keep_alive = keep_alive and "close" not in _connection_tokens([("connection", value)])
            continue
        if lower == "transfer-encoding":
            raise ValueError("the transport frames bodies with Content-Length only")
        if lower == "content-length":
            if declared_length is not None or not (value.isascii() and value.isdigit()):
                raise ValueError(f"response Content-Length {value!r} is invalid or repeated")
            declared_length = int(value)
        names.add(lower)
        lines.append(f"{name}: {value}")
    has_no_body = status in (204, 304)
    if not has_no_body:
        if declared_length is None:
            lines.append(f"Content-Length: {size}")  # HEAD: what GET would send
        elif method != "HEAD" and declared_length != size:
            raise ValueError(f"response Content-Length {declared_length} but the body has {size} bytes")
    if "date" not in names:
        lines.append(f"Date: {_http_date()}")
    if "server" not in names:
        lines.append("Server: recsvc")
    if not keep_alive:
        lines.append("Connection: close")
    elif version == "HTTP/1.0":
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if has_no_body or method == "HEAD" or size == 0:
        return head, None, keep_alive
    return head, body, keep_alive
