"""A scriptable stand-in for the recording upstream, an HTTP server on loopback for tests and the demo.

Theory of operation. Each path is given a ``Script``: the status, body and
headers it answers, and how badly it behaves on the way (a delay before the
status line, a slow body, or a hang). Every request is recorded before it is
answered, so a test can count hits and read the headers the service sent
(its ``Authorization``, say) while the request is still hanging.

The server speaks HTTP/1.0: each response ends by closing the connection, so
a body needs no framing beyond ``Content-Length`` and a hang is simply a
request that gets nothing yet.

Hanging. A hung request waits on the *gate* that was current when it arrived.
``release()`` opens that gate and puts a fresh, closed one in its place, so
it frees the requests hung so far and no later ones. ``hang_all = True`` makes
every path hang (the "upstream hangs" drill); setting it back to False
releases the hung requests, which then answer whatever their path is scripted
to answer at that moment.

Stopping. ``stop()`` sets one ``_stopping`` event that every wait here polls
(hangs, delays, pauses between chunks), shuts down the open connections so
no read or write blocks, and waits briefly for the handlers to finish. A
request interrupted by ``stop()`` sees its connection closed with no answer.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.05          # how often a waiting request looks at _stopping
_STOP_JOIN_SECONDS = 1.0      # the longest stop() waits for handlers to end
_NOT_FOUND_BODY = b"no script for this path\n"


@dataclass
class Script:
    """How one path answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "audio/wav"
    delay: float = 0.0            # seconds before the status line is sent
    chunk_delay: float = 0.0      # seconds between body chunks (a slow download)
    chunk_size: int = 16384
    hang: bool = False            # answer nothing until released or stopped
    headers: dict[str, str] = field(default_factory=dict)   # added or overriding, e.g. Location


_NOT_FOUND = Script(status=404, body=_NOT_FOUND_BODY, content_type="text/plain; charset=utf-8")


