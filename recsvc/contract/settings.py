"""Settings: the table of CONTRACT section 2, parsed from flags and RECSVC_* variables.

Theory of operation. Every setting is one row of ``SETTINGS`` (flag,
environment variable, default, parser). ``load_settings(argv, environ)``
reads each row once at start, a flag beating its variable, and returns one
frozen ``Settings``. A bad value raises ``SettingsError`` whose text is the
one line the contract asks for (``--job-timeout must be a positive number,
got '-1'``); the command line prints it as ``recsvc: error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Callable, Mapping
from urllib.parse import unquote, urlsplit


# CONTRACT 1 and 4: a worker, and the job it runs, are live while the last heartbeat is
# fresher than this many of that worker's heartbeat intervals.
LIVENESS_BEATS = 3


class SettingsError(ValueError):
    """A setting was refused at start (CONTRACT 2): the message names the flag."""


REDIS_DEFAULT_PORT = 6379
_REDIS_URL_SHAPE = "redis://[:password@]host[:port][/db]"


# ---- the values of --counter and --trusted-proxies: parsed strictly, since a typo should stop start-up ----


@dataclass(frozen=True)
class RedisAddress:
    """Where the counter lives, from ``redis://[[user]:password@]host[:port][/db]``."""

    host: str
    port: int = REDIS_DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """The address for log lines: never the password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """Parse a counter URL or raise ValueError saying what is wrong with it.

    The messages read after the flag name (``--counter must be ...``) and never
    repeat the password.
    """

    def bad(detail: str) -> ValueError:
        return ValueError(f"must be {_REDIS_URL_SHAPE} ({detail})")

    if not url.startswith("redis://"):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        raise bad(f"the scheme {scheme!r} is not redis" if scheme else "no redis:// scheme")
    if any(ch.isspace() for ch in url):
        raise bad("it contains white space")
    parts = urlsplit(url)
    if parts.query or url.endswith("?"):
        raise bad("a query string is not supported")
    if parts.fragment or "#" in url:
        raise bad("a fragment is not supported")
    if not parts.hostname:
        raise bad("no host")
    if parts.netloc.endswith(":"):
        raise bad("the port is empty")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        port = REDIS_DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise bad("the port must be a number from 1 to 65535")
    if parts.path in ("", "/"):
        db = 0
    elif parts.path[1:].isdigit() and parts.path[1:].isascii():
        db = int(parts.path[1:])
    else:
        raise bad("the database must be a number, as in /0")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if "@" in parts.netloc and not password:
        raise bad("a user part needs a non-empty password, as in redis://:password@host")
    return RedisAddress(parts.hostname, port, db, username, password)


def parse_networks(text: str) -> tuple[str, ...]:
    """``"127.0.0.1, 10.0.0.0/8, ::1"`` -> normalised networks; ValueError names a bad one."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"names {item!r}, which is not an IP address or CIDR network") from None
    return tuple(networks)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./recsvc-data"
    workers: int = 4
    job_timeout: float = 300.0
    max_retry_attempts: int = 3
    retry_window: float = 600.0
    retry_after: float = 2.0
    recovery_retry_after: float = 5.0
    download_timeout: float = 30.0
    max_recording_bytes: int = 209715200
    heartbeat_interval: float = 5.0
    max_wait: float = 20.0
    cache_max_bytes: int = 0
    allow_upstream: tuple[str, ...] = ("api.twilio.com",)
    admin_token: str | None = None
    counter: str = "memory://"
    store: str = "sqlite://"
    idle_timeout: float = 15.0
    max_connections: int = 256
    shutdown_grace: float = 10.0
    log_format: str = "text"
    processes: int = 1
    trusted_proxies: tuple[str, ...] = ()

    @property
    def liveness_window(self) -> float:
        """A worker is live while its heartbeat is fresher than this (CONTRACT 1)."""
        return LIVENESS_BEATS * self.heartbeat_interval

    @property
    def sweep_interval(self) -> float:
        """The sweeper runs every job-timeout / 2 seconds, at most 60 (CONTRACT 4)."""
        return min(self.job_timeout / 2, 60.0)

    @property
    def allows_loopback(self) -> bool:
        return "loopback" in self.allow_upstream


# ---- value parsers: each returns the value or raises ValueError(reason) ----

def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a positive number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\+?\d+", text.strip()):
            raise ValueError(f"must be a whole number of at least {minimum}")
        value = int(text)
        if value < minimum:
            raise ValueError(f"must be a whole number of at least {minimum}")
        return value
    return parse


