"""HTTP/1.1 transport: sockets in, ``Request`` objects to the app, ``Response`` bytes out.

Theory of operation
-------------------
The application is one plain callable, ``app(request) -> Response``. This
module owns everything between that callable and the socket, and decides
nothing about recordings. It has two halves:

- **Pure protocol** (no sockets, h11-style): ``parse_request_line``,
  ``parse_header_line``, ``body_length``, ``wants_keep_alive`` and
  ``render_response`` turn bytes into values and values into bytes. Every
  refusal is a ``RequestError`` that carries the status it implies, so the
  caller only renders it (CONTRACT 6, "HTTP hygiene").
- **Connection loop** (``_Connection``): one thread per accepted socket,
  cycling through these states until one of them says *close*::

      IDLE   -- first byte of a request -->  HEAD
      HEAD   -- blank line -->               BODY   (Content-Length bytes)
      BODY   -- all bytes read -->           APP    (the app may take seconds)
      APP    -- Response -->                 WRITE
      WRITE  -- keep-alive -->               IDLE
      any    -- error, timeout, close -->    CLOSED

  IDLE and HEAD share ONE deadline of ``idle_timeout`` seconds, started
  when the previous response was written (or the socket accepted). Each
  ``recv`` waits only for the time left, so a client trickling one byte a
  second is closed at the deadline just like a silent one. A connection
  closed by that deadline gets no answer if nothing of a new request
  arrived, else 408. BODY has a deadline of its own of the same length.

Every error the transport itself answers is JSON (``json_error``) and closes
the connection; so does a GET/HEAD/DELETE/OPTIONS that carried a body, so
leftover bytes are never run as a second request. Closing is "lingering":
shut down our side, drain what the client still sends for a moment, then
close, so the kernel does not reset the connection under the answer.

``HTTPServer`` accepts, counts connections against ``max_connections`` (the
next one gets a 503 from the accepting thread itself, without a handler
thread) and logs one access line per request on ``recsvc.access``.
"""

from __future__ import annotations

import email.utils
import http
import json
import logging
import re
import select
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable

__all__ = [
    "HTTPServer",
    "Request",
    "Response",
    "FileBody",
    "json_error",
    "RequestError",
    "parse_request_line",
    "parse_header_line",
    "body_length",
    "wants_keep_alive",
    "render_response",
    "send_file",
]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("recsvc.access")

# CONTRACT 6: the limits of one request.
MAX_LINE_BYTES = 8192  # request line and each header line, without CRLF
MAX_HEADER_LINES = 100  # 100 are fine, 101 are not
MAX_BODY_BYTES = 65536
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # the others close if sent one

_SMALL_BODY_BYTES = 65536  # a bytes body up to this goes out in the head's send
_CHUNK_BYTES = 65536
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_STR = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_ORIGIN_FORM = re.compile(rb"/[\x21-\x7e]*")  # visible ASCII only
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB
_BAD_VALUE_STR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# Status line reasons, looked up once (an HTTPStatus(...) call per response
# showed in the profile of the 202 poll).
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


class _DateHeader:
    """The Date value of this second: formatting it per response cost ~3% of the 202 poll's CPU."""

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
    target: str  # the raw request-target
    path: str  # raw path before '?', not percent-decoded (CONTRACT 3, row 2)
    query: str = ""  # raw query after '?', '' if none
    version: str = "HTTP/1.1"
    # repr=False: a Request in a log line must not leak Authorization.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    body: bytes = field(default=b"", repr=False)
    client_address: tuple = ("127.0.0.1", 0)
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


def json_error(status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = (), **extra) -> Response:
    """An error answer: ``{"error": code, "message": message, **extra}`` (CONTRACT 3)."""
    body = json.dumps({"error": code, "message": message, **extra}).encode()
    return Response(status, [("Content-Type", "application/json"), *headers], body)