class _Handler(BaseHTTPRequestHandler):
    """Translates one HTTP request into a call on its FakeUpstream."""

    protocol_version = "HTTP/1.0"
    server_version = "FakeUpstream/1"

    def setup(self) -> None:
        super().setup()
        self.server.upstream._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the client or stop() closed the socket first
        finally:
            self.server.upstream._connection_closed(self.connection)

    def do_GET(self) -> None:
        self.server.upstream._answer(self, send_body=True)

    def do_HEAD(self) -> None:
        self.server.upstream._answer(self, send_body=False)

    def log_message(self, format: str, *args) -> None:
        logger.debug("fake upstream %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False        # FakeUpstream.stop() does its own bounded wait
    request_queue_size = 128      # concurrency tests connect in bursts; 5 would drop SYNs

    def __init__(self, address: tuple[str, int], upstream: "FakeUpstream") -> None:
        self.upstream = upstream
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        logger.debug("fake upstream: request from %s failed", client_address, exc_info=True)


class FakeUpstream:
    """A loopback HTTP server whose paths answer as scripted; a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), self)
        bound_host, bound_port = self._server.server_address[:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        self._serve_thread: threading.Thread | None = None
        self._stopping = threading.Event()

        self._scripts: dict[str, Script] = {}
        self._scripts_lock = threading.Lock()

        self._requests: dict[str, list[dict]] = {}
        self._requests_changed = threading.Condition()   # guards _requests

        self._hang_all = False
        self._gate = threading.Event()
        self._hang_lock = threading.Lock()                # guards _hang_all and _gate

        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition()  # guards _connections

    # -- life cycle ---------------------------------------------------------

    def start(self) -> "FakeUpstream":
        if self._stopping.is_set():
            raise RuntimeError("a stopped FakeUpstream cannot start again")
        if self._serve_thread is None:
            self._serve_thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": _POLL_SECONDS},
                name="fake-upstream",
                daemon=True,
            )
            self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: hung requests are closed unanswered, slow ones cut short; returns within about a second."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.release()
        if self._serve_thread is not None:
            self._server.shutdown()
            self._serve_thread.join(_STOP_JOIN_SECONDS)
        self._server.server_close()
        with self._connections_changed:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the client
            if not self._connections_changed.wait_for(
                lambda: not self._connections, _STOP_JOIN_SECONDS
            ):
                logger.warning("fake upstream: %d connections still open after stop", len(self._connections))

    def __enter__(self) -> "FakeUpstream":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- scripting ----------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + _normal_path(path)

    def set(self, path: str, script: Script | None = None, **fields) -> str:
        """Script ``path`` (a Script, Script fields, or a Script with fields replaced); returns its URL."""
        if script is None:
            script = Script(**fields)
        elif fields:
            script = dataclasses.replace(script, **fields)
        with self._scripts_lock:
            self._scripts[_normal_path(path)] = script
        return self.url(path)

    def _script(self, path: str) -> Script:
        with self._scripts_lock:
            return self._scripts.get(path, _NOT_FOUND)

    # -- what was asked -----------------------------------------------------

    def requests(self, path: str) -> list[dict]:
        """The requests ``path`` received, oldest first: ``method``, ``target``, ``headers``."""
        with self._requests_changed:
            return [dict(r, headers=dict(r["headers"])) for r in self._requests.get(_normal_path(path), [])]

    def hits(self, path: str) -> int:
        with self._requests_changed:
            return len(self._requests.get(_normal_path(path), []))

    def wait_for_hits(self, path: str, n: int, timeout: float = 5.0) -> bool:
        """True once ``path`` has received ``n`` requests; False if ``timeout`` passes first."""
        key = _normal_path(path)
        with self._requests_changed:
            return self._requests_changed.wait_for(lambda: len(self._requests.get(key, [])) >= n, timeout)

    # -- hanging ------------------------------------------------------------

    @property
    def hang_all(self) -> bool:
        with self._hang_lock:
            return self._hang_all

    @hang_all.setter
    def hang_all(self, value: bool) -> None:
        with self._hang_lock:
            self._hang_all = bool(value)
            if not value:
                self._open_gate()

    def release(self) -> None:
        """Let every request hung so far answer its script; later ones hang anew."""
        with self._hang_lock:
            self._open_gate()

    def _open_gate(self) -> None:
        # Caller holds _hang_lock.
        self._gate.set()
        self._gate = threading.Event()

    # -- serving (handler threads) ------------------------------------------

    def _answer(self, handler: _Handler, send_body: bool) -> None:
        handler.close_connection = True
        path = urllib.parse.urlsplit(handler.path).path
        # Recorded before any hang or delay, so tests see a request that is still waiting.
        with self._requests_changed:
            self._requests.setdefault(path, []).append(
                {"method": handler.command, "target": handler.path, "headers": dict(handler.headers.items())}
            )
            self._requests_changed.notify_all()

        arrival_script = self._script(path)
        with self._hang_lock:
            hangs = self._hang_all or arrival_script.hang
            gate = self._gate
        if hangs and not self._wait_for_gate(gate):
            return
        # Read again after a hang: a released request answers what its path says now.
        script = self._script(path)
        if script.delay and self._stopping.wait(script.delay):
            return
        try:
            self._send(handler, script, send_body)
        except OSError as exc:
            logger.debug("fake upstream: %s %s ended early: %s", handler.command, handler.path, exc)

    def _wait_for_gate(self, gate: threading.Event) -> bool:
        """Wait until released (True) or stopped (False)."""
        while not gate.wait(_POLL_SECONDS):
            if self._stopping.is_set():
                return False
        return not self._stopping.is_set()

    def _send(self, handler: _Handler, script: Script, send_body: bool) -> None:
        headers = {"Content-Type": script.content_type, "Content-Length": str(len(script.body))}
        overridden = {name.lower() for name in script.headers}
        headers = {name: value for name, value in headers.items() if name.lower() not in overridden}
        headers.update(script.headers)

        handler.send_response(script.status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if not send_body:
            return
        body = script.body
        step = max(1, script.chunk_size)
        for offset in range(0, len(body), step):
            if offset and script.chunk_delay and self._stopping.wait(script.chunk_delay):
                return
            handler.wfile.write(body[offset:offset + step])

    def _connection_opened(self, connection: socket.socket) -> None:
        with self._connections_changed:
            self._connections.add(connection)

    def _connection_closed(self, connection: socket.socket) -> None:
        with self._connections_changed:
            self._connections.discard(connection)
            self._connections_changed.notify_all()


def _normal_path(path: str) -> str:
    return path if path.startswith("/") else "/" + path
