"""`recsvc fetch`: play a recording to a file the way CONTRACT 7 tells a player to.

Usage: recsvc fetch CALL_SID [-o FILE] [--token T] [--base-url URL]
                             [--lang he|en] [--max-wait S]

The token comes from ``--token`` or ``RECSVC_TOKEN``; the base URL from
``--base-url``, ``RECSVC_BASE_URL`` or ``http://127.0.0.1:8080``. The file is
``{CALL_SID}.{wav|mp3|ogg|flac|bin}`` unless ``-o`` names one; ``-o -`` writes
the bytes to stdout, and is refused (exit 2) when stdout is a terminal. A
file appears whole or not at all (temporary file, fsync, ``os.replace``).

While the player waits, stderr shows at least every 5 s the seconds waited,
the attempt, the server asked and what it last heard ("connection refused",
"202 attempt 1/3, job running"), a held request included: on a terminal one
line rewritten in place and cut to the terminal's width, otherwise one plain
line per report. ``--lang he`` says every line in Hebrew. ``--max-wait 0``
is one request.

Exit status (recsvc.player.outcomes.OUTCOMES): 0 saved, 3 call_not_found or
not_found, 4 worker_offline, 5 timeout, 6 download_failed, 7 unavailable,
1 any other stop or error (server_error, error, an unwritable file), 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from typing import Mapping

from ..core.media import AUDIO_TYPES
from .client import Progress, RecordingClient, RecordingError
from .outcomes import EXIT_ERROR, EXIT_OK, EXIT_USAGE, LRI, OUTCOMES, PDI, exit_codes_help, words

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_MAX_WAIT = 180.0
DEFAULT_COLUMNS = 80

_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsvc fetch",
        description="Save a call's recording, waiting for it as CONTRACT section 7 tells a player.",
        epilog="exit status:\n" + exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("call_sid", metavar="CALL_SID")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="where to save; '-' for stdout, never a terminal (default CALL_SID.EXT)")
    parser.add_argument("--token", help="business bearer token (default: $RECSVC_TOKEN)")
    parser.add_argument("--base-url", metavar="URL", help=f"service URL (default: $RECSVC_BASE_URL or {DEFAULT_BASE_URL})")
    parser.add_argument("--lang", choices=("he", "en"), default="en", help="language of every line (default en)")
    parser.add_argument(
        "--max-wait",
        metavar="S",
        type=_seconds,
        default=DEFAULT_MAX_WAIT,
        help=f"give up after this many seconds; 0 is one request (default {DEFAULT_MAX_WAIT:g})",
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
                progress = ProgressLine(stderr, args.call_sid, args.lang, environ)
                client = RecordingClient(
                    base_url, token, max_wait=args.max_wait, lang=args.lang, on_progress=progress.show
                )
            except ValueError as err:
                parser.error(str(err))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.output == "-" and _isatty(stdout):
        # Audio bytes on a terminal are garbage at best, escape sequences at worst.
        print(words("stdout_is_terminal", args.lang), file=stderr)
        return EXIT_USAGE

    try:
        recording = client.wait_for_recording(args.call_sid)
    except RecordingError as err:
        progress.finish()
        print(err.message, file=stderr)
        return OUTCOMES[err.outcome].exit_code
    except KeyboardInterrupt:
        progress.finish()
        print(words("interrupted", args.lang), file=stderr)
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
        print(words("cannot_write", args.lang, path=path, reason=str(err.strerror or err)), file=stderr)
        return EXIT_ERROR
    print(
        words("saved", args.lang, path=path, size=len(recording.body), content_type=recording.content_type,
              requests=recording.requests, seconds=f"{recording.seconds:.1f}"),
        file=stderr,
    )
    return EXIT_OK


def default_filename(call_sid: str, content_type: str) -> str:
    # Only a valid call_sid is ever served (CONTRACT 3, row 2); the
    # replacement keeps a file name in the current directory regardless.
    return f"{_UNSAFE_IN_NAME.sub('_', call_sid)}.{AUDIO_TYPES.get(content_type, 'bin')}"


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
    """The player's reports on stderr: one line rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self, stream, call_sid: str, lang: str = "en", environ: Mapping[str, str] | None = None) -> None:
        self._stream = stream
        self._call_sid = call_sid
        self._lang = lang
        self._environ = os.environ if environ is None else environ
        self._terminal = _isatty(stream)
        self._shown = False  # a line is on screen, to be ended by finish()

    def show(self, event: Progress) -> None:
        text = event.text(self._call_sid, self._lang)
        if self._terminal:
            # "\r" back to the start, the line cut to fit (a wrapped line could
            # not be rewritten), then erase what a longer line left behind.
            self._stream.write("\r" + fit(text, self._columns() - 1) + "\x1b[K")
            self._shown = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
            self._shown = False

    def _columns(self) -> int:
        """The terminal's width now (it may have been resized); $COLUMNS or 80 when it cannot be asked."""
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            pass
        columns = self._environ.get("COLUMNS", "")
        return int(columns) if columns.isdigit() and int(columns) > 1 else DEFAULT_COLUMNS


def fit(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` columns, an ellipsis marking the cut.

    The isolate marks around server text in Hebrew (LRI ... PDI) take no
    column; a left-to-right run the cut ends is closed before the ellipsis
    (CONTRACT 7: server text keeps its own run)."""
    if len(text) - text.count(LRI) - text.count(PDI) <= width:
        return text
    kept, columns = [], 0
    for char in text:
        if char not in (LRI, PDI):
            if columns == max(width - 1, 0):
                break
            columns += 1
        kept.append(char)
    cut = "".join(kept)
    return cut + PDI * max(cut.count(LRI) - cut.count(PDI), 0) + "…"


def _isatty(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


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
