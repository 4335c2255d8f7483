"""The command line: ``python -m recsvc serve | worker | ...``.

Settings are validated once here; a bad one is one line on stderr naming
the flag and exit status 2 (CONTRACT 2). Signal handlers only set a flag;
the main thread then stops the service: stop accepting, let in-flight
downloads finish within ``--shutdown-grace``, exit 0. What is still running
after that is left to the orphan rule of the next start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from . import __version__
from .contract.settings import SETTINGS, SettingsError, add_setting_flags, load_settings, parse_redis_url, unknown_variables
from .run.logs import JsonLogFormatter, configure_logging

log = logging.getLogger("recsvc")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsvc", description="Call recordings with a status contract that always ends.")
    parser.add_argument("--version", action="version", version=f"recsvc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="HTTP API and, unless --workers 0, download workers")
    add_setting_flags(serve)
    # Set by ``serve --processes N`` on the serving processes it starts (recsvc.run.prefork).
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
    commands.add_parser("migrate", help="move a stopped node's SQLite state into an empty Redis store (see: migrate --help)")
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


def _fail(line: str, status: int = 2) -> int:
    """A start-up failure: one line on stderr, exit status 2 (CONTRACT 2), or 1 for a fault that
    may pass by itself (StartError.passing), which a supervisor restarts."""
    _announce(f"recsvc: error: {line}")
    return status


def _counter_shown(counter: str) -> str:
    """The counter URL for the start-up line: a Redis password never appears."""
    if counter.startswith("redis://"):
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
    from .run.app import App, StartError, prepare_data_dir

    child = http and args.listen_fd is not None
    try:
        # A serving process of --processes N answers requests only (recsvc.run.prefork).
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
        from .run.prefork import adopt_socket, job_queued_notifier, watch_parent
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
            return _fail(str(exc), 1 if exc.passing else 2)
        return _fail(f"cannot start: {getattr(exc, 'strerror', None) or exc} ({type(exc).__name__})")
    if child:
        watch_parent(args.parent_fd, signals.stop.set, app.waiters.job_ended)
        app.job_queue_listeners.append(job_queued_notifier(args.queued_fd))
    group = None
    if settings.processes > 1 and not child:
        from .run.prefork import ServingProcesses
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
    from .demo.demo import run_demo as demo_main
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
    their time waiting on sockets and on the GIL, so their own arenas buy no
    throughput and only hold memory per thread (docs/measurements.md). Set ``MALLOC_ARENA_MAX`` in the
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
    if argv[:1] == ["fetch"]:  # the player on the command line has its own flags (recsvc.player.fetch)
        from .player.fetch import main as fetch_main
        return fetch_main(argv[1:])
    if argv[:1] == ["jobs"]:  # the operator's view of the jobs has its own flags (recsvc.run.jobs)
        from .run.jobs import main as jobs_main
        return jobs_main(argv[1:])
    if argv[:1] == ["migrate"]:  # SQLite to Redis, one move (recsvc.storage.migrate)
        from .run.app import DATABASE_FILE
        from .storage.migrate import main as migrate_main
        return migrate_main(argv[1:], database_file=DATABASE_FILE)
    if argv[:1] == ["sample-upstream"]:  # a sample recording on loopback (recsvc.demo.sample_upstream)
        from .demo.sample_upstream import main as sample_main
        return sample_main(argv[1:])
    if argv[:1] == ["conformance"]:  # the conformance kit has its own flags (recsvc.kit.conformance)
        from .kit.conformance import main as conformance_main
        return conformance_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    runner = COMMANDS.get(args.command)
    if runner is None:
        parser.print_help(sys.stderr)
        return 2
    return runner(args)
