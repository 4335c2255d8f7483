"""`recsvc fetch`: play a recording to a file the way CONTRACT 7 tells a player to.

Usage: recsvc fetch CALL_SID [-o FILE] [--token T] [--base-url URL]
                             [--lang he|en] [--max-wait S]

The token comes from ``--token`` or ``RECSVC_TOKEN``; the base URL from
``--base-url``, ``RECSVC_BASE_URL`` or ``http://127.0.0.1:8080``. The file is
``{CALL_SID}.{wav|mp3|ogg|flac|bin}`` unless ``-o`` names one; ``-o -`` writes
the bytes to stdout. A file appears whole or not at all (temporary file,
fsync, ``os.replace``). While the player waits, stderr shows the elapsed
time, the attempt and what the server said: one updating line on a terminal,
one line per wait otherwise.

Exit status: 0 saved, 3 not found, 4 worker offline, 5 timeout, 1 any other
error (401 included), 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from typing import Mapping

from recsvc.client import (
    ClientError,
    Progress,
    RecordingClient,
    RecordingError,
    RecordingNotFound,
    RecordingTimeout,
    WorkerOffline,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_MAX_WAIT = 180.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_WORKER_OFFLINE = 4
EXIT_TIMEOUT = 5

# Most specific first: every stop is a RecordingError.
EXIT_CODES: tuple[tuple[type[RecordingError], int], ...] = (
    (RecordingNotFound, EXIT_NOT_FOUND),
    (WorkerOffline, EXIT_WORKER_OFFLINE),
    (RecordingTimeout, EXIT_TIMEOUT),
    (ClientError, EXIT_ERROR),
    (RecordingError, EXIT_ERROR),
)

# CONTRACT 5: the content types the service serves.
EXTENSIONS = {
    "audio/wav": "wav",
    "audio/mpeg": "mp3",
    "audio/ogg": "ogg",
    "audio/flac": "flac",
}

_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsvc fetch",
        description="Save a call's recording, waiting for it as CONTRACT section 7 tells a player.",
    )
    parser.add_argument("call_sid", metavar="CALL_SID")
    parser.add_argument("-o", "--output", metavar="FILE", help="where to save; '-' for stdout (default CALL_SID.EXT)")
    parser.add_argument("--token", help="business bearer token (default: $RECSVC_TOKEN)")
    parser.add_argument("--base-url", metavar="URL", help=f"service URL (default: $RECSVC_BASE_URL or {DEFAULT_BASE_URL})")
    parser.add_argument("--lang", choices=("he", "en"), default="en", help="language of the messages (default en)")
    parser.add_argument(
        "--max-wait",
        metavar="S",
        type=_seconds,
        default=DEFAULT_MAX_WAIT,
        help=f"give up after this many seconds (default {DEFAULT_MAX_WAIT:g})",
    )
    return parser


def main(argv: list[str] | None = None, *, stdout=None, stderr=None, environ: Mapping[str, str] | None = None) -> int:
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    environ = os.environ if environ is None else environ
    parser = build_parser()
    try:
        # argparse writes to sys.stdout/sys.stderr; send that to our streams.
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
            token = args.token if args.token is not None else environ.get("RECSVC_TOKEN")
            if not token:
                parser.error("a token is required: --token T or RECSVC_TOKEN")
            base_url = args.base_url or environ.get("RECSVC_BASE_URL") or DEFAULT_BASE_URL
            try:
                progress = ProgressLine(stderr, args.call_sid)
                client = RecordingClient(
                    base_url, token, max_wait=args.max_wait, lang=args.lang, on_progress=progress.show
                )
            except ValueError as err:
                parser.error(str(err))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE

    try:
        recording = client.wait_for_recording(args.call_sid)
    except RecordingError as err:
        progress.finish()
        print(err.message, file=stderr)
        return next(code for kind, code in EXIT_CODES if isinstance(err, kind))
    except KeyboardInterrupt:
        progress.finish()
        print("recsvc fetch: interrupted", file=stderr)
        return 130
    progress.finish()

    if args.output == "-":
        stdout.flush()
        out = getattr(stdout, "buffer", stdout)
        out.write(recording.body)
        out.flush()
        return EXIT_OK
    path = args.output or default_filename(args.call_sid, recording.content_type)
    try:
        write_atomically(path, recording.body)
    except OSError as err:
        print(f"recsvc fetch: cannot write {path}: {err.strerror or err}", file=stderr)
        return EXIT_ERROR
    print(
        f"saved {path} ({len(recording.body)} bytes, {recording.content_type}) "
        f"after {recording.requests} request(s), {recording.seconds:.1f}s",
        file=stderr,
    )
    return EXIT_OK


def default_filename(call_sid: str, content_type: str) -> str:
    # Only a valid call_sid is ever served (CONTRACT 3, row 2); the
    # replacement keeps a file name in the current directory regardless.
    return f"{_UNSAFE_IN_NAME.sub('_', call_sid)}.{EXTENSIONS.get(content_type, 'bin')}"


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one, never part."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise


class ProgressLine:
    """The player's waits on stderr: one line rewritten with '\\r' on a terminal, plain lines otherwise."""

    def __init__(self, stream, call_sid: str) -> None:
        self._stream = stream
        self._call_sid = call_sid
        isatty = getattr(stream, "isatty", None)
        self._terminal = bool(isatty and isatty())
        self._width = 0  # length of the line on screen, to blank it out

    def show(self, event: Progress) -> None:
        text = (
            f"{self._call_sid}: {event.elapsed:.0f}s elapsed, attempt {event.attempt}, "
            f"{event.said}; next try in {event.retry_after:.3g}s"
        )
        if self._terminal:
            self._stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._terminal and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {value!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {value!r}")
    return seconds


if __name__ == "__main__":
    sys.exit(main())
