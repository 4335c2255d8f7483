"""Start-up tells the operator what it does, and every start-up failure is one line and exit 2.

Each failure runs the real ``python -m recsvc`` as a subprocess, as an
operator would meet it: a mistyped data dir, a read-only one, a port in use,
a Python too old. Root ignores file modes, so the read-only data dir is a
read-only tmpfs mount (skipped, with the reason, where mounting is refused).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from processes import SERVE_ARGS, Client, read_db
from recsvc import __version__
from recsvc.python_version import MINIMUM, require_supported_python, unsupported_python


def run_recsvc(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run([sys.executable, "-m", "recsvc", *args], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=timeout)


def assert_one_line_failure(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    failures = [line for line in lines if line.startswith("recsvc: error: ")]
    assert len(failures) == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    for text in expected:
        assert text in failures[0], failures[0]
    return failures[0]


# ---- what start-up says

def test_serve_names_version_data_dir_address_workers_counter_and_admin_api(tmp_path, processes):
    serve = processes.start("serve", tmp_path / "data", *SERVE_ARGS, "--workers", "3", "--counter", "sqlite://")
    base_url = serve.base_url()
    line = _wait_lines(serve, " serve: data dir ")[0]
    assert f"recsvc {__version__} serve: data dir {tmp_path / 'data'}, listening on {base_url}, workers 3, " \
           "counter sqlite://, admin API on" in line
    assert " INFO recsvc: " in line


def test_serve_without_an_admin_token_says_the_admin_api_is_off(tmp_path, processes):
    serve = processes.start("serve", tmp_path / "data", "--port", "0")
    serve.base_url()
    assert any(line.endswith("admin API off (no --admin-token)") for line in serve.lines), serve.lines


def test_worker_names_version_data_dir_workers_and_counter(tmp_path, processes):
    worker = processes.start("worker", tmp_path / "data", "--workers", "2")
    worker.wait_for_line("recsvc worker ")
    line = _wait_lines(worker, " worker: data dir ")[0]
    assert line.endswith(f"recsvc {__version__} worker: data dir {tmp_path / 'data'}, workers 2, counter memory://")


def test_a_redis_password_never_reaches_the_start_up_line(tmp_path, processes):
    serve = processes.start("serve", tmp_path / "data", "--port", "0", "--workers", "0",
                            "--counter", "redis://:hunter2-secret@127.0.0.1:1/0")
    serve.base_url()
    assert any("counter redis://127.0.0.1:1/0" in line for line in serve.lines), serve.lines
    assert not any("hunter2" in line for line in serve.lines)


def test_json_start_up_and_listening_lines_carry_fields(tmp_path, processes):
    serve = processes.start("serve", tmp_path / "data", "--port", "0", "--log-format", "json")
    listening = json.loads(_wait_lines(serve, '"event": "listening"')[0])
    assert listening["message"] == f"recsvc listening on {listening['url']}"
    assert listening["host"] == "127.0.0.1" and listening["url"] == f"http://127.0.0.1:{listening['port']}"
    starting = json.loads(next(line for line in serve.lines if '"event": "starting"' in line))
    assert starting["version"] == __version__ and starting["data_dir"] == str(tmp_path / "data")
    assert starting["workers"] == 4 and starting["counter"] == "memory://" and starting["admin_api"] is False


def _wait_lines(process, text: str, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in process.lines if text in line]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no line with {text!r}:\n" + "\n".join(process.lines))


def test_a_misspelled_variable_is_warned_by_name_with_the_closest_known_one(tmp_path, processes):
    serve = processes.start("serve", tmp_path / "data", "--port", "0",
                            env={"RECSVC_WORKER": "2", "RECSVC_ZZZ_UNRELATED": "1"})
    serve.base_url()
    lines = serve.lines
    assert any("WARNING" in line and "ignored unknown environment variable RECSVC_WORKER "
               "(did you mean RECSVC_WORKERS?)" in line for line in lines), lines
    assert any(line.endswith("ignored unknown environment variable RECSVC_ZZZ_UNRELATED") for line in lines), lines
    assert not any("RECSVC_REQUIRE_EXTERNAL" in line for line in lines)


# ---- start-up failures: one line, exit 2

def test_a_data_dir_whose_parent_is_missing_is_refused_and_not_created(tmp_path):
    data_dir = tmp_path / "no-such-folder" / "data"
    done = run_recsvc("serve", "--port", "0", "--data-dir", str(data_dir))
    assert_one_line_failure(done, f"--data-dir {data_dir}", f"parent folder {tmp_path / 'no-such-folder'} does not exist")
    assert not (tmp_path / "no-such-folder").exists()


def test_a_data_dir_inside_an_existing_folder_is_created(tmp_path, processes):
    serve = processes.start("serve", tmp_path / "fresh", "--port", "0")
    serve.base_url()
    assert (tmp_path / "fresh" / "recsvc.sqlite3").is_file()


@contextlib.contextmanager
def read_only_mount(path):
    """A read-only tmpfs at ``path`` (root writes through file modes, not through a read-only mount)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a read-only tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_read_only_data_dir_is_one_line_naming_it(tmp_path, command):
    with read_only_mount(tmp_path / "ro") as data_dir:
        done = run_recsvc(command, "--port", "0", "--data-dir", str(data_dir)) if command == "serve" \
            else run_recsvc(command, "--data-dir", str(data_dir))
    assert_one_line_failure(done, f"--data-dir {data_dir} cannot be written", "Read-only file system")


