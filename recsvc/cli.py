"""The command line: ``python -m recsvc serve | worker | ...``.

Settings are validated once here; a bad one is one line on stderr naming
the flag and exit status 2 (CONTRACT 2). Signal handlers only set a flag;
the main thread then stops the service: stop accepting, let in-flight
downloads finish within ``--shutdown-grace``, exit 0. What is still running
after that is left to the orphan rule of the next start.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import signal
import sys
import threading
import time

from . import __version__
from .clock import iso_utc
from .settings import SETTINGS, SettingsError, add_setting_flags, load_settings, unknown_variables

log = logging.getLogger("recsvc")


class _PerSecond:
    """The text of the current second, computed once per second and shared by every record.

    The state is one (second, text) tuple replaced whole, so threads formatting
    at once read a consistent pair without a lock; at worst two of them compute
    the same second's text.
    """

    def __init__(self, render):
        self._render = render  # whole second -> its text
        self._cached = (None, "")

    def __call__(self, second: int) -> str:
        cached_second, text = self._cached
        if cached_second != second:
            text = self._render(second)
            self._cached = (second, text)
        return text


class TextLogFormatter(logging.Formatter):
    """The text lines: ``asctime levelname name: message``, the asctime of each second formatted once.

    ``logging.Formatter.formatTime`` runs localtime and strftime per record:
    ~2 us of every access-log line. The seconds part depends on the whole
    second alone (localtime floors, and zone offsets are whole seconds), so
    it is kept; the milliseconds are appended per record exactly as the base
    class does.
    """

    FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

    def __init__(self):
        super().__init__(self.FORMAT)
        self._seconds = _PerSecond(lambda second: time.strftime(self.default_time_format, self.converter(second)))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt:
            return super().formatTime(record, datefmt)
        return self.default_msec_format % (self._seconds(math.floor(record.created)), record.msecs)


# The arguments of recsvc.httpcore's access line, in order, as JSON fields.
ACCESS_FIELDS = ("client", "method", "path", "status", "bytes", "duration_ms")


class JsonLogFormatter(logging.Formatter):
    """``--log-format json``: one JSON object per line, for log shippers.

    Besides ``time``, ``level``, ``logger`` and ``message``, an access line
    carries its parts as fields (``ACCESS_FIELDS``), and a record with a
    ``fields`` dict (the listening line) carries those.
    """

    _encoder = json.JSONEncoder(ensure_ascii=False)  # json.dumps(..., ensure_ascii=False) builds one per call

    def __init__(self):
        super().__init__()
        self._seconds = _PerSecond(lambda second: iso_utc(second)[:-4])  # "...T23:16:31."

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        elif record.name == "recsvc.access" and isinstance(record.args, tuple) and len(record.args) == len(ACCESS_FIELDS):
            entry.update(zip(ACCESS_FIELDS, record.args))
            entry["duration_ms"] = round(entry["duration_ms"], 1)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self._encoder.encode(entry)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``iso_utc(record.created)``, its seconds part formatted once per second."""
        # datetime.fromtimestamp rounds to whole microseconds, half to even, which may
        # carry into the next second; round() on the fraction does the same.
        if record.created < 0:
            return iso_utc(record.created)
        fraction, second = math.modf(record.created)
        micros = round(fraction * 1e6)
        if micros == 1_000_000:
            second, micros = second + 1, 0
        return f"{self._seconds(int(second))}{micros // 1000:03d}Z"


