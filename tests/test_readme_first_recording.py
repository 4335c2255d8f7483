"""README's "Your first recording" block, run verbatim with bash against a real serve.

The block is read from README.md between its markers and run as it is
written, after the README's sample-recording block (the way to a recording
URL without a Twilio account), also verbatim. The test sets only what the
README tells a reader to set: ``SAMPLE_PORT`` and ``RECSVC_PORT`` (free
ports) and
``BROWSER`` (Python's webbrowser runs it: here a script that notes the
address instead of opening a window). The block runs in an empty folder with
the repository on ``PYTHONPATH``, as ``python3 -m recsvc`` from the
repository's root would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess

import pytest

from chromium import Browser, require_chromium
from conftest import ROOT
from recsvc.demo.audio import tune_for

RECORDING = tune_for("sample", seconds=3.0)   # what `recsvc sample-upstream` serves


def readme_block(name: str = "first-recording") -> str:
    markers = re.compile(rf"<!-- {name} -->\n```sh\n(.*?)```\n<!-- /{name} -->", re.S)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        found = markers.search(handle.read())
    assert found, f"README.md has no {name} block between its markers"
    return found.group(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def first_recording(tmp_path_factory):
    """Run the block once; yield what it printed and left behind, then stop the service it started."""
    folder = tmp_path_factory.mktemp("fresh")
    opened = folder / "opened-urls"
    browser = folder / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    browser.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": ROOT, "SAMPLE_PORT": str(free_port()),
           "RECSVC_PORT": str(free_port()), "BROWSER": str(browser)}
    for name in ("RECSVC_ADMIN_TOKEN", "RECSVC_TOKEN", "RECSVC_BASE_URL", "RECORDING_URL", "RECSVC_ALLOW_UPSTREAM"):
        env.pop(name, None)
    # The sample block and the block's own lines, then the service it left in the background
    # is stopped (the sample upstream ends with the session, below).
    script = readme_block("sample-recording") + readme_block() + "kill -TERM %1; wait %1\n"
    # Files, not pipes: the sample upstream the block left running keeps its copies open.
    out_path, err_path = folder / "block.out", folder / "block.err"
    with open(out_path, "w") as out_file, open(err_path, "w") as err_file:
        shell = subprocess.Popen(["bash", "-e", "-c", script], cwd=folder, env=env, stdout=out_file,
                                 stderr=err_file, text=True, start_new_session=True)
    try:
        shell.wait(timeout=60)
        out, err = out_path.read_text(), err_path.read_text()
    finally:
        try:  # whatever the block left running, should it have failed half-way
            os.killpg(shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    yield {"code": shell.returncode, "out": out, "err": err, "folder": folder,
           "opened": opened.read_text().split() if opened.exists() else [],
           "port": env["RECSVC_PORT"]}


def test_the_block_is_at_most_six_commands():
    lines = [line for line in readme_block().splitlines() if line.strip()]
    assert 1 <= len(lines) <= 6, lines


def test_every_command_of_the_block_succeeds(first_recording):
    assert first_recording["code"] == 0, first_recording["out"] + first_recording["err"]
    assert "Traceback" not in first_recording["err"]


def test_the_admin_token_and_the_business_token_are_printed(first_recording):
    out = first_recording["out"]
    assert re.search(r"^admin token: [0-9a-f]{48}$", out, re.M), out
    assert re.search(r"^business token: \S{16,}$", out, re.M), out


def test_the_call_is_created_and_fetch_saves_the_recording(first_recording):
    assert '{"call_sid":"CA1",' in first_recording["out"], first_recording["out"]
    saved = first_recording["folder"] / "CA1.wav"
    assert saved.read_bytes() == RECORDING


def test_serve_said_what_it_runs_with(first_recording):
    port = first_recording["port"]
    assert f"listening on http://127.0.0.1:{port}, workers 4, counter memory://, admin API on" in first_recording["err"]


def test_the_player_page_is_opened_with_the_token_in_the_fragment(first_recording):
    port = first_recording["port"]
    opened = first_recording["opened"]
    assert len(opened) == 1, opened
    assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/player\?call_sid=CA1&lang=en#token=\S+", opened[0])
    assert opened[0] in first_recording["out"], "the address is printed too"


def test_the_opened_player_page_plays_the_recording(first_recording, tmp_path):
    """The same address in a real browser, against the same data dir served again."""
    require_chromium()
    port = free_port()
    opened = first_recording["opened"][0].replace(f":{first_recording['port']}/", f":{port}/")
    serve = subprocess.Popen(["python3", "-m", "recsvc", "serve", "--port", str(port)],
                             cwd=first_recording["folder"], env={**os.environ, "PYTHONPATH": ROOT},
                             stderr=subprocess.PIPE, text=True)
    try:
        for line in serve.stderr:
            if line.startswith("recsvc listening on "):
                break
        with Browser() as chromium, chromium.open(opened) as page:
            state = page.wait_for('(() => { const p = document.getElementById("player");'
                                  ' return p && p.dataset.state !== "waiting" && p.dataset.state; })()', timeout=20)
        assert state == "playing"
    finally:
        serve.terminate()
        serve.wait(15)


def test_the_sample_upstream_on_a_busy_port_says_so_in_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(["python3", "-m", "recsvc", "sample-upstream", "--port", str(port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == f"recsvc sample-upstream: cannot listen on 127.0.0.1:{port}: Address already in use\n"