class RequestError(Exception):
    """A request the transport refuses; it knows its status and JSON code."""

    def __init__(self, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = tuple(headers)

    def response(self) -> Response:
        response = json_error(self.status, self.code, self.message, self.headers)
        response.close = True  # CONTRACT 6: a refused request ends its connection
        return response


def _bad_request(message: str) -> RequestError:
    return RequestError(400, "bad_request", message)


# ---------------------------------------------------------------- pure protocol


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
        raise RequestError(505, "http_version_not_supported", "Only HTTP/1.0 and HTTP/1.1 are supported.")
    if not _ORIGIN_FORM.fullmatch(target):
        raise _bad_request("The request target must be a path starting with '/', in visible ASCII.")
    if method.decode("ascii") not in METHODS:  # 405 for known methods is the app's job
        raise RequestError(501, "not_implemented", "The request method is not implemented.")
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


def body_length(method: str, headers: Iterable[tuple[str, str]]) -> int:
    """The request body's length from its framing headers (CONTRACT 6)."""
    lengths = []
    for name, value in headers:
        if name == "transfer-encoding":
            raise RequestError(400, "unsupported_transfer_encoding", "Transfer-Encoding is not accepted on requests; send Content-Length.")
        if name == "content-length":
            lengths.append(value)
    if not lengths:
        if method in METHODS_WITH_BODY:
            raise RequestError(411, "length_required", "This request needs a Content-Length header.")
        return 0
    if len(lengths) > 1:  # even equal values: two framings are one too many
        raise RequestError(400, "bad_content_length", "Content-Length was given more than once.")
    value = lengths[0]
    if not (value.isascii() and value.isdigit()):
        raise RequestError(400, "bad_content_length", "Content-Length must be a non-negative integer.")
    if len(value.lstrip("0")) > 12 or int(value) > MAX_BODY_BYTES:
        raise RequestError(413, "body_too_large", f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    return int(value)


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    return {token.strip().lower() for name, value in headers if name == "connection" for token in value.split(",")}


def wants_keep_alive(version: str, headers: Iterable[tuple[str, str]]) -> bool:
    """HTTP/1.1 stays open unless ``close``; HTTP/1.0 only with ``keep-alive``."""
    tokens = _connection_tokens(headers)
    if "close" in tokens:
        return False
    return version == "HTTP/1.1" or "keep-alive" in tokens


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


def _close_body(body: bytes | FileBody | None) -> None:
    if isinstance(body, FileBody):
        try:
            body.file.close()
        except Exception:
            logger.warning("could not close a response file", exc_info=True)


# ---------------------------------------------------------------- sockets


class _Timeout(Exception):
    """The connection's deadline passed while reading."""


class _PeerClosed(Exception):
    """The client closed its side before a whole request arrived."""


class _Reader:
    """A receive buffer over one socket; every read waits only for the time left."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already searched for LF
        self._received = 0  # bytes ever received
        self._mark = 0

    def mark(self) -> None:
        """Start counting bytes for a new request (buffered ones included)."""
        self._mark = self._received - len(self._buffer)

    @property
    def received_since_mark(self) -> bool:
        return self._received > self._mark

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout()
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(_CHUNK_BYTES)
        except TimeoutError:
            raise _Timeout() from None
        if not data:
            raise _PeerClosed()
        self._received += len(data)
        self._buffer += data

    def read_line(self, deadline: float, too_long: RequestError) -> bytes:
        """One line without its CRLF (a bare LF is accepted too)."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scanned = 0
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > MAX_LINE_BYTES:
                    raise too_long
                return line
            self._scanned = len(self._buffer)
            if len(self._buffer) > MAX_LINE_BYTES + 1:  # +1: room for a CR awaiting its LF
                raise too_long
            self._fill(deadline)

    def read_exact(self, count: int, deadline: float) -> bytes:
        while len(self._buffer) < count:
            self._fill(deadline)
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        self._scanned = 0
        return data


def _peer_gone(sock: socket.socket) -> bool:
    """Non-blocking: has the client closed or reset? (select + MSG_PEEK)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):  # reset, or the socket is already closed
        return True


def _copy_file(sock: socket.socket, file: BinaryIO, position: int, count: int) -> int:
    """Plain read-and-write, for when sendfile is unavailable or failed."""
    file.seek(position)
    sent = 0
    while sent < count:
        chunk = file.read(min(_CHUNK_BYTES, count - sent))
        if not chunk:
            break
        sock.sendall(chunk)
        sent += len(chunk)
    return sent


def send_file(sock: socket.socket, body: FileBody) -> int:
    """Send ``body`` with ``socket.sendfile`` (CONTRACT 5), falling back to copying.

    Returns the bytes sent; fewer than ``body.count`` means the file was
    shorter than promised. Client disconnects propagate.
    """
    if body.count == 0:  # sendfile's count=0 would mean "to the end of the file"
        return 0
    try:
        return sock.sendfile(body.file, body.offset, body.count)
    except (ConnectionError, TimeoutError):
        raise
    except (OSError, ValueError, AttributeError, NotImplementedError) as exc:
        # socket.sendfile leaves the file position after the last byte sent.
        sent = max(0, min(body.file.tell() - body.offset, body.count))
        logger.debug("sendfile failed after %d bytes (%s); copying the rest", sent, exc)
        return sent + _copy_file(sock, body.file, body.offset + sent, body.count - sent)


def _close_gracefully(sock: socket.socket, linger: float) -> None:
    """Shut our side, drain briefly, close: the client reads our answer, not a reset."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + linger
        drained = 0
        while drained < _LINGER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            data = sock.recv(_CHUNK_BYTES)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
    finally:
        sock.close()


class _Connection:
    """Serves the requests of one socket, in order, on the calling thread."""

    def __init__(self, server: HTTPServer, sock: socket.socket, client_address: tuple):
        self.server = server
        self.sock = sock
        self.client_address = client_address
        self.reader = _Reader(sock)
        self.current = ("-", "-")  # method and path of the request being read, for the log

    def serve(self) -> None:
        try:
            while self._serve_one():
                pass
        except (ConnectionError, TimeoutError) as exc:
            # CONTRACT 6: a client that leaves costs one line, not a traceback.
            method, path = self.current
            logger.info("client %s disconnected during %s %s: %s", self.client_address[0], method, path, exc.__class__.__name__)
            self.sock.close()
        finally:
            if self.sock.fileno() >= 0:
                _close_gracefully(self.sock, min(self.server.idle_timeout, _LINGER_SECONDS))

    def _serve_one(self) -> bool:
        """Read, answer and write one request; False when the connection ends."""
        deadline = time.monotonic() + self.server.idle_timeout
        self.reader.mark()
        self.current = ("-", "-")
        try:
            request, keep_alive = self._read_request(deadline)
        except _Timeout:
            if self.reader.received_since_mark:
                self._answer_error(RequestError(408, "request_timeout", "The request was not received in time."))
            return False
        except _PeerClosed:
            if self.reader.received_since_mark:
                logger.info("client %s closed the connection mid-request", self.client_address[0])
            return False
        except RequestError as error:
            self._answer_error(error)
            return False
        started = time.monotonic()
        response = None
        try:
            try:
                response = self.server.app(request)
                if not isinstance(response, Response):
                    raise TypeError(f"the app returned {type(response).__name__}, not Response")
                head, body, keep_alive = render_response(response, request.method, request.version, keep_alive)
            except Exception:
                # A bug in the app: one line with its traceback, and a 500 without one.
                logger.exception("the app failed on %s %s", request.method, request.path)
                _close_body(getattr(response, "body", None))
                response = json_error(500, "internal_error", "Internal server error.")
                response.close = True
                head, body, keep_alive = render_response(response, request.method, request.version, False)
            sent, complete = self._write(head, body)
        finally:
            # The transport owns the file from here, sent or not (HEAD, 204, 304, errors).
            _close_body(getattr(response, "body", None))
        self._log_access(request.method, request.path, response.status, sent, started)
        return keep_alive and complete

    def _read_request(self, deadline: float) -> tuple[Request, bool]:
        reader = self.reader
        line = b""
        while not line:  # RFC 9112 2.2: empty lines before a request line are ignored
            line = reader.read_line(deadline, RequestError(414, "uri_too_long", f"The request line is longer than {MAX_LINE_BYTES} bytes."))
        method, target, version = parse_request_line(line)
        path, _, query = target.partition("?")
        self.current = (method, path)
        header_too_large = RequestError(431, "header_too_large", f"Header lines are limited to {MAX_LINE_BYTES} bytes each and {MAX_HEADER_LINES} in all.")
        headers = []
        while True:
            line = reader.read_line(deadline, header_too_large)
            if not line:
                break
            if len(headers) == MAX_HEADER_LINES:
                raise header_too_large
            headers.append(parse_header_line(line))
        length = body_length(method, headers)
        # A body on a method without one: answer, then close, so bytes that
        # follow are never taken for a second request (CONTRACT 6).
        keep_alive = wants_keep_alive(version, headers) and (length == 0 or method in METHODS_WITH_BODY)
        body = b""
        if length:
            expect = next((v for n, v in headers if n == "expect"), "")
            if version == "HTTP/1.1" and expect.lower() == "100-continue" and reader.buffered < length:
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = reader.read_exact(length, time.monotonic() + self.server.idle_timeout)
        sock = self.sock
        request = Request(
            method=method,
            target=target,
            path=path,
            query=query,
            version=version,
            headers=tuple(headers),
            body=body,
            client_address=self.client_address,
            client_gone=lambda: _peer_gone(sock),
        )
        return request, keep_alive

    def _answer_error(self, error: RequestError) -> None:
        started = time.monotonic()
        method = "HEAD" if self.current[0] == "HEAD" else "GET"  # a HEAD never gets a body
        head, body, _ = render_response(error.response(), method, "HTTP/1.1", False)
        sent, _ = self._write(head, body)
        self._log_access(*self.current, error.status, sent, started)

    def _write(self, head: bytes, body: bytes | FileBody | None) -> tuple[int, bool]:
        """Send one response; (body bytes sent, whether the body was complete)."""
        sock = self.sock
        sock.settimeout(self.server.idle_timeout)  # per send: a reader that stalls is dropped
        if body is None:
            sock.sendall(head)
            return 0, True
        if not isinstance(body, FileBody):
            if len(body) <= _SMALL_BODY_BYTES:
                sock.sendall(head + body)
            else:
                sock.sendall(head)
                view = memoryview(body)
                for start in range(0, len(view), _CHUNK_BYTES):
                    sock.sendall(view[start : start + _CHUNK_BYTES])
            return len(body), True
        sock.sendall(head)
        sent = send_file(sock, body)
        if sent < body.count:  # the file was shorter than promised: the framing is broken
            logger.error("response file ended after %d of %d bytes; closing the connection", sent, body.count)
            return sent, False
        return sent, True

    def _log_access(self, method: str, path: str, status: int, sent: int, started: float) -> None:
        # CONTRACT 6: the path only; a query may hold a link signature. No header values.
        if self.server.access_log:
            access_logger.info("%s %s %s %d %d %.1fms", self.client_address[0], method, path, status, sent, (time.monotonic() - started) * 1000)


class HTTPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A threading HTTP/1.1 server for one app callable (CONTRACT 2, 6)."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not hold up server_close
    # The listen backlog. 128 is the floor the contract names, but a burst of
    # a few hundred connects overflows exactly 128 before the accept loop
    # catches up, and the SYN-cookie fallback then resets some of them; the
    # kernel caps this at net.core.somaxconn.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], app: Callable[[Request], Response], *, idle_timeout: float = 15, max_connections: int = 256, access_log: bool = True):
        if not idle_timeout > 0:
            raise ValueError("idle_timeout must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.app = app
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.access_log = access_log
        self._connections_lock = threading.Lock()  # guards _connections and _open_sockets
        self._connections = 0
        self._open_sockets: set[socket.socket] = set()
        self._refused = 0  # refusals not yet logged; the accepting thread alone touches these
        self._refused_logged_at = -float("inf")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, None)

    @property
    def connections(self) -> int:
        """Connections being served right now."""
        with self._connections_lock:
            return self._connections

    def get_request(self):
        sock, client_address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, client_address

    def process_request(self, request, client_address):
        with self._connections_lock:
            admitted = self._connections < self.max_connections
            if admitted:
                self._connections += 1
                self._open_sockets.add(request)
        if not admitted:
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, sock: socket.socket) -> None:
        with self._connections_lock:
            self._connections -= 1
            self._open_sockets.discard(sock)

    def server_close(self):
        """Stop listening, and end connections as soon as they are idle.

        Shutting the read side wakes a connection waiting for a request (it
        ends at once) and lets one in the middle of an answer finish writing
        it; ``client_gone`` turns True, so held requests answer early.
        """
        super().server_close()
        with self._connections_lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def _refuse(self, sock: socket.socket, client_address: tuple) -> None:
        """CONTRACT 2 --max-connections: a 503 from the accepting thread, then close."""
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= 1.0:  # an overload must not become a log flood
            logger.warning("refused %d connection(s) with 503: all %d connection slots are in use", self._refused, self.max_connections)
            self._refused = 0
            self._refused_logged_at = now
        response = json_error(503, "too_many_connections", "Too many connections; try again shortly.", [("Retry-After", "1")])
        head, body, _ = render_response(response, "GET", "HTTP/1.1", False)
        try:
            sock.setblocking(False)  # never let one client stall the accept loop
            sock.send(head + body)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(_CHUNK_BYTES):  # drain what already arrived, so close sends no reset
                pass
        except OSError:
            pass
        finally:
            sock.close()

    def finish_request(self, request, client_address):
        _Connection(self, request, client_address).serve()

    def shutdown_request(self, request):
        self.close_request(request)  # _Connection already shut down and drained

    def handle_error(self, request, client_address):
        # Never socketserver's traceback on stderr (CONTRACT 6).
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            logger.info("client %s disconnected: %s", client_address[0], exc.__class__.__name__)
        else:
            logger.error("unexpected error serving %s", client_address[0], exc_info=True)