def _port(text: str) -> int:
    value = _integer(0)(text)
    if value > 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def _host(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise ValueError("must be a host name or IP address")
    return text


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


_HOST_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _allow_list(text: str) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower() for h in text.split(",") if h.strip())
    if not hosts:
        raise ValueError("must name at least one host")
    for host in hosts:
        if host == "loopback":
            continue
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if not _HOST_NAME.match(host):
                raise ValueError(f"names an invalid host {host!r}") from None
    return hosts


def _counter_url(text: str) -> str:
    if text in ("memory://", "sqlite://"):
        return text
    if text.startswith("redis://"):
        parse_redis_url(text)  # raises ValueError with a reason that never repeats a password
        return text
    if text.startswith("sqlite://"):  # the counter always lives in the data dir's database
        raise ValueError("must be just sqlite:// (the counter lives in the data dir's database)")
    raise ValueError("must be memory://, sqlite:// or redis://host:port/db")


def _store_url(text: str) -> str:
    if text == "sqlite://":
        return text
    if text.startswith("redis://"):
        parse_redis_url(text)  # raises ValueError with a reason that never repeats a password
        return text
    raise ValueError("must be sqlite:// (the data dir's database) or redis://host:port/db")


def _log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError("must be text or json")
    return text


def _admin_token(text: str) -> str:
    if len(text) < 16:
        raise ValueError("must be at least 16 characters")
    return text


@dataclass(frozen=True)
class SettingRow:
    name: str
    flag: str
    env: str
    parse: Callable[[str], object]
    help: str


SETTINGS: tuple[SettingRow, ...] = (
    SettingRow("host", "--host", "RECSVC_HOST", _host, "listen address"),
    SettingRow("port", "--port", "RECSVC_PORT", _port, "listen port; 0 picks a free one"),
    SettingRow("data_dir", "--data-dir", "RECSVC_DATA_DIR", _non_empty, "holds recsvc.sqlite3 and recordings/"),
    SettingRow("workers", "--workers", "RECSVC_WORKERS", _integer(0), "download threads in this process; 0 = API only"),
    SettingRow("job_timeout", "--job-timeout", "RECSVC_JOB_TIMEOUT", _positive_number, "seconds before an active job counts as stuck"),
    SettingRow("max_retry_attempts", "--max-retry-attempts", "RECSVC_MAX_RETRY_ATTEMPTS", _integer(0), "retries allowed per call per window"),
    SettingRow("retry_window", "--retry-window", "RECSVC_RETRY_WINDOW", _positive_number, "quiet seconds after which the retry counter is gone"),
    SettingRow("retry_after", "--retry-after", "RECSVC_RETRY_AFTER", _positive_number, "Retry-After for an ordinary 202"),
    SettingRow("recovery_retry_after", "--recovery-retry-after", "RECSVC_RECOVERY_RETRY_AFTER", _positive_number, "Retry-After for a 202 after a retry"),
    SettingRow("download_timeout", "--download-timeout", "RECSVC_DOWNLOAD_TIMEOUT", _positive_number, "deadline of one whole upstream download"),
    SettingRow("max_recording_bytes", "--max-recording-bytes", "RECSVC_MAX_RECORDING_BYTES", _integer(1), "a bigger download fails with too_large"),
    SettingRow("heartbeat_interval", "--heartbeat-interval", "RECSVC_HEARTBEAT_INTERVAL", _positive_number, "how often workers beat; 3 missed beats = not alive"),
    SettingRow("max_wait", "--max-wait", "RECSVC_MAX_WAIT", _positive_number, "the longest Prefer: wait honoured"),
    SettingRow("cache_max_bytes", "--cache-max-bytes", "RECSVC_CACHE_MAX_BYTES", _integer(0), "past this, least recently played files are evicted; 0 = no limit"),
    SettingRow("allow_upstream", "--allow-upstream", "RECSVC_ALLOW_UPSTREAM", _allow_list, "comma list of hosts a recording_url may name; 'loopback' allows 127.0.0.0/8 and ::1 over http"),
    SettingRow("admin_token", "--admin-token", "RECSVC_ADMIN_TOKEN", _admin_token, "enables /admin/*; without it they answer 404"),
    SettingRow("counter", "--counter", "RECSVC_COUNTER", _counter_url, "retry counter backend: memory://, sqlite:// (shared through the data dir's database) or redis://host:port/db"),
    SettingRow("idle_timeout", "--idle-timeout", "RECSVC_IDLE_TIMEOUT", _positive_number, "a connection idle, or slow to send its request head, this long is closed"),
    SettingRow("max_connections", "--max-connections", "RECSVC_MAX_CONNECTIONS", _integer(1), "connections served at once; the next one gets 503"),
    SettingRow("shutdown_grace", "--shutdown-grace", "RECSVC_SHUTDOWN_GRACE", _positive_number, "on SIGTERM, how long in-flight downloads may take to finish"),
    SettingRow("log_format", "--log-format", "RECSVC_LOG_FORMAT", _log_format, "text, or json: one JSON object per line (time, level, logger, message, exception)"),
    SettingRow("trusted_proxies", "--trusted-proxies", "RECSVC_TRUSTED_PROXIES", parse_networks, "comma list of proxy addresses or CIDRs whose Forwarded / X-Forwarded-* headers are believed; default none"),
    SettingRow("store", "--store", "RECSVC_STORE", _store_url, "where businesses, calls and jobs live: sqlite:// (the data dir's database) or redis://host:port/db, shared by several nodes"),
    SettingRow("processes", "--processes", "RECSVC_PROCESSES", _integer(1), "serving processes sharing the listening socket (serve only); above 1 needs a shared --counter"),
)


