"""HTTP/1.1 transport: the sockets and threads between a listening port and the app callable.

Theory of operation
-------------------
The application is one plain callable, ``app(request) -> Response``. This
module owns the sockets and threads between that callable and the network,
and decides nothing about recordings. Turning bytes into values and values
into bytes is pure and lives in ``recsvc.http.protocol`` (h11-style, no
sockets there): parsing a request head, rendering a response, and every
refusal as a ``RequestError`` that carries its status (CONTRACT 6, "HTTP
hygiene").

``_Connection`` serves one accepted socket on one thread, cycling through
these states until one of them says *close*::

    IDLE   -- first byte of a request -->  HEAD
    HEAD   -- blank line -->               BODY   (Content-Length bytes, or chunks)
    BODY   -- all bytes read -->           APP    (the app may take seconds)
    APP    -- Response -->                 WRITE
    WRITE  -- keep-alive -->               IDLE
    any    -- error, timeout, close -->    CLOSED

IDLE and HEAD share ONE deadline of ``idle_timeout`` seconds, started when
the previous response was written (or the socket accepted). Each ``recv``
waits only for the time left, so a client trickling one byte a second is
closed at the deadline just like a silent one. A connection closed by that
deadline gets no answer if nothing of a new request arrived, else 408. BODY
has a deadline of its own of the same length.

Every error the transport itself answers is JSON (``json_error``) and closes
the connection; so does a GET/HEAD/DELETE/OPTIONS that carried a body, so
leftover bytes are never run as a second request. Closing is "lingering":
shut down our side, drain what the client still sends for a moment, then
close, so the kernel does not reset the connection under the answer.

``HTTPServer`` accepts, counts connections against ``max_connections`` (the
next one gets a 503 from the accepting thread itself, without a handler
thread) and logs one access line per request on ``recsvc.access``. Past
``max_connections``, ``reserve`` more connections are admitted for the
``reserved_paths`` alone (CONTRACT 6: health probes are answered when every
slot is taken): such a connection serves one request, waits at most
``RESERVE_HEAD_SECONDS`` for it, and answers any other path 503.
"""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import sys
import threading
import time
from typing import BinaryIO, Callable

from .framing import ChunkedBody, body_length
from .protocol import (
    MAX_LINE_BYTES,
    METHODS_WITH_BODY,
    FileBody,
    Request,
    RequestError,
    RequestHead,
    Response,
    head_end,
    json_error,
    render_response,
    request_target,
    wants_keep_alive,
)
from .proxies import TrustedProxies

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("recsvc.access")

