"""The retry counter on a Redis server: ``RedisCounter``, over the RESP2 client of ``recsvc.storage.resp``.

Theory of operation. ``--counter redis://[:password@]host:port/db`` shares the
retry counter of CONTRACT section 3 between every recsvc process that names
the same server. ``RedisCounter`` speaks the counter vocabulary of
``recsvc.storage.counter`` over RESP2, the Redis wire protocol:

- a command goes out as an array of bulk strings (``encode_command``); a reply
  comes back as one of five types (``read_reply``); an error reply (``-ERR``)
  is returned as a ``RedisReplyError`` value, not raised, so that a pipeline
  reads every reply and the connection stays in step;
- connections are opened lazily (a server that is down at start costs nothing
  until the first retry), AUTH and SELECT run once per connection, and a few
  idle connections are kept for reuse;
- connect and read wait at most ``connect_timeout`` / ``read_timeout``
  (0.5 s each by default), so a hung server cannot hold a request;
- a connection the server dropped (restart, ``CLIENT KILL``, idle timeout) is
  noticed before use where the socket already says so, and otherwise costs
  one retry on a fresh connection, for idempotent commands only (GET, TTL,
  DEL, PEXPIRE). INCR is never sent twice: once its bytes left, it may have
  been applied, so a failure then is a ``CounterError``;
- INCR and PEXPIRE of a retry travel together in one MULTI/EXEC round trip,
  so the sliding window (CONTRACT 3) is set atomically with the count.

Every failure (refused, timeout, protocol error, error reply) raises
``CounterError`` and logs nothing: ``recsvc.storage.fallback_counter`` wraps this
counter, counts in the process during an outage (CONTRACT 3) and logs the
outage once when it starts and once when it ends.
"""

from __future__ import annotations

import threading

from ..contract.settings import parse_redis_url
from .counter import CounterError
from .resp import RedisConnection, RedisProtocolError, RedisReplyError, Reply

DEFAULT_TIMEOUT = 0.5


# ---- the counter ----


class RedisCounter:
    """The retry counter (``recsvc.storage.counter.RetryCounter``) on a Redis server."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = DEFAULT_TIMEOUT,
        read_timeout: float = DEFAULT_TIMEOUT,
        max_idle: int = 4,
    ):
        self.address = parse_redis_url(url)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle_lock = threading.Lock()  # guards _idle and _closed
        self._idle: list[RedisConnection] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisCounter({str(self.address)!r})"

    # -- the counter vocabulary (recsvc.storage.counter) --

    def incr(self, key: str) -> int:
        return self._integer(self._run([("INCR", key)], idempotent=False)[0])

    def expire(self, key: str, seconds: float) -> bool:
        return self._integer(self._run([("PEXPIRE", key, _millis(seconds))], idempotent=True)[0]) == 1

    def incr_and_expire(self, key: str, seconds: float) -> int:
        # CONTRACT 3: INCR then EXPIRE at every retry (sliding window), atomically.
        replies = self._run(
            [("MULTI",), ("INCR", key), ("PEXPIRE", key, _millis(seconds)), ("EXEC",)],
            idempotent=False,
        )
        executed = replies[-1]
        if not isinstance(executed, list) or len(executed) != 2:
            raise self._unexpected(executed)
        return self._integer(executed[0])

    def decr(self, key: str) -> int:
        return self._integer(self._run([("DECR", key)], idempotent=False)[0])

    def get(self, key: str) -> int | None:
        value = self._run([("GET", key)], idempotent=True)[0]
        if value is None:
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise self._unexpected(value) from None

    def ttl(self, key: str) -> int:
        return self._integer(self._run([("TTL", key)], idempotent=True)[0])

    def delete(self, key: str) -> int:
        return self._integer(self._run([("DEL", key)], idempotent=True)[0])

    def close(self) -> None:
        with self._idle_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # -- one round trip and its retry --

    def _run(self, commands: list[tuple], *, idempotent: bool) -> list[Reply]:
        replies = self._round_trip(commands, idempotent)
        errors = [r for r in _flatten(replies) if isinstance(r, RedisReplyError)]
        if errors:
            raise CounterError(f"{self.address} answered: {errors[0]}")
        return replies

    def _round_trip(self, commands: list[tuple], idempotent: bool) -> list[Reply]:
        connection, reused = self._checkout()
        try:
            replies = connection.pipeline(commands)
        except OSError as exc:
            connection.close()
            if not (reused and idempotent):
                raise CounterError(f"{self.address} did not answer: {_describe(exc)}") from exc
            # The server may have dropped this idle connection after our last
            # look at it; a command safe to repeat gets one fresh connection.
            connection, _ = self._checkout(fresh=True)
            try:
                replies = connection.pipeline(commands)
            except (OSError, RedisProtocolError) as retry_exc:
                connection.close()
                raise CounterError(f"{self.address} did not answer: {_describe(retry_exc)}") from retry_exc
        except RedisProtocolError as exc:
            connection.close()
            raise CounterError(f"{self.address} sent a bad reply: {exc}") from exc
        self._checkin(connection)
        return replies

    def _checkout(self, fresh: bool = False) -> tuple[RedisConnection, bool]:
        while not fresh:
            with self._idle_lock:
                if self._closed:
                    raise CounterError("the counter is closed")
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                break
            if not connection.closed_by_server():
                return connection, True
            connection.close()
        try:
            return RedisConnection(self.address, self._connect_timeout, self._read_timeout), False
        except RedisReplyError as exc:
            raise CounterError(f"{self.address} refused AUTH or SELECT: {exc}") from exc
        except (OSError, RedisProtocolError) as exc:
            raise CounterError(f"cannot connect to {self.address}: {_describe(exc)}") from exc

    def _checkin(self, connection: RedisConnection) -> None:
        with self._idle_lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def _integer(self, reply: Reply) -> int:
        if not isinstance(reply, int):
            raise self._unexpected(reply)
        return reply

    def _unexpected(self, reply: Reply) -> CounterError:
        """A well-formed reply that no counter command gives (someone else's key, say)."""
        return CounterError(f"{self.address} answered {reply!r} where a counter was expected")


def _millis(seconds: float) -> int:
    """A window in whole milliseconds for PEXPIRE (fractions are allowed, CONTRACT 2)."""
    return int(round(seconds * 1000))


def _flatten(replies: list[Reply]):
    for reply in replies:
        if isinstance(reply, list):
            yield from _flatten(reply)
        else:
            yield reply


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
