"""RESP2, the Redis wire protocol, for the retry counter and the Redis store: commands out, replies in, one connection.

Theory of operation. A command goes out as an array of bulk strings
(``encode_command``); a reply comes back as one of five types (``read_reply``,
no socket in it); an error reply (``-ERR``) is returned as a
``RedisReplyError`` value, not raised, so that a pipeline reads every reply
and the connection stays in step. ``RedisConnection`` is one socket with AUTH
and SELECT done, used by one thread at a time. The counter on top of it is
``recsvc.storage.redis_counter``.
"""

from __future__ import annotations

import select
import socket
from typing import BinaryIO, Union

from ..contract.settings import RedisAddress

_MAX_LINE = 64 * 1024  # a status, error or length line; counter replies are tiny
_MAX_BULK = 1024 * 1024  # a counter value or a store row; anything bigger is not ours
_MAX_ARRAY = 1 << 20  # the Redis store's listings (every active job) are long arrays


# ---- RESP2: encoding commands and reading replies, no socket in here ----


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``, ``-WRONGPASS ...``) from the server."""


class RedisProtocolError(Exception):
    """Bytes that are not a RESP2 reply: the connection is out of step."""


Reply = Union[int, bytes, None, list, RedisReplyError, str]


def encode_command(*args: str | bytes | int) -> bytes:
    """One command as a RESP2 array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def read_reply(stream: BinaryIO) -> Reply:
    """Read one reply: ``str`` (status), ``RedisReplyError``, ``int``, ``bytes`` or None, ``list``.

    Raises ConnectionError when the server closed the connection, and
    RedisProtocolError on anything that is not RESP2.
    """
    line = stream.readline(_MAX_LINE + 1)
    if not line:
        raise ConnectionError("the server closed the connection")
    if not line.endswith(b"\r\n"):
        raise RedisProtocolError(f"unterminated reply line {line[:40]!r}")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode("utf-8", "replace")
    if kind == b"-":
        return RedisReplyError(body.decode("utf-8", "replace"))
    if kind == b":":
        return _integer(body)
    if kind == b"$":
        length = _integer(body)
        if length == -1:
            return None
        if not 0 <= length <= _MAX_BULK:
            raise RedisProtocolError(f"bulk length {length} out of range")
        data = stream.read(length + 2)
        if len(data) < length + 2:
            raise ConnectionError("the server closed the connection mid-reply")
        if data[-2:] != b"\r\n":
            raise RedisProtocolError("bulk string not terminated by CRLF")
        return data[:-2]
    if kind == b"*":
        count = _integer(body)
        if count == -1:
            return None
        if not 0 <= count <= _MAX_ARRAY:
            raise RedisProtocolError(f"array length {count} out of range")
        return [read_reply(stream) for _ in range(count)]
    raise RedisProtocolError(f"unknown reply type {line[:40]!r}")


def _integer(body: bytes) -> int:
    try:
        return int(body)
    except ValueError:
        raise RedisProtocolError(f"not an integer: {body[:40]!r}") from None


# ---- one connection: a socket, its reader, AUTH and SELECT done ----


class RedisConnection:
    """One socket to the server, used by one thread at a time."""

    def __init__(self, address: RedisAddress, connect_timeout: float, read_timeout: float):
        self._read_timeout = read_timeout
        self._sock = socket.create_connection((address.host, address.port), timeout=connect_timeout)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock.settimeout(read_timeout)
            self._stream = self._sock.makefile("rb")
            self._handshake(address)
        except BaseException:
            self.close()
            raise

    def _handshake(self, address: RedisAddress) -> None:
        commands: list[tuple] = []
        if address.password is not None:
            auth = (address.username, address.password) if address.username else (address.password,)
            commands.append(("AUTH", *auth))
        if address.db:
            commands.append(("SELECT", address.db))
        for reply in self.pipeline(commands) if commands else ():
            if isinstance(reply, RedisReplyError):
                raise reply

    def pipeline(self, commands: list[tuple]) -> list[Reply]:
        """Send every command, then read one reply each (one round trip)."""
        self._sock.sendall(b"".join(encode_command(*c) for c in commands))
        return [read_reply(self._stream) for _ in commands]

    def read(self) -> Reply:
        """One more reply: a message of a subscription. Raises TimeoutError when none came in time."""
        return read_reply(self._stream)

    def wait_for_reply(self, timeout: float) -> bool:
        """True when a reply (or the server's close) can be read now or came within ``timeout``.

        A subscriber waits here through quiet channels: a read that times out
        leaves the socket's file unusable for good ("cannot read from timed
        out object"), a wait does not. What is already buffered counts.
        """
        self._sock.settimeout(0)
        try:
            if self._stream.peek(1):  # buffered bytes, or bytes the socket holds, without blocking
                return True
        finally:
            self._sock.settimeout(self._read_timeout)
        readable, _, _ = select.select([self._sock], [], [], timeout)
        return bool(readable)

    def send(self, *command) -> None:
        """Send one command without reading its reply (a subscriber's PING: the reply comes as a message)."""
        self._sock.sendall(encode_command(*command))

    def closed_by_server(self) -> bool:
        """True when the socket already holds the server's close (or stray bytes).

        A peek without waiting: an idle connection has nothing to read, so
        anything there, EOF included, means it must not be used.
        """
        try:
            self._sock.settimeout(0)
            try:
                self._sock.recv(1, socket.MSG_PEEK)
            finally:
                self._sock.settimeout(self._read_timeout)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def close(self) -> None:
        for closable in (getattr(self, "_stream", None), self._sock):
            try:
                if closable is not None:
                    closable.close()
            except OSError:
                pass
