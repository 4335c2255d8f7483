"""Raw-socket HTTP for the hostile, fuzz and fault tests: bytes in, bytes out, nothing fixed up.

``http.client`` refuses to send most of what these tests send (bad framing,
control characters, HTTP/0.9), so they talk to recsvc through plain sockets
on 127.0.0.1 and parse the answer just enough to judge it.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import time
from dataclasses import dataclass


@dataclass
class RawAnswer:
    status: int | None          # None when nothing (or no status line) came back
    headers: dict[str, str]
    body: bytes
    raw: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


def parse_answer(raw: bytes) -> RawAnswer:
    """The first response in ``raw``; status None when it is not an HTTP/1.1 response."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2) if lines and lines[0] else []
    if not sep or len(parts) < 2 or parts[0] != b"HTTP/1.1" or not parts[1].isdigit():
        return RawAnswer(None, {}, b"", raw)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return RawAnswer(int(parts[1]), headers, rest[:length], raw)


def connect(address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 5.0, limit: int = 1 << 22) -> bytes:
    """Everything the server sends until it closes (or resets), within ``timeout``."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while len(data) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the server did not close within {timeout}s; got {bytes(data[:200])!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            if not data:
                raise  # a reset before any answer is not "closed with nothing to say"
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def exchange(address: tuple[str, int], data: bytes, timeout: float = 5.0, half_close: bool = True) -> bytes:
    """Send ``data``, (optionally) close our sending side, return all bytes until the server closes."""
    with connect(address, timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already answered and closed; read what it said
        except OSError as exc:  # ENOTCONN from shutdown: the same, seen a moment later
            if exc.errno != errno.ENOTCONN:
                raise
        return read_until_closed(sock, timeout)


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0): the rudest way a client can leave."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def request_bytes(method: str, path: str, *, token: str | None = None, body: bytes | None = None,
                  headers: tuple[tuple[str, str], ...] = (), version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
