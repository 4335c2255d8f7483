"""A scripted stand-in for a recsvc server, and a fake clock, for testing players of CONTRACT 7.

``ScriptedServer`` listens on 127.0.0.1 and answers each request to any path
with the next ``Answer`` of its script (the last one repeats once the script
runs out, so ``[processing()]`` is "202 forever"; pass ``itertools.cycle``
for a flapping server). It records every request it saw (``seen``), and with
a ``FakeClock`` it honours ``Prefer: wait=N`` on answers marked ``hold`` by
moving fake time forward ``min(N, max_hold)`` instead of sleeping, as the
real server's hold (CONTRACT 5b) would take that long.

What a player test needs from a server is only ``base_url`` and ``token``;
a fixture that starts a real recsvc and provides the same two attributes can
stand in wherever the scenario is one a real server can be brought to
(a ready recording, an unknown call, paused workers).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Iterator

TOKEN = "test-token"

# A minimal RIFF/WAVE file: what the service would serve as audio/wav.
WAV = (
    b"RIFF" + (36 + 8).to_bytes(4, "little") + b"WAVEfmt "
    + (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
    + (8000).to_bytes(4, "little") + (16000).to_bytes(4, "little")
    + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    + b"data" + (8).to_bytes(4, "little") + bytes(range(8))
)


class FakeClock:
    """Monotonic fake time: ``clock()`` reads it, ``clock.sleep(s)`` moves it and returns at once."""

    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self._now = 0.0
        self._now_lock = threading.Lock()
        self.sleeps: list[float] = []
        self._on_sleep = on_sleep

    def __call__(self) -> float:
        with self._now_lock:
            return self._now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        with self._now_lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        if self._on_sleep is not None:
            self._on_sleep(seconds)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    hold: bool = False  # honour Prefer: wait=N in fake time before answering
    drop: bool = False  # close the connection without answering: a network error


def processing(retry_after: object = 2, *, job_status: str = "queued", attempt: int = 0, hold: bool = False) -> Answer:
    """CONTRACT 3 rows 9/10: the 202 processing body; ``retry_after=None`` leaves the header out."""
    body = {
        "status": "processing",
        "job_id": 17,
        "job_status": job_status,
        "attempt": attempt,
        "max_attempts": 3,
        "retry_after": retry_after if isinstance(retry_after, int) else 2,
        "message": "The recording is being prepared.",
    }
    headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
    return _json(202, body, headers, hold=hold)


def audio(body: bytes = WAV, *, status: int = 200, content_type: str = "audio/wav") -> Answer:
    """CONTRACT 5: a cached recording (200, or 206 with Content-Range)."""
    headers = [("Content-Type", content_type), ("Accept-Ranges", "bytes")]
    if status == 206:
        headers.append(("Content-Range", f"bytes 0-{len(body) - 1}/{len(body) + 100}"))
    return Answer(status, tuple(headers), body)


def failure(status: int, error: str, message: str = "", **extra: object) -> Answer:
    """An error answer with the contract's JSON body; ``retry_after`` also becomes the header."""
    headers: tuple[tuple[str, str], ...] = ()
    if status == 401:
        headers = (("WWW-Authenticate", "Bearer"),)
    if "retry_after" in extra:
        headers += (("Retry-After", str(extra["retry_after"])),)
    return _json(status, {"error": error, "message": message or f"{error}.", **extra}, headers)


def dropped() -> Answer:
    return Answer(0, drop=True)


def _json(status: int, body: dict, headers: tuple[tuple[str, str], ...], *, hold: bool = False) -> Answer:
    return Answer(status, (("Content-Type", "application/json"),) + headers, json.dumps(body).encode(), hold=hold)


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    at: float | None  # fake time when it arrived, when the server has a clock

    @property
    def prefer_wait(self) -> int | None:
        match = re.fullmatch(r"\s*wait=(\d+)\s*", self.headers.get("prefer", ""))
        return int(match.group(1)) if match else None


@dataclass
class _Script:
    answers: Iterator[Answer]
    last: Answer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> Answer:
        with self.lock:
            self.last = next(self.answers, self.last)
            assert self.last is not None, "the script is empty"
            return self.last


class ScriptedServer:
    """An HTTP server on 127.0.0.1 answering a programmed sequence; use as a context manager."""

    def __init__(
        self,
        answers: Iterable[Answer],
        *,
        clock: FakeClock | None = None,
        max_hold: float = 20,
        port: int = 0,
        token: str = TOKEN,
    ) -> None:
        self.token = token
        self.clock = clock
        self.max_hold = max_hold
        self.seen: list[SeenRequest] = []
        self._seen_lock = threading.Lock()
        self._script = _Script(iter(answers))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, name="scripted-server", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> "ScriptedServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                seen = SeenRequest(
                    self.command,
                    self.path,
                    {name.lower(): value for name, value in self.headers.items()},
                    server.clock() if server.clock is not None else None,
                )
                with server._seen_lock:
                    server.seen.append(seen)
                answer = server._script.next()
                if answer.drop:
                    self.close_connection = True
                    return
                if answer.hold and server.clock is not None and seen.prefer_wait is not None:
                    server.clock.advance(min(seen.prefer_wait, server.max_hold))
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