class _LineHandler(logging.StreamHandler):
    """A StreamHandler that does not flush after each line when the stream already did.

    sys.stderr is line-buffered, or unbuffered under ``python -u`` /
    PYTHONUNBUFFERED: either way each line reaches the file descriptor in
    ``write``, and the handler's extra flush is only a second lock round per
    access-log line. Any other stream is flushed per line as before.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._writes_through = bool(getattr(stream, "line_buffering", False)) or isinstance(
            getattr(stream, "buffer", None), io.RawIOBase)

    def emit(self, record: logging.LogRecord) -> None:
        if not self._writes_through:
            super().emit(record)
            return
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:  # as StreamHandler.emit
            raise
        except Exception:
            self.handleError(record)


def configure_logging(log_format: str = "text") -> None:
    """INFO and above to stderr (CONTRACT 2), as text lines or JSON objects."""
    handler = _LineHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if log_format == "json" else TextLogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # No record names its caller's file, thread or process (the formats do not print
    # them): skipping those lookups takes ~20 us off every access-log line.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsvc", description="Call recordings with a status contract that always ends.")
    parser.add_argument("--version", action="version", version=f"recsvc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="HTTP API and, unless --workers 0, download workers")
    add_setting_flags(serve)
    # Set by ``serve --processes N`` on the serving processes it starts (recsvc.prefork).
    for hidden in ("--listen-fd", "--parent-fd", "--queued-fd", "--process-index"):
        serve.add_argument(hidden, type=int, default=None, help=argparse.SUPPRESS)
    # The demo's module is imported only when it runs: serve and worker do without its imports.
    demo = commands.add_parser("demo", help="the teaching demo: recsvc, a fake upstream and a scenario page")
    add_setting_flags(demo)
    demo.add_argument("--fresh", action="store_true",
                      help="start from an empty data dir (removes the demo's data dir first)")
    worker = commands.add_parser("worker", help="download workers only, no HTTP, on the same data dir")
    add_setting_flags(worker)
    commands.add_parser("fetch", help="wait for a recording as a player would and save it (see: fetch --help)")
    commands.add_parser("jobs", help="the jobs, newest first, as a table: from the admin API or the data dir (see: jobs --help)")
    commands.add_parser("sample-upstream", help="one sample recording on 127.0.0.1 for a first recording (see: sample-upstream --help)")
    commands.add_parser("conformance", help="check an implementation of the contract from outside (see: conformance --help)")
    return parser


def _announce(line: str) -> None:
    """One whole line on stderr in a single write: print() writes the text and its newline
    separately, and a worker thread's log line could land between them (CONTRACT 2's
    listening line must stay one line)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


_SIGNAL_CHECK_SECONDS = 0.2


class StopSignals:
    """SIGINT/SIGTERM, counted: the first asks for a graceful stop, a second for a stop at once.

    The handlers only set events; the main thread acts on them within
    ``_SIGNAL_CHECK_SECONDS``.
    """

    def __init__(self):
        self.stop = threading.Event()
        self.stop_now = threading.Event()

    def install(self) -> "StopSignals":
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum, _frame) -> None:
        if self.stop.is_set():
            self.stop_now.set()
        self.stop.set()


def _stop_on_signal() -> StopSignals:
    """SIGINT/SIGTERM set the returned events. Installed before the listening line, so none is missed."""
    return StopSignals().install()


def _wait_for_signal(signals: StopSignals | None = None) -> None:
    """Return once SIGINT/SIGTERM has set ``signals.stop``.

    Python runs signal handlers in the main thread, between bytecodes. The
    kernel may deliver the signal to any thread; one that lands elsewhere
    does not interrupt the main thread's lock wait, so a long wait here
    could hold up the handler, and the stop, for that long (seen: SIGTERM
    ignored while a download thread was busy). Short waits bound that delay.
    """
    signals = signals if signals is not None else _stop_on_signal()
    while not signals.stop.wait(_SIGNAL_CHECK_SECONDS):
        pass


STOPPED_AT_ONCE = 1  # the exit status after a second signal: downloads were cut short