# Values never echoed in an error message.
SECRET_SETTINGS = frozenset({"admin_token"})


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Add one string flag per row; values are parsed later, all in one place."""
    for row in SETTINGS:
        parser.add_argument(row.flag, dest=row.name, metavar=row.env.removeprefix("RECSVC_"),
                            default=None, help=f"{row.help} (env {row.env})")


def load_settings(flags: Mapping[str, str | None] | argparse.Namespace,
                  environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from flag values (None = not given) and the environment.

    ``overrides`` are already-typed values that win over both (used by the
    demo and by tests that build a service in-process).
    """
    if isinstance(flags, argparse.Namespace):
        flags = vars(flags)
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for row in SETTINGS:
        text = flags.get(row.name)
        if text is None:  # a flag beats its variable; errors name the flag either way (CONTRACT 2)
            text = environ.get(row.env)
        if text is None:
            continue
        try:
            values[row.name] = row.parse(text)
        except ValueError as exc:
            shown = "(hidden)" if row.name in SECRET_SETTINGS or "@" in text else repr(text)
            raise SettingsError(f"{row.flag} {exc}, got {shown}") from None
    values.update(overrides)
    known = {f.name for f in fields(Settings)}
    unknown = set(values) - known
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    settings = Settings(**values)
    if settings.store != "sqlite://" and settings.counter != "memory://":
        # The Redis store counts retries on its own server, in the same script as the job they create.
        raise SettingsError(f"--counter cannot be given with --store redis://: the retry counter lives in the "
                            f"store's Redis, got {'(hidden)' if '@' in settings.counter else settings.counter}")
    if settings.processes > 1 and settings.counter == "memory://" and settings.store == "sqlite://":
        # memory:// counts in one process: N processes would each allow max-retry-attempts.
        raise SettingsError(f"--processes {settings.processes} needs a retry counter the processes share: "
                            "--counter sqlite:// or redis://host:port/db, got memory://")
    return settings


# RECSVC_* variables read elsewhere than the settings table: the link secret
# (recsvc.core.links), the player's and the kit's defaults (recsvc.player.fetch,
# recsvc.kit.conformance), and the test suite's knobs.
OTHER_VARIABLES = frozenset({
    "RECSVC_LINK_SECRET", "RECSVC_BASE_URL", "RECSVC_TOKEN",
    "RECSVC_REQUIRE_EXTERNAL", "RECSVC_FUZZ_SEED", "RECSVC_FUZZ_INPUTS", "RECSVC_KILL_ROUNDS", "RECSVC_KILL_SEED",
})


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """Each ``RECSVC_*`` variable that nothing reads, with the known name closest to it (or None).

    A misspelled variable would otherwise be ignored without a word; start-up
    warns about each one by name.
    """
    import difflib

    environ = os.environ if environ is None else environ
    known = {row.env for row in SETTINGS} | OTHER_VARIABLES
    # Compared without the common prefix, which would make every pair look alike.
    suffixes = sorted(name.removeprefix("RECSVC_") for name in known)
    unknown = []
    for name in sorted(environ):
        if name.startswith("RECSVC_") and name not in known:
            closest = difflib.get_close_matches(name.removeprefix("RECSVC_"), suffixes, n=1, cutoff=0.6)
            unknown.append((name, "RECSVC_" + closest[0] if closest else None))
    return unknown
