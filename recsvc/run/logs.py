"""Log lines on stderr (CONTRACT 2): text or JSON, one whole line per record, cheap per access line."""

from __future__ import annotations

import io
import json
import logging
import math
import sys
import time

from ..contract.clock import iso_utc


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

    ``logging.Formatter.formatTime`` runs localtime and strftime per record,
    on every access-log line. The seconds part depends on the whole
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


# The arguments of recsvc.http.server's access line, in order, as JSON fields.
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
    # them): those lookups would be work on every access-log line for nothing.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