def _stop_gracefully(app, signals: StopSignals) -> bool:
    """``app.stop()``, unless a second signal comes first: then exit at once, saying so.

    The stop runs in a thread so that the main thread keeps to short waits
    and sees the second signal within ``_SIGNAL_CHECK_SECONDS``.
    """
    result: list[bool] = []
    stopper = threading.Thread(target=lambda: result.append(app.stop()), name="recsvc-stop", daemon=True)
    stopper.start()
    while stopper.is_alive():
        if signals.stop_now.wait(_SIGNAL_CHECK_SECONDS):
            _announce("recsvc: second signal: stopping now; downloads still running are left to the "
                      "orphan rule of the next start")
            logging.shutdown()
            os._exit(STOPPED_AT_ONCE)
    return bool(result and result[0])


def _given_flags(args: argparse.Namespace) -> list[str]:
    """The setting flags given on the command line, to start a serving process with the same."""
    flags = []
    for row in SETTINGS:
        value = getattr(args, row.name, None)
        if value is not None:
            flags += [row.flag, value]
    return flags


def _fail(line: str) -> int:
    """A start-up failure: one line on stderr, exit status 2 (CONTRACT 2)."""
    _announce(f"recsvc: error: {line}")
    return 2


def _counter_shown(counter: str) -> str:
    """The counter URL for the start-up line: a Redis password never appears."""
    if counter.startswith("redis://"):
        from .redis_counter import parse_redis_url
        return str(parse_redis_url(counter))
    return counter


def _log_starting(settings, app, http: bool) -> None:
    """The start-up INFO line: what this process does, with which settings (as fields in JSON)."""
    fields = {"event": "starting", "version": __version__, "command": "serve" if http else "worker",
              "data_dir": os.path.abspath(settings.data_dir)}
    if http:
        fields["url"] = app.base_url
    fields["workers"] = settings.workers
    if http and settings.processes > 1:
        fields["processes"] = settings.processes
    fields["counter"] = _counter_shown(settings.counter)
    if http:
        fields["admin_api"] = bool(settings.admin_token)
    parts = [f"data dir {fields['data_dir']}"]
    if http:
        parts.append(f"listening on {app.base_url}")
    parts.append(f"workers {settings.workers}")
    if "processes" in fields:
        parts.append(f"processes {settings.processes}")
    parts.append(f"counter {fields['counter']}")
    if http:
        parts.append("admin API " + ("on" if settings.admin_token else "off (no --admin-token)"))
    log.info("recsvc %s %s: %s", __version__, fields["command"], ", ".join(parts), extra={"fields": fields})


def _warn_unknown_variables() -> None:
    for name, closest in unknown_variables():
        hint = f" (did you mean {closest}?)" if closest else ""
        log.warning("ignored unknown environment variable %s%s", name, hint)


def run_service(args: argparse.Namespace, http: bool) -> int:
    from .app import App, StartError, prepare_data_dir

    child = http and args.listen_fd is not None
    try:
        # A serving process of --processes N answers requests only (recsvc.prefork).
        settings = load_settings(args, workers=0) if child else load_settings(args)
    except SettingsError as exc:
        return _fail(str(exc))
    if not http and settings.workers == 0:
        return _fail("--workers must be at least 1 for the worker command, got '0'")
    if not http and settings.processes > 1:
        return _fail("--processes is for the serve command; start more worker commands instead")
    configure_logging(settings.log_format)
    if not child:
        _warn_unknown_variables()
    signals = _stop_on_signal()  # before the listening line: a signal right after it is not missed
    listen_socket = None
    if child:
        from .prefork import adopt_socket, job_queued_notifier, watch_parent
        listen_socket = adopt_socket(args.listen_fd)
    app = None
    try:
        prepare_data_dir(settings.data_dir)
        app = App(settings, process_index=args.process_index if child else 0)
        app.start(http=http, listen_socket=listen_socket)
    except Exception as exc:  # every start-up failure is one line, never a traceback
        if app is not None:
            try:
                app.stop(grace=0)
            except Exception:
                log.debug("cleanup after a failed start failed", exc_info=True)
        if isinstance(exc, StartError):
            return _fail(str(exc))
        return _fail(f"cannot start: {getattr(exc, 'strerror', None) or exc} ({type(exc).__name__})")
    if child:
        watch_parent(args.parent_fd, signals.stop.set, app.waiters.job_ended)
        app.job_queue_listeners.append(job_queued_notifier(args.queued_fd))
    group = None
    if settings.processes > 1 and not child:
        from .prefork import ServingProcesses
        group = ServingProcesses(app.http.socket, _given_flags(args), settings.processes - 1,
                                 stop_timeout=settings.shutdown_grace + 5,
                                 on_job_queued=app.pool.wake if app.pool else (lambda: None)).start()
        app.job_end_listeners.append(group.job_ended)
    if child:
        log.info("serving process %d ready on %s", args.process_index, app.base_url)
    else:
        _log_starting(settings, app, http)
        if http:
            _announce_listening(settings, app)
        else:
            _announce(f"recsvc worker {app.pool.worker_id} running on {settings.data_dir}")
    _wait_for_signal(signals)
    if group is not None:
        group.stop()
    log.info("stopping: waiting up to %gs for downloads in flight (a second signal stops at once)",
             settings.shutdown_grace)
    finished = _stop_gracefully(app, signals)
    if group is not None:
        group.wait()
    if not finished:
        log.warning("downloads still running at exit are left to the orphan rule of the next start")
    return 0