def test_a_data_dir_that_cannot_be_created_is_one_line_naming_it(tmp_path):
    with read_only_mount(tmp_path / "ro") as parent:
        done = run_recsvc("serve", "--port", "0", "--data-dir", str(parent / "data"))
    assert_one_line_failure(done, f"--data-dir {parent / 'data'} cannot be created", "Read-only file system")


def test_a_port_in_use_is_one_line_naming_the_address_and_leaves_no_worker_row(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        done = run_recsvc("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    finally:
        holder.close()
    assert_one_line_failure(done, f"cannot listen on 127.0.0.1:{port}", "in use")
    assert read_db(tmp_path / "data", "SELECT id FROM workers") == []


def test_a_bad_setting_is_still_one_line_and_exit_2(tmp_path):
    done = run_recsvc("serve", "--data-dir", str(tmp_path), "--job-timeout", "-1")
    assert_one_line_failure(done, "--job-timeout must be a positive number, got '-1'")


def test_a_database_file_that_is_not_sqlite_is_one_line_naming_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "recsvc.sqlite3").write_text("not a database\n")
    done = run_recsvc("serve", "--port", "0", "--data-dir", str(data))
    line = assert_one_line_failure(done, f"the database {data / 'recsvc.sqlite3'} cannot be used",
                                   "file is not a database")
    assert "Error)" not in line, "no Python class name in the operator's line"


def test_a_database_from_a_newer_schema_is_one_line_naming_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                    "c.execute('PRAGMA user_version = 99'); c.commit()", str(data / "recsvc.sqlite3")], check=True)
    done = run_recsvc("serve", "--port", "0", "--data-dir", str(data))
    line = assert_one_line_failure(done, f"the database {data / 'recsvc.sqlite3'} cannot be used",
                                   "schema version 99 is newer than this recsvc")
    assert "Error)" not in line


# ---- the Python version

@pytest.mark.parametrize("version", [(3, 9, 18), (3, 8, 0), (2, 7, 18)], ids=str)
def test_a_python_older_than_the_minimum_is_refused_naming_the_version_needed(version, capsys):
    with pytest.raises(SystemExit) as stopped:
        require_supported_python(version)
    assert stopped.value.code == 2
    shown = ".".join(map(str, version))
    assert capsys.readouterr().err == f"recsvc: error: recsvc needs Python 3.10 or newer; this is Python {shown}\n"


@pytest.mark.parametrize("version", [(3, 10, 0), (3, 11, 7), (3, 13, 1), (4, 0, 0)], ids=str)
def test_a_supported_python_passes(version):
    assert unsupported_python(version) is None


def test_the_minimum_is_the_one_pyproject_declares():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as handle:
        assert f'requires-python = ">={MINIMUM[0]}.{MINIMUM[1]}"' in handle.read()


@pytest.mark.parametrize("module", ["__init__.py", "__main__.py", "python_version.py"])
def test_the_modules_that_run_before_the_check_parse_on_python_3_9(module):
    with open(os.path.join(ROOT, "recsvc", module), encoding="utf-8") as handle:
        source = handle.read()
    tree = ast.parse(source, feature_version=(3, 9))
    # Annotations are evaluated at import on 3.9 unless postponed: none may use X | Y.
    for node in ast.walk(tree):
        assert not isinstance(node, ast.BinOp) or not isinstance(node.op, ast.BitOr), ast.unparse(node)
    top_level_imports = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert "cli" not in top_level_imports, "recsvc.cli is imported before the version check"


def test_python_m_recsvc_on_an_old_python_is_one_line_and_exit_2():
    """The real entry point, with this interpreter claiming to be 3.9."""
    program = ("import sys, runpy; sys.version_info = (3, 9, 18, 'final', 0); "
               "runpy.run_module('recsvc', run_name='__main__', alter_sys=True)")
    done = subprocess.run([sys.executable, "-c", program, "serve"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == "recsvc: error: recsvc needs Python 3.10 or newer; this is Python 3.9.18\n"


# ---- stopping

def test_a_second_signal_stops_at_once_and_says_so(tmp_path, processes, upstream):
    upstream.set("/hung.wav", hang=True)
    serve = processes.start("serve", tmp_path / "data", *SERVE_ARGS, "--shutdown-grace", "30",
                            "--download-timeout", "60")
    client = Client(serve.base_url())
    token = client.business()
    client.put_call(token, "CA1", upstream.url("/hung.wav"))
    assert client.play(token, "CA1").status == 202
    assert upstream.wait_for_hits("/hung.wav", 1, timeout=5)
    serve.signal(signal.SIGTERM)
    _wait_lines(serve, "a second signal stops at once")
    time.sleep(0.5)
    assert serve.proc.poll() is None, "the first signal should wait for the hung download"
    sent = time.monotonic()
    serve.signal(signal.SIGINT)
    code = serve.wait(5)
    took = time.monotonic() - sent
    assert code == 1 and took < 2, (code, took)
    assert any(line.startswith("recsvc: second signal: stopping now") for line in serve.lines), serve.lines
    upstream.release()
