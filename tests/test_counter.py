"""The retry counter backends: the shared contract, then what only Redis can get wrong.

``CounterContract`` runs unchanged against memory:// (a fake clock) and a real
redis-server that this module starts on a free loopback port (real time,
windows of a fraction of a second). The Redis-only tests kill, restart and
cut the server, and use a scripted loopback server where the exact moment a
connection drops matters.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from counter_contract import KEY, CounterContract
from redis_server import RedisServer, free_port, requires_redis

from recsvc.storage.counter import CounterError, MemoryCounter
from recsvc.storage.counters import open_counter
from recsvc.storage.fallback_counter import FallbackCounter
from recsvc.storage.redis_counter import RedisCounter
from recsvc.contract.settings import RedisAddress, parse_redis_url

COUNTER_LOG = "recsvc.storage.redis_counter"


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def shared_redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == COUNTER_LOG and r.levelno == logging.WARNING]


def infos_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == COUNTER_LOG and r.levelno == logging.INFO]


# ---- the contract, against each backend ----


class TestMemoryCounter(CounterContract):
    @pytest.fixture
    def counter_env(self):
        clock = FakeClock()
        yield MemoryCounter(clock), clock.advance

    def test_memory_is_bounded_once_keys_expire(self, counter, advance):
        for n in range(1000):
            counter.incr_and_expire(f"recording_retry_attempts:7:CA{n}", 0.5)
        assert len(counter) == 1000
        advance(0.75)
        assert len(counter) == 0

    def test_memory_url_gives_a_memory_counter(self):
        assert isinstance(open_counter("memory://"), MemoryCounter)


@requires_redis
class TestRedisCounter(CounterContract):
    @pytest.fixture
    def counter_env(self, shared_redis_server):
        shared_redis_server.cli("FLUSHALL")
        counter = RedisCounter(shared_redis_server.url(db=3))
        yield counter, time.sleep
        counter.close()


# ---- Redis only: the URL ----


@pytest.mark.parametrize("url, address", [
    pytest.param("redis://127.0.0.1:6380/2", RedisAddress("127.0.0.1", 6380, 2), id="host-port-db"),
    pytest.param("redis://localhost", RedisAddress("localhost", 6379, 0), id="defaults-port-6379-db-0"),
    pytest.param("redis://localhost:7000/", RedisAddress("localhost", 7000, 0), id="trailing-slash-is-db-0"),
    pytest.param("redis://:s3cret@127.0.0.1:6379/1", RedisAddress("127.0.0.1", 6379, 1, None, "s3cret"), id="password"),
    pytest.param("redis://:p%40ss%3Aw@127.0.0.1/0", RedisAddress("127.0.0.1", 6379, 0, None, "p@ss:w"), id="percent-encoded-password"),
    pytest.param("redis://app:pw@127.0.0.1/0", RedisAddress("127.0.0.1", 6379, 0, "app", "pw"), id="acl-user-and-password"),
    pytest.param("redis://[::1]:6379/0", RedisAddress("::1", 6379, 0), id="ipv6-literal"),
])
def test_a_counter_url_is_parsed(url, address):
    assert parse_redis_url(url) == address


@pytest.mark.parametrize("url, complaint", [
    pytest.param("rediss://127.0.0.1/0", "scheme 'rediss' is not redis", id="tls-scheme"),
    pytest.param("127.0.0.1:6379", "no redis:// scheme", id="no-scheme"),
    pytest.param("redis://", "no host", id="no-host"),
    pytest.param("redis://:6379/0", "no host", id="port-without-host"),
    pytest.param("redis://127.0.0.1:/0", "port is empty", id="empty-port"),
    pytest.param("redis://127.0.0.1:abc/0", "port must be a number from 1 to 65535", id="port-not-a-number"),
    pytest.param("redis://127.0.0.1:0/0", "port must be a number from 1 to 65535", id="port-0"),
    pytest.param("redis://127.0.0.1:70000/0", "port must be a number from 1 to 65535", id="port-too-big"),
    pytest.param("redis://127.0.0.1:6379/x", "database must be a number", id="db-not-a-number"),
    pytest.param("redis://127.0.0.1:6379/-1", "database must be a number", id="db-negative"),
    pytest.param("redis://127.0.0.1:6379/0/1", "database must be a number", id="db-with-more-path"),
    pytest.param("redis://127.0.0.1:6379/0?timeout=1", "query string is not supported", id="query"),
    pytest.param("redis://127.0.0.1:6379/0#x", "fragment is not supported", id="fragment"),
    pytest.param("redis://127.0.0.1:6379/0 ", "white space", id="white-space"),
    pytest.param("redis://app@127.0.0.1/0", "needs a non-empty password", id="user-without-password"),
    pytest.param("redis://:@127.0.0.1/0", "needs a non-empty password", id="empty-password"),
])
def test_a_bad_counter_url_is_refused_saying_why(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_redis_url(url)


def test_open_counter_refuses_a_bad_redis_url():
    with pytest.raises(ValueError, match="port must be a number"):
        open_counter("redis://127.0.0.1:0/0")


def test_a_url_error_never_repeats_the_password():
    with pytest.raises(ValueError) as refused:
        parse_redis_url("redis://:hunter2@127.0.0.1:99999/0")
    assert "hunter2" not in str(refused.value)
    assert "hunter2" not in repr(parse_redis_url("redis://:hunter2@127.0.0.1/0"))
    assert "hunter2" not in repr(RedisCounter("redis://:hunter2@127.0.0.1/0"))


def test_a_redis_url_gives_a_redis_counter_behind_a_fallback_without_connecting():
    counter = open_counter(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    assert isinstance(counter, FallbackCounter) and isinstance(counter.shared, RedisCounter)
    assert not counter.in_fallback, "no connection is tried before the first use"
    with pytest.raises(CounterError):
        counter.shared.get(KEY)
    counter.close()


# ---- Redis only: a real server that goes away, comes back, cuts connections ----


@requires_redis
class TestRedisServerFaults:
    def test_counts_go_to_the_database_named_in_the_url(self, redis_server):
        counter = RedisCounter(redis_server.url(db=5))
        counter.incr_and_expire(KEY, 100)
        assert redis_server.cli("GET", KEY, db=5) == "1"
        assert redis_server.cli("DBSIZE", db=0) == "0"
        counter.close()

    def test_connections_are_reused(self, redis_server):
        counter = RedisCounter(redis_server.url())
        before = redis_server.connections_received()
        for _ in range(50):
            counter.incr_and_expire(KEY, 100)
            counter.get(KEY)
        assert redis_server.connections_received() - before == 2  # the counter's one + this INFO's
        counter.close()

    def test_a_password_in_the_url_is_sent_with_auth(self, tmp_path):
        server = RedisServer(tmp_path, password="s3cret")
        server.start()
        try:
            counter = RedisCounter(server.url(password="s3cret"))
            assert counter.incr(KEY) == 1
            counter.close()
            for url in (server.url(password="wrong"), server.url()):
                with pytest.raises(CounterError):
                    RedisCounter(url).incr(KEY)
            assert server.cli("GET", KEY) == "1"
        finally:
            server.kill()

    def test_an_error_reply_is_a_counter_error_and_the_connection_stays_usable(self, redis_server):
        counter = RedisCounter(redis_server.url())
        redis_server.cli("SET", KEY, "not a number")
        with pytest.raises(CounterError, match="not an integer"):
            counter.incr(KEY)
        with pytest.raises(CounterError, match="not an integer"):
            counter.incr_and_expire(KEY, 100)
        with pytest.raises(CounterError):
            counter.get(KEY)
        before = redis_server.connections_received()
        assert counter.incr("recording_retry_attempts:7:CA2") == 1
        assert redis_server.connections_received() - before == 1  # only the INFO: no new connection
        counter.close()

    def test_a_killed_server_gives_counter_errors_and_no_log_line_of_its_own(self, redis_server, caplog):
        caplog.set_level(logging.INFO, logger=COUNTER_LOG)
        counter = RedisCounter(redis_server.url())
        assert counter.incr_and_expire(KEY, 100) == 1
        redis_server.kill()
        calls = [("incr", (KEY,)), ("incr_and_expire", (KEY, 100)), ("expire", (KEY, 100)),
                 ("get", (KEY,)), ("ttl", (KEY,)), ("delete", (KEY,))]
        for _ in range(5):
            for name, args in calls:
                with pytest.raises(CounterError):
                    getattr(counter, name)(*args)
        assert warnings_of(caplog) == [], "the outage is logged once, by the FallbackCounter around this one"
        assert infos_of(caplog) == []
        counter.close()

    def test_a_restarted_server_is_used_again(self, redis_server, caplog):
        caplog.set_level(logging.INFO, logger=COUNTER_LOG)
        counter = RedisCounter(redis_server.url())
        counter.incr(KEY)
        redis_server.kill()
        for _ in range(3):
            with pytest.raises(CounterError):
                counter.incr(KEY)
        redis_server.start()
        assert counter.incr(KEY) == 1  # --save '': the restarted server starts empty
        assert counter.get(KEY) == 1
        assert warnings_of(caplog) == [] and infos_of(caplog) == []
        counter.close()

    def test_a_restart_between_calls_costs_no_error(self, redis_server, caplog):
        counter = RedisCounter(redis_server.url())
        counter.incr(KEY)
        redis_server.restart()
        assert counter.get(KEY) is None
        assert counter.incr(KEY) == 1
        assert warnings_of(caplog) == []
        counter.close()

    def test_a_connection_killed_by_the_server_is_replaced(self, redis_server, caplog):
        counter = RedisCounter(redis_server.url())
        counter.incr(KEY)
        assert int(redis_server.cli("CLIENT", "KILL", "TYPE", "normal")) >= 1
        assert counter.get(KEY) == 1
        assert counter.incr(KEY) == 2
        assert warnings_of(caplog) == []
        counter.close()


# ---- Redis only: the moment a connection drops, on a scripted loopback server ----


class ScriptedServer:
    """Speaks just enough RESP for one counter command at a time; can drop a connection mid-command.

    With ``drop_next`` set, the next command is read and recorded, then its
    connection is closed without a reply: the client cannot know whether it
    was applied.
    """

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.commands_lock = threading.Lock()  # guards commands and connections
        self.commands: list[str] = []
        self.connections = 0
        self.drop_next = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.commands_lock:
                self.connections += 1
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn, conn.makefile("rb") as stream:
            while True:
                try:
                    head = stream.readline()
                    if not head:
                        return
                    args = []
                    for _ in range(int(head[1:])):
                        length = int(stream.readline()[1:])
                        args.append(stream.read(length + 2)[:-2].decode())
                except (OSError, ValueError):
                    return
                with self.commands_lock:
                    self.commands.append(args[0])
                if self.drop_next.is_set():
                    self.drop_next.clear()
                    return
                conn.sendall(b"$1\r\n5\r\n" if args[0] == "GET" else b":1\r\n")

    def count(self, command: str) -> int:
        with self.commands_lock:
            return self.commands.count(command)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def scripted_server():
    server = ScriptedServer()
    yield server
    server.close()


@pytest.mark.parametrize("method, args, answer, wire", [
    pytest.param("get", (KEY,), 5, "GET", id="GET"),
    pytest.param("ttl", (KEY,), 1, "TTL", id="TTL"),
    pytest.param("delete", (KEY,), 1, "DEL", id="DEL"),
    pytest.param("expire", (KEY, 10), True, "PEXPIRE", id="PEXPIRE"),
])
def test_an_idempotent_command_is_retried_once_on_a_fresh_connection(scripted_server, caplog, method, args, answer, wire):
    counter = RedisCounter(f"redis://127.0.0.1:{scripted_server.port}/0")
    assert getattr(counter, method)(*args) == answer
    scripted_server.drop_next.set()
    assert getattr(counter, method)(*args) == answer
    assert scripted_server.count(wire) == 3
    assert scripted_server.connections == 2
    assert warnings_of(caplog) == []
    counter.close()


@pytest.mark.parametrize("method, args, wire", [
    pytest.param("incr", (KEY,), "INCR", id="INCR"),
    pytest.param("incr_and_expire", (KEY, 10), "MULTI", id="INCR-and-PEXPIRE"),
])
def test_incr_is_never_sent_twice_when_the_connection_drops(scripted_server, method, args, wire):
    counter = RedisCounter(f"redis://127.0.0.1:{scripted_server.port}/0")
    assert counter.get(KEY) == 5
    scripted_server.drop_next.set()
    with pytest.raises(CounterError):
        getattr(counter, method)(*args)
    assert scripted_server.count(wire) == 1
    assert scripted_server.connections == 1
    counter.close()


def test_a_server_that_never_answers_times_out_in_half_a_second():
    silent = socket.create_server(("127.0.0.1", 0))  # listens, never accepts, never answers
    try:
        counter = RedisCounter(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        started = time.monotonic()
        with pytest.raises(CounterError, match="timed out"):
            counter.incr(KEY)
        assert 0.4 <= time.monotonic() - started < 1.5
        counter.close()
    finally:
        silent.close()
