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
import signal
import sys
import threading

from . import __version__
from .settings import SettingsError, add_setting_flags, load_settings

log = logging.getLogger("recsvc")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsvc", description="Call recordings with a status contract that always ends.")
    parser.add_argument("--version", action="version", version=f"recsvc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="HTTP API and, unless --workers 0, download workers")
    add_setting_flags(serve)
    worker = commands.add_parser("worker", help="download workers only, no HTTP, on the same data dir")
    add_setting_flags(worker)
    commands.add_parser("fetch", help="wait for a recording as a player would and save it (see: fetch --help)")
    return parser


def _announce(line: str) -> None:
    """One whole line on stderr in a single write: print() writes the text and its newline
    separately, and a worker thread's log line could land between them (CONTRACT 2's
    listening line must stay one line)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _wait_for_signal() -> None:
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(3600):
        pass


def run_service(args: argparse.Namespace, http: bool) -> int:
    from .app import App

    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"recsvc: error: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    try:
        app = App(settings).start(http=http)
    except OSError as exc:
        print(f"recsvc: error: cannot start: {exc}", file=sys.stderr)
        return 1
    if http:
        _announce(f"recsvc listening on {app.base_url}")
    else:
        _announce(f"recsvc worker {app.pool.worker_id if app.pool else '(no threads)'} running on "
                  f"{settings.data_dir}")
    _wait_for_signal()
    log.info("stopping: waiting up to %gs for downloads in flight", settings.shutdown_grace)
    finished = app.stop()
    if not finished:
        log.warning("downloads still running at exit are left to the orphan rule of the next start")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fetch"]:  # the player on the command line has its own flags (recsvc.fetch)
        from .fetch import main as fetch_main
        return fetch_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return run_service(args, http=True)
    if args.command == "worker":
        return run_service(args, http=False)
    parser.print_help(sys.stderr)
    return 2
