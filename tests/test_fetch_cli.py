"""`recsvc fetch`: exit codes, the saved file, progress and messages, in-process and as a process."""

from __future__ import annotations

import functools
import io
import os
import pathlib
import subprocess
import sys

import pytest

from contract_fake import TOKEN, WAV, FakeClock, ScriptedServer, audio, closed_port, failure, processing
from recsvc.player import fetch
from recsvc.player.client import RecordingClient, message
from recsvc.player.outcomes import LRI, OUTCOMES, PDI

MESSAGES = {lang: {name: getattr(outcome, lang) for name, outcome in OUTCOMES.items()} for lang in ("he", "en")}

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def serve():
    servers: list[ScriptedServer] = []

    def start(answers) -> ScriptedServer:
        server = ScriptedServer(answers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def fake_time(monkeypatch) -> FakeClock:
    """main() builds its player on a fake clock: its waits take no real time."""
    clock = FakeClock()
    monkeypatch.setattr(fetch, "RecordingClient", functools.partial(RecordingClient, clock=clock, sleep=clock.sleep))
    return clock


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(argv, *, server=None, environ=None, stdout=None, stderr=None):
    """main() in-process; returns (exit status, stderr text)."""
    stderr = io.StringIO() if stderr is None else stderr
    environ = {} if environ is None else environ
    if server is not None:
        environ = {"RECSVC_BASE_URL": server.base_url, "RECSVC_TOKEN": TOKEN, **environ}
    status = fetch.main(argv, stdout=stdout or io.StringIO(), stderr=stderr, environ=environ)
    return status, stderr.getvalue()


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_saves_the_recording_under_call_sid_and_extension(serve, tmp_path):
    server = serve([audio()])
    status, err = run(["CA1"], server=server)
    assert status == 0
    assert (tmp_path / "CA1.wav").read_bytes() == WAV
    assert "saved CA1.wav" in err
    assert sorted(os.listdir(tmp_path)) == ["CA1.wav"]  # no temporary file left
    assert server.seen[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert server.seen[0].prefer_wait == 180


@pytest.mark.parametrize(
    "content_type, name",
    [
        ("audio/mpeg", "CA1.mp3"),
        ("audio/ogg", "CA1.ogg"),
        ("audio/flac", "CA1.flac"),
        ("audio/wav; charset=binary", "CA1.wav"),
        ("application/octet-stream", "CA1.bin"),
    ],
)
def test_extension_follows_the_content_type(serve, tmp_path, content_type, name):
    status, _ = run(["CA1"], server=serve([audio(b"bytes", content_type=content_type)]))
    assert status == 0
    assert (tmp_path / name).read_bytes() == b"bytes"


def test_output_file_is_replaced_whole(serve, tmp_path):
    target = tmp_path / "out" / "call.audio"
    target.parent.mkdir()
    target.write_bytes(b"old recording")
    status, _ = run(["CA1", "-o", str(target)], server=serve([audio()]))
    assert status == 0
    assert target.read_bytes() == WAV
    assert os.listdir(target.parent) == ["call.audio"]


def test_dash_writes_the_bytes_to_stdout(serve, tmp_path):
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    status, _ = run(["CA1", "-o", "-"], server=serve([audio()]), stdout=stdout)
    assert status == 0
    assert stdout.buffer.getvalue() == WAV
    assert os.listdir(tmp_path) == []


def test_an_unwritable_output_is_exit_1_without_traceback(serve, tmp_path):
    status, err = run(["CA1", "-o", str(tmp_path / "missing" / "x.wav")], server=serve([audio()]))
    assert status == 1
    assert "cannot write" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "answer, status, text",
    [
        pytest.param(failure(404, "call_not_found"), 3, MESSAGES["en"]["call_not_found"], id="404-call-exit-3"),
        pytest.param(failure(404, "no_recording_url"), 3, MESSAGES["en"]["not_found"], id="404-exit-3"),
        pytest.param(
            failure(500, "worker_not_processing_queue", retry_after=15),
            4,
            MESSAGES["en"]["worker_offline"],
            id="500-worker-exit-4",
        ),
        pytest.param(
            failure(500, "recording_download_failed", retry_after=600),
            6,
            MESSAGES["en"]["download_failed"],
            id="500-download-exit-6",
        ),
        pytest.param(failure(500, "internal_error"), 1, MESSAGES["en"]["server_error"], id="500-other-exit-1"),
        pytest.param(
            failure(401, "unauthorized", "Missing or wrong credentials."),
            1,
            "The recording could not be loaded (HTTP 401 unauthorized): Missing or wrong credentials.",
            id="401-exit-1",
        ),
        pytest.param(failure(400, "invalid_call_sid"), 1, "HTTP 400 invalid_call_sid", id="400-exit-1"),
        pytest.param(failure(403, "forbidden"), 1, "HTTP 403 forbidden", id="403-exit-1"),
    ],
)
def test_stops_exit_with_their_code_and_the_contract_message(serve, tmp_path, answer, status, text):
    code, err = run(["CA1"], server=serve([answer]))
    assert code == status
    assert text in err
    assert os.listdir(tmp_path) == []


def test_timeout_is_exit_5_with_the_waited_seconds(serve, tmp_path, fake_time):
    code, err = run(["CA1"], server=serve([processing(2)]))
    assert code == 5
    assert err.splitlines()[-1] == message("timeout", "en", 180)
    assert fake_time() == 180
    assert os.listdir(tmp_path) == []


def test_max_wait_zero_asks_once_then_times_out(serve, fake_time):
    server = serve([processing(2)])
    code, err = run(["CA1", "--max-wait", "0"], server=server)
    assert code == 5
    assert err.strip() == message("timeout", "en", 0)
    assert len(server.seen) == 1


def test_hebrew_messages(serve):
    code, err = run(["CA1", "--lang", "he"], server=serve([failure(404, "no_recording_url")]))
    assert code == 3
    assert err.strip() == "ההקלטה לא נמצאה. אין כתובת הקלטה לשיחה זו"


def test_connection_refused_until_max_wait_is_exit_7_unavailable(fake_time):
    base_url = f"http://127.0.0.1:{closed_port()}"
    code, err = run(["CA1", "--max-wait", "20", "--base-url", base_url], environ={"RECSVC_TOKEN": TOKEN})
    assert code == 7
    assert err.splitlines()[0] == f"CA1: 0s, attempt 1 to {base_url}: connection refused; next try in 1s"
    assert fake_time.sleeps == [1, 2, 4, 5, 3, 5]
    assert err.splitlines()[-1] == message("unavailable", "en", 20)


def test_max_wait_zero_against_a_closed_port_asks_once_and_is_exit_7(fake_time):
    code, err = run(["CA1", "--max-wait", "0", "--base-url", f"http://127.0.0.1:{closed_port()}"],
                    environ={"RECSVC_TOKEN": TOKEN})
    assert code == 7
    assert err.strip() == message("unavailable", "en", 0)
    assert fake_time.sleeps == []


@pytest.mark.parametrize(
    "argv, environ, words",
    [
        pytest.param([], {"RECSVC_TOKEN": TOKEN}, "CALL_SID", id="no-call-sid"),
        pytest.param(["CA1"], {}, "token is required", id="no-token"),
        pytest.param(["CA1", "--token", ""], {}, "token is required", id="empty-token"),
        pytest.param(["CA1", "--lang", "fr"], {"RECSVC_TOKEN": TOKEN}, "--lang", id="unknown-lang"),
        pytest.param(["CA1", "--max-wait", "-1"], {"RECSVC_TOKEN": TOKEN}, "--max-wait", id="negative-max-wait"),
        pytest.param(["CA1", "--max-wait", "soon"], {"RECSVC_TOKEN": TOKEN}, "--max-wait", id="garbage-max-wait"),
        pytest.param(["CA1", "--base-url", "ftp://x"], {"RECSVC_TOKEN": TOKEN}, "base_url", id="bad-base-url"),
        pytest.param(["CA1", "--bogus"], {"RECSVC_TOKEN": TOKEN}, "unrecognized", id="unknown-flag"),
    ],
)
def test_usage_errors_are_exit_2(argv, environ, words):
    code, err = run(argv, environ=environ)
    assert code == 2
    assert words in err
    assert err.startswith("usage: recsvc fetch")


def test_help_is_exit_0():
    stdout = io.StringIO()
    code, _ = run(["--help"], stdout=stdout)
    assert code == 0
    assert "usage: recsvc fetch" in stdout.getvalue()


def test_token_flag_beats_the_environment(serve):
    server = serve([audio()])
    code, _ = run(["CA1", "--token", "from-flag"], server=server, environ={"RECSVC_TOKEN": "from-env"})
    assert code == 0
    assert server.seen[0].headers["authorization"] == "Bearer from-flag"


def test_base_url_flag_beats_the_environment(serve):
    server = serve([audio()])
    code, _ = run(
        ["CA1", "--base-url", server.base_url],
        environ={"RECSVC_TOKEN": TOKEN, "RECSVC_BASE_URL": f"http://127.0.0.1:{closed_port()}"},
    )
    assert code == 0
    assert len(server.seen) == 1


def test_max_wait_bounds_prefer_wait(serve):
    server = serve([audio()])
    assert run(["CA1", "--max-wait", "7.9"], server=server)[0] == 0
    assert server.seen[0].prefer_wait == 7


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(serve, fake_time):
    server = serve([processing(2, job_status="running", attempt=1), failure(503, "busy"), failure(404, "call_not_found")])
    code, err = run(["CA7"], server=server)
    assert code == 3
    assert err.splitlines() == [
        f"CA7: 0s, attempt 1 to {server.base_url}: 202 attempt 1/3, job running; next try in 2s",
        f"CA7: 2s, attempt 2 to {server.base_url}: 503 busy; next try in 1s",
        MESSAGES["en"]["call_not_found"],
    ]


def test_hebrew_translates_the_progress_lines_too(serve, fake_time):
    server = serve([processing(2, job_status="queued", attempt=0), failure(404, "call_not_found")])
    code, err = run(["CA7", "--lang", "he"], server=server)
    assert code == 3
    assert err.splitlines() == [
        f"\u2066CA7\u2069: 0 שניות, ניסיון 1 אל \u2066{server.base_url}\u2069: 202 ניסיון 0/3, העבודה בתור; "
        "ניסיון הבא בעוד 2 שניות",
        MESSAGES["he"]["call_not_found"],
    ]


def test_progress_is_one_updating_line_on_a_terminal(serve, fake_time):
    server = serve([processing(2, job_status="running", attempt=1), failure(503, "busy"), failure(404, "call_not_found")])
    terminal = Terminal()
    code, err = run(["CA7"], server=server, stderr=terminal, environ={"COLUMNS": "200"})
    assert code == 3
    first = f"CA7: 0s, attempt 1 to {server.base_url}: 202 attempt 1/3, job running; next try in 2s"
    second = f"CA7: 2s, attempt 2 to {server.base_url}: 503 busy; next try in 1s"
    # each text erases what is left of the one before (ESC [K)
    assert err == f"\r{first}\x1b[K\r{second}\x1b[K\n{MESSAGES['en']['call_not_found']}\n"


def test_the_terminal_line_is_cut_to_the_terminal_width(serve, fake_time):
    server = serve([processing(2, job_status="running", attempt=1), failure(404, "call_not_found")])
    code, err = run(["CA7"], server=server, stderr=Terminal(), environ={"COLUMNS": "40"})
    assert code == 3
    line = err.split("\n")[0]
    assert line == "\r" + f"CA7: 0s, attempt 1 to {server.base_url}"[:38] + "…" + "\x1b[K"


def test_dash_to_a_terminal_is_refused_with_exit_2_before_any_request(serve):
    server = serve([audio()])
    code, err = run(["CA1", "-o", "-"], server=server, stdout=Terminal())
    assert code == 2
    assert "will not write audio to a terminal" in err
    assert server.seen == []


def test_help_lists_every_exit_status():
    stdout = io.StringIO()
    assert run(["--help"], stdout=stdout)[0] == 0
    help_text = stdout.getvalue()
    for line in ("0  saved", "3  call_not_found or not_found", "4  worker_offline", "5  timeout",
                 "6  download_failed", "7  unavailable", "2  usage"):
        assert line in help_text
    assert "1  server_error or error or any other error" in help_text


# --- as a process, the way an operator runs it --------------------------------


def run_module(args, server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(PYTHONPATH=str(REPO), RECSVC_TOKEN=TOKEN, RECSVC_BASE_URL=server.base_url)
    return subprocess.run(
        [sys.executable, "-m", "recsvc.player.fetch", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=30,
    )


def test_python_m_recsvc_fetch_saves_a_file(serve, tmp_path):
    server = serve([audio(b"OggS" + bytes(60), content_type="audio/ogg")])
    done = run_module(["CA9"], server, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "CA9.ogg").read_bytes() == b"OggS" + bytes(60)
    assert done.stdout == b""


def test_python_m_recsvc_fetch_not_found_is_exit_3_in_hebrew(serve, tmp_path):
    done = run_module(["CA9", "--lang", "he"], serve([failure(404, "call_not_found")]), tmp_path)
    assert done.returncode == 3
    assert done.stderr.decode("utf-8").strip() == MESSAGES["he"]["call_not_found"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("width", [4, 10, 38, 40, 45, 59])
def test_a_hebrew_progress_line_cut_to_the_terminal_closes_every_left_to_right_run_it_cut(width):
    """Cut inside the URL's isolate, the line still ends the isolate before the ellipsis, so the
    ellipsis and the next line are not read left to right; isolate marks take no column."""
    text = f"{LRI}CA123{PDI}: 5 שניות, ניסיון 1 אל {LRI}http://127.0.0.1:18932{PDI}: החיבור נדחה"
    line = fetch.fit(text, width)
    assert line.endswith("…")
    assert line.count(LRI) == line.count(PDI), line
    assert line.index("…") > line.rindex(PDI) if PDI in line else True
    assert len(line.replace(LRI, "").replace(PDI, "")) <= width, line
