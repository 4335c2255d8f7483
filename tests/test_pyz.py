"""The single file: ``dist/recsvc.pyz`` built by ``make pyz`` runs serve and demo from any folder.

The archive is built into a temporary folder and started with an empty
folder as its working directory and no PYTHONPATH, so nothing can come from
the source tree: static assets must be read from inside the zip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, request, wait_until
from demo_process import ADMIN, FAST, play, start_process
from recsvc.demo.audio import tune_for
from recsvc.demo.fake_upstream import FakeUpstream, Script

HAS_PLAYER = os.path.exists(os.path.join(ROOT, "recsvc", "player", "web", "player.js"))


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> str:
    target = tmp_path_factory.mktemp("dist") / "recsvc.pyz"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "build_pyz.py"), str(target)], check=True,
                   capture_output=True, timeout=60)
    return str(target)


@pytest.fixture
def empty_folder(tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def pyz_env() -> dict:
    """This environment without the source tree on the path and without RECSVC_* settings."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RECSVC_")}


def run_pyz(pyz: str, cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, pyz, *args], cwd=cwd, env=pyz_env(), capture_output=True, text=True,
                          timeout=20)


def start_pyz(pyz: str, cwd, *args: str):
    return start_process([sys.executable, pyz, *args], os.path.join(cwd, "data"), cwd=cwd, env=pyz_env(),
                         inherit_env=False)


def test_the_pyz_answers_version_and_refuses_a_bad_setting_with_status_2(pyz, empty_folder):
    assert run_pyz(pyz, empty_folder, "--version").stdout.startswith("recsvc ")
    bad = run_pyz(pyz, empty_folder, "serve", "--job-timeout", "-1")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "recsvc: error: --job-timeout must be a positive number, got '-1'"


def test_the_pyz_carries_bytecode_and_imports_from_it(pyz, empty_folder):
    """Every module has its compiled form beside it: zipimport cannot write a cache, so
    without them each start compiles the whole package (about 100 ms here)."""
    with zipfile.ZipFile(pyz) as archive:
        names = set(archive.namelist())
    sources = {name for name in names if name.startswith("recsvc/") and name.endswith(".py")}
    assert sources and {name + "c" for name in sources} <= names
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import recsvc.cli, recsvc.storage.store; "
              "print(recsvc.cli.__file__, recsvc.storage.store.__file__)")
    loaded = subprocess.run([sys.executable, "-c", script, pyz], cwd=empty_folder, env=pyz_env(),
                            capture_output=True, text=True, timeout=20, check=True).stdout.split()
    assert loaded == [os.path.join(pyz, "recsvc", "cli.pyc"), os.path.join(pyz, "recsvc", "storage", "store.pyc")]


def test_serve_from_the_pyz_plays_a_recording_and_serves_its_pages(pyz, empty_folder):
    audio = tune_for("CA-pyz")
    with FakeUpstream() as upstream:
        url = upstream.set("/rec.wav", Script(body=audio))
        server = start_pyz(pyz, empty_folder, "serve", "--port", "0", "--data-dir", "data",
                           "--admin-token", ADMIN, "--allow-upstream", "loopback", "--heartbeat-interval", "0.2")
        try:
            made = request(server.base_url, "POST", "/admin/businesses", token=ADMIN, body={"name": "pyz"})
            assert made.status == 201
            token = made.json["token"]
            put = request(server.base_url, "PUT", "/api/calls/CA-pyz", token=token, body={"recording_url": url})
            assert put.status == 201
            answers = play(server.base_url, token, "CA-pyz", max_wait=15)
            assert answers[-1].status == 200 and answers[-1].body == audio
            page = request(server.base_url, "GET", "/")
            assert page.status == 200 and page.header("content-type").startswith("text/html")
            assert b"/static/demo.js" in page.body
            script = request(server.base_url, "GET", "/static/demo.js")
            assert script.status == 200 and script.header("content-type").startswith("text/javascript")
            player = request(server.base_url, "GET", "/player.js")
            assert player.status == (200 if HAS_PLAYER else 404)
            assert server.interrupt() == 0
        finally:
            server.kill()
    assert (empty_folder / "data" / "recsvc.sqlite3").exists()


def test_serve_processes_from_the_pyz_starts_its_serving_process_from_the_same_file(pyz, empty_folder):
    server = start_pyz(pyz, empty_folder, "serve", "--port", "0", "--data-dir", "data", "--processes", "2",
                       "--counter", "sqlite://")
    try:
        assert wait_until(lambda: any("serving process 1 ready" in line for line in server.proc.log_lines), 20), \
            "".join(server.proc.log_lines)

        def both_answered() -> bool:
            for _ in range(10):  # a fresh connection each: either process may accept it
                assert request(server.base_url, "GET", "/healthz").status == 200
            page = request(server.base_url, "GET", "/metrics").body.decode()
            return 'process="0",route="healthz"' in page and 'process="1",route="healthz"' in page

        assert wait_until(both_answered, 15)
        assert server.interrupt() == 0
    finally:
        server.kill()


def test_demo_from_the_pyz_plays_the_ready_call_and_keeps_its_data_in_the_working_folder(pyz, empty_folder):
    demo = start_pyz(pyz, empty_folder, "demo", "--admin-token", ADMIN, *FAST)
    try:
        demo.data_dir = str(empty_folder / "demo-data")  # the demo's default, relative to the working folder
        answers = play(demo.base_url, demo.token, "demo-ready", max_wait=15)
        assert answers[-1].status == 200 and answers[-1].body == tune_for("demo-ready")
        assert request(demo.base_url, "GET", "/").status == 200
        assert demo.admin("GET", "/demo/scenarios").status == 200
        assert demo.interrupt() == 0
    finally:
        demo.kill()
    assert (empty_folder / "demo-data" / "recsvc.sqlite3").exists()