def _announce_listening(settings, app) -> None:
    """CONTRACT 2's listening line; with ``--log-format json``, the same text as one JSON
    object's message, with the address as fields."""
    line = f"recsvc listening on {app.base_url}"
    if settings.log_format == "json":
        host, port = app.address
        record = logging.LogRecord("recsvc", logging.INFO, "", 0, "%s", (line,), None)
        record.fields = {"event": "listening", "url": app.base_url, "host": host, "port": port}
        line = JsonLogFormatter().format(record)
    _announce(line)


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo_main
    signals = _stop_on_signal()
    return demo_main(args, wait_for_signal=lambda: _wait_for_signal(signals))


# One line per command; parsing stays in _parser().
COMMANDS = {
    "serve": lambda args: run_service(args, http=True),
    "worker": lambda args: run_service(args, http=False),
    "demo": run_demo,
}


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def cap_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let this process's threads share ``arenas`` glibc malloc arenas; True if the cap was set.

    glibc gives each new thread that allocates an arena of its own, up to 8
    per core, and an arena keeps its freed memory. recsvc's threads spend
    their time waiting on sockets and on the GIL, so their own arenas bought
    no throughput in ``make bench`` (poll_202 and file_1m within run-to-run
    noise) and cost about 0.2 MiB per download thread: the first process of
    ``make bench`` (16 download threads) held 32.6 to 32.8 MiB after seeding,
    and 29.1 to 29.4 with the cap. Set ``MALLOC_ARENA_MAX`` in the
    environment to choose otherwise; it is then left alone, as are C
    libraries other than glibc (musl, macOS).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        import ctypes
        return ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas) == 1
    except (AttributeError, ImportError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cap_malloc_arenas()  # before any thread allocates
    if argv[:1] == ["fetch"]:  # the player on the command line has its own flags (recsvc.fetch)
        from .fetch import main as fetch_main
        return fetch_main(argv[1:])
    if argv[:1] == ["jobs"]:  # the operator's view of the jobs has its own flags (recsvc.jobs_command)
        from .jobs_command import main as jobs_main
        return jobs_main(argv[1:])
    if argv[:1] == ["sample-upstream"]:  # a sample recording on loopback (recsvc.sample_upstream)
        from .sample_upstream import main as sample_main
        return sample_main(argv[1:])
    if argv[:1] == ["conformance"]:  # the conformance kit has its own flags (recsvc.conformance)
        from .conformance import main as conformance_main
        return conformance_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    runner = COMMANDS.get(args.command)
    if runner is None:
        parser.print_help(sys.stderr)
        return 2
    return runner(args)