_SMALL_BODY_BYTES = 65536  # a bytes body up to this goes out in the head's send
_CHUNK_BYTES = 65536
_LINGER_SECONDS = 2.0
RESERVE_HEAD_SECONDS = 2.0  # how long a reserve connection may take to send its request head
_LINGER_BYTES = 1 << 20


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

    def take_head(self, deadline: float) -> bytes | None:
        """The whole next request head if its bytes are all here (waiting for the first ones), else None."""
        if not self._buffer:
            self._fill(deadline)
        buffer = self._buffer
        end = head_end(buffer)
        if end < 0:
            return None
        if end == len(buffer):  # the usual case: nothing after the head
            head = bytes(buffer)
            buffer.clear()
        else:
            head = bytes(buffer[:end])
            del buffer[:end]
        self._scanned = 0
        return head

    def read_line(self, deadline: float, too_long: Callable[[], RequestError]) -> bytes:
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
                    raise too_long()
                return line
            self._scanned = len(self._buffer)
            if len(self._buffer) > MAX_LINE_BYTES + 1:  # +1: room for a CR awaiting its LF
                raise too_long()
            self._fill(deadline)

    def read_chunked(self, decoder: ChunkedBody, deadline: float) -> bytes:
        """A chunked body through ``decoder``; bytes after its end stay for the next request."""
        while True:
            used = decoder.feed(self._buffer)
            del self._buffer[:used]
            if decoder.done:
                self._scanned = 0
                return bytes(decoder.body)
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

    def __init__(self, server: HTTPServer, sock: socket.socket, client_address: tuple, reserved: bool = False):
        self.server = server
        self.reserved = reserved  # admitted past max_connections: one request, to a reserved path only
        self.sock = sock
        self.client_address = client_address
        self.reader = _Reader(sock)
        self.head = RequestHead()  # of the request being read
        self._client_gone = lambda: _peer_gone(sock)
        # Asked once per connection: only a --trusted-proxies peer's Forwarded headers are read.
        proxies = server.trusted_proxies
        self.proxies = proxies if proxies and proxies.trusts(client_address[0]) else None

    @property
    def current(self) -> tuple[str, str]:
        """Method and path of the request being read, for the log; dashes before its request line."""
        if self.head.request_line is None:
            return "-", "-"
        method, target, _ = self.head.request_line
        return method, target.partition("?")[0]

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
        deadline = time.monotonic() + (min(self.server.idle_timeout, RESERVE_HEAD_SECONDS) if self.reserved
                                        else self.server.idle_timeout)
        self.reader.mark()
        self.head = RequestHead()
        try:
            request, keep_alive = self._read_request(deadline)
        except _Timeout:
            if self.reader.received_since_mark:
                self._answer_error(RequestError("request_timeout"))
            return False
        except _PeerClosed:
            if self.reader.received_since_mark:
                logger.info("client %s closed the connection mid-request", self.client_address[0])
            return False
        except RequestError as error:
            self._answer_error(error)
            return False
        if self.reserved:
            if request.path not in self.server.reserved_paths:
                self._answer_error(_too_many_connections())
                return False
            keep_alive = False
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
                response = json_error("internal_error", "Internal server error.")
                response.close = True
                head, body, keep_alive = render_response(response, request.method, request.version, False)
            sent, complete = self._write(head, body)
        finally:
            # The transport owns the file from here, sent or not (HEAD, 204, 304, errors).
            _close_body(getattr(response, "body", None))
        forwarded = request.forwarded
        self._log_access(request.method, request.path, response.status, sent, started,
                         forwarded.client if forwarded is not None and forwarded.client else None)
        return keep_alive and complete

    def _read_request(self, deadline: float) -> tuple[Request, bool]:
        reader, head = self.reader, self.head
        whole = reader.take_head(deadline)
        if whole is not None:  # the usual case: the whole head came in one read
            head.feed_head(whole)
        else:  # line by line as it arrives: a bad request line is refused before the rest is sent
            while not head.feed_line(reader.read_line(deadline, head.too_long)):
                pass
        method, target, version = head.request_line
        length = body_length(method, version, head.headers)
        target, headers = request_target(target, version, head.headers)
        path, _, query = target.partition("?")
        # A body on a method without one: answer, then close, so bytes that
        # follow are never taken for a second request (CONTRACT 6). An
        # HTTP/1.0 message with Transfer-Encoding is faulty framing: close after
        # it too (RFC 9112 6.1).
        keep_alive = wants_keep_alive(version, headers) and (length == 0 or (
            method in METHODS_WITH_BODY and (length is not None or version == "HTTP/1.1")))
        body = b""
        if length != 0:
            expect = next((v for n, v in headers if n == "expect"), "")
            if version == "HTTP/1.1" and expect.lower() == "100-continue" and (length is None or reader.buffered < length):
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body_deadline = time.monotonic() + self.server.idle_timeout
            if length is None:
                body = reader.read_chunked(ChunkedBody(), body_deadline)
            else:
                body = reader.read_exact(length, body_deadline)
        request = Request(
            method=method,
            target=target,
            path=path,
            query=query,
            version=version,
            headers=tuple(headers),
            body=body,
            client_address=self.client_address,
            forwarded=self.proxies.view(headers) if self.proxies is not None else None,
            client_gone=self._client_gone,
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

    def _log_access(self, method: str, path: str, status: int, sent: int, started: float, client: str | None = None) -> None:
        # CONTRACT 6: the path only; a query may hold a link signature. No header values but
        # the client address a trusted proxy named.
        if self.server.access_log and access_logger.isEnabledFor(logging.INFO):
            access_logger.info("%s %s %s %d %d %.1fms", client or self.client_address[0], method, path, status, sent, (time.monotonic() - started) * 1000)


def _too_many_connections() -> RequestError:
    return RequestError("too_many_connections")


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

    def __init__(self, address: tuple[str, int], app: Callable[[Request], Response], *, idle_timeout: float = 15, max_connections: int = 256, access_log: bool = True,
                 listen_socket: socket.socket | None = None, reserve: int = 0, reserved_paths: tuple[str, ...] = (),
                 trusted_proxies: TrustedProxies | None = None):
        """Bind and listen on ``address``, or serve ``listen_socket``, one already
        listening (a serving process of ``serve --processes N`` shares its parent's).
        ``reserve`` connections past ``max_connections`` serve ``reserved_paths`` only.
        ``trusted_proxies``: peers whose Forwarded / X-Forwarded-* headers are believed."""
        if not idle_timeout > 0:
            raise ValueError("idle_timeout must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.app = app
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.access_log = access_log
        self.reserve = reserve
        self.reserved_paths = frozenset(reserved_paths)
        self.trusted_proxies = trusted_proxies
        self._connections_lock = threading.Lock()  # guards _connections and _open_sockets
        self._connections = 0
        self._open_sockets: set[socket.socket] = set()
        self._refused = 0  # refusals not yet logged; the accepting thread alone touches these
        self._refused_logged_at = -float("inf")
        if listen_socket is not None:
            self.address_family = listen_socket.family
            super().__init__(address, None, bind_and_activate=False)
            self.socket.close()
            self.socket = listen_socket
            self.server_address = listen_socket.getsockname()
            return
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
            admitted = self._connections < self.max_connections + self.reserve
            if admitted:
                reserved = self._connections >= self.max_connections
                self._connections += 1
                self._open_sockets.add(request)
        if not admitted:
            self._refuse(request, client_address)
            return
        try:
            # socketserver.ThreadingMixIn.process_request, with the reserve flag passed on.
            thread = threading.Thread(target=self.process_request_thread, args=(request, client_address, reserved),
                                      daemon=self.daemon_threads)
            thread.start()
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request, client_address, reserved: bool = False):
        try:
            _Connection(self, request, client_address, reserved).serve()
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
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
        head, body, _ = render_response(_too_many_connections().response(), "GET", "HTTP/1.1", False)
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

    def shutdown_request(self, request):
        self.close_request(request)  # _Connection already shut down and drained

    def handle_error(self, request, client_address):
        # Never socketserver's traceback on stderr (CONTRACT 6).
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            logger.info("client %s disconnected: %s", client_address[0], exc.__class__.__name__)
        else:
            logger.error("unexpected error serving %s", client_address[0], exc_info=True)
