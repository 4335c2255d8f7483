"""--log-format json (RECSVC_LOG_FORMAT): every log line is one JSON object, access lines included."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, request, spawn_recsvc
from recsvc.run.logs import JsonLogFormatter

LISTENING = "recsvc listening on "


def read_until_listening(proc: subprocess.Popen, timeout: float = 10) -> tuple[str, list[str]]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if not line:
            break
        lines.append(line)
        if line.startswith("{") and json.loads(line).get("event") == "listening":
            return json.loads(line)["url"], lines
    proc.kill()
    raise AssertionError("recsvc did not start listening:\n" + "".join(lines))


def test_json_log_lines_parse_and_name_time_level_logger_message(tmp_path):
    proc = spawn_recsvc("serve", tmp_path / "data", "--port", "0", "--log-format", "json")
    try:
        base_url, before = read_until_listening(proc)
        assert request(base_url, "GET", "/healthz?sig=secret-value").status == 200
        assert request(base_url, "GET", "/no/such/path").status == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=15)
    lines = before + rest.decode().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    assert entries, "recsvc logged nothing"
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert entry["time"].endswith("Z")
    access = [e["message"] for e in entries if e["logger"] == "recsvc.access"]
    assert any(" GET /healthz 200 " in m for m in access), access
    assert any(" GET /no/such/path 404 " in m for m in access), access
    listening = [e for e in entries if e.get("event") == "listening"]
    assert len(listening) == 1 and listening[0]["message"] == LISTENING + base_url, listening
    assert not any("secret-value" in line for line in lines), "the query string reached the log"


def test_json_access_lines_carry_their_parts_as_fields(tmp_path):
    proc = spawn_recsvc("serve", tmp_path / "data", "--port", "0", "--log-format", "json")
    try:
        base_url, _ = read_until_listening(proc)
        assert request(base_url, "GET", "/no/such/path?q=1").status == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=15)
    access = [json.loads(line) for line in rest.decode().splitlines() if '"recsvc.access"' in line]
    entry = next(e for e in access if e["path"] == "/no/such/path")
    assert entry["client"] == "127.0.0.1" and entry["method"] == "GET" and entry["status"] == 404
    assert isinstance(entry["bytes"], int) and entry["bytes"] > 0
    assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
    assert entry["message"] == f"127.0.0.1 GET /no/such/path 404 {entry['bytes']} {entry['duration_ms']:.1f}ms"


def test_the_environment_variable_selects_json_too(tmp_path):
    proc = spawn_recsvc("serve", tmp_path / "data", "--port", "0", env={"RECSVC_LOG_FORMAT": "json"})
    try:
        base_url, before = read_until_listening(proc)
        request(base_url, "GET", "/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=15)
    entries = [json.loads(line) for line in before + rest.decode().splitlines() if line.strip()]
    access = [e["message"] for e in entries if e["logger"] == "recsvc.access"]
    assert any(" GET /healthz 200 " in m for m in access), entries


def test_an_unknown_log_format_is_refused_naming_the_flag(tmp_path):
    done = subprocess.run([sys.executable, "-m", "recsvc", "serve", "--data-dir", str(tmp_path), "--log-format", "xml"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 2
    assert "--log-format must be text or json" in done.stderr


def test_an_exception_is_kept_whole_in_its_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("recsvc.test", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    entry = json.loads(JsonLogFormatter().format(record))
    assert entry["level"] == "ERROR" and entry["logger"] == "recsvc.test" and entry["message"] == "failed here"
    assert "Traceback" in entry["exception"] and "ValueError: boom" in entry["exception"]


def record_at(created: float, message: str = "GET /healthz 200") -> logging.LogRecord:
    record = logging.LogRecord("recsvc.access", logging.INFO, "", 0, "%s", (message,), None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord computes it
    return record


# Instants inside one second, across a second, and where rounding to microseconds carries.
INSTANTS = [1_700_000_000.0, 1_700_000_000.0004, 1_700_000_000.5, 1_700_000_000.9994, 1_700_000_000.9999996,
            1_700_000_001.0, 1_700_000_001.001, 1_700_003_599.999, 1_700_003_600.0, 0.25, 2_000_000_000.123456]


def test_text_lines_are_those_of_the_standard_formatter_second_after_second():
    from recsvc.run.logs import TextLogFormatter

    ours, standard = TextLogFormatter(), logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for created in INSTANTS + INSTANTS[::-1]:
        assert ours.format(record_at(created)) == standard.format(record_at(created)), created


def test_json_times_are_iso_utc_of_the_record_second_after_second():
    from recsvc.contract.clock import iso_utc

    formatter = JsonLogFormatter()
    for created in INSTANTS + INSTANTS[::-1]:
        entry = json.loads(formatter.format(record_at(created)))
        assert entry["time"] == iso_utc(created), created


def test_json_lines_keep_non_ascii_text_as_it_is():
    line = JsonLogFormatter().format(record_at(1_700_000_000.0, "call naïve ✓"))
    assert "naïve ✓" in line and json.loads(line)["message"] == "call naïve ✓"


class Stream:
    """A text stream that counts its flushes."""

    def __init__(self, line_buffering: bool):
        self.line_buffering = line_buffering
        self.text = io.StringIO()
        self.flushes = 0

    def write(self, text: str) -> int:
        return self.text.write(text)

    def flush(self) -> None:
        self.flushes += 1


@pytest.mark.parametrize("line_buffering", [True, False], ids=["line-buffered stream", "buffered stream"])
def test_every_log_line_is_written_whole_and_a_buffered_stream_is_flushed_per_line(line_buffering):
    from recsvc.run.logs import _LineHandler

    stream = Stream(line_buffering)
    handler = _LineHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for n in range(3):
        handler.handle(record_at(1_700_000_000.0 + n, f"line {n}"))
    assert stream.text.getvalue() == "line 0\nline 1\nline 2\n"
    assert stream.flushes == (0 if line_buffering else 3)

