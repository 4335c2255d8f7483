"""--log-format json (RECSVC_LOG_FORMAT): every log line is one JSON object, access lines included."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time

from conftest import ROOT, request, spawn_recsvc
from recsvc.cli import JsonLogFormatter

LISTENING = "recsvc listening on "


def read_until_listening(proc: subprocess.Popen, timeout: float = 10) -> tuple[str, list[str]]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if not line:
            break
        if line.startswith(LISTENING):
            return line.strip().removeprefix(LISTENING), lines
        lines.append(line)
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
    assert not any("secret-value" in line for line in lines), "the query string reached the log"


def test_the_environment_variable_selects_json_too(tmp_path):
    proc = spawn_recsvc("serve", tmp_path / "data", "--port", "0", env={"RECSVC_LOG_FORMAT": "json"})
    try:
        base_url, _ = read_until_listening(proc)
        request(base_url, "GET", "/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=15)
    for line in rest.decode().splitlines():
        json.loads(line)


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
