"""``pip install .`` gives a ``recsvc`` command that runs from any folder; the docs name one Python version.

The install goes into a fresh virtual environment, from a copy of the
project's files (so no build output lands in the working tree), without
build isolation and without an index: the venv's own setuptools builds it
(fetched once when the venv's own cannot build a wheel).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT
from recsvc import __version__
from recsvc.python_version import MINIMUM

NEEDED = f"{MINIMUM[0]}.{MINIMUM[1]}"
BUILDS_WHEELS = ("import importlib.util, setuptools; "
                 "assert importlib.util.find_spec('wheel') or tuple(map(int, setuptools.__version__.split('.')[:2])) >= (70, 1)")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The bin folder of a venv where ``pip install .`` installed recsvc."""
    folder = tmp_path_factory.mktemp("install")
    source = folder / "source"
    shutil.copytree(os.path.join(ROOT, "recsvc"), source / "recsvc",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # A venv's own setuptools may be missing (Python 3.12+) or need the wheel package to build
    # a wheel (before setuptools 70.1); then one newer setuptools is fetched, once.
    can_build = subprocess.run([str(venv / "bin" / "python"), "-c", BUILDS_WHEELS], capture_output=True)
    if can_build.returncode != 0:
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "setuptools>=70.1"], check=True, timeout=300)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "--quiet", str(source)],
                          capture_output=True, text=True, timeout=300, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv / "bin"


def test_pip_install_gives_a_recsvc_command(installed, tmp_path):
    done = subprocess.run([str(installed / "recsvc"), "--version"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=30, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"recsvc {__version__}"


def test_the_installed_command_serves_with_its_web_assets_from_any_folder(installed, tmp_path):
    serve = subprocess.Popen([str(installed / "recsvc"), "serve", "--port", "0", "--data-dir", "data"],
                             cwd=tmp_path, stderr=subprocess.PIPE, text=True, env={"PATH": os.environ["PATH"]})
    try:
        deadline = time.monotonic() + 20
        base_url = None
        for line in serve.stderr:
            if line.startswith("recsvc listening on "):
                base_url = line.strip().removeprefix("recsvc listening on ")
                break
            assert time.monotonic() < deadline
        assert base_url, "the installed serve never listened"
        with urllib.request.urlopen(f"{base_url}/player.js", timeout=10) as answer:
            assert answer.status == 200 and b"mountPlayer" in answer.read()
        assert (tmp_path / "data" / "recsvc.sqlite3").is_file()
    finally:
        serve.terminate()
        serve.wait(15)


def test_the_installed_command_checks_the_python_version_first(installed):
    """The console script enters through recsvc.__main__:run, which checks before importing the rest."""
    script = (installed / "recsvc").read_text()
    assert "from recsvc.__main__ import run" in script, script


def test_the_docs_name_one_python_version_the_one_checked_at_start():
    """Every "Python 3.N" in the docs that states a need is the version python_version checks."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as handle:
        assert f'requires-python = ">={NEEDED}"' in handle.read()
    for name in ("README.md", "docs/deploy.md", "docs/conformance.md", "docs/demo-walkthrough.md"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
            text = " ".join(handle.read().split())
        stated = re.findall(r"(?:needs?|only need|nothing but) Python (3\.\d+)", text)
        assert all(version == NEEDED for version in stated), (name, stated)
        if name != "docs/demo-walkthrough.md":
            assert f"Python {NEEDED} or newer" in text, name
