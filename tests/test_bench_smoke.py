"""The benchmark still runs: ``python -m bench --smoke`` completes and prints every scenario row,
and the Several nodes table with a measured row per setup.

Results are not asserted (a benchmark measures; CI machines differ); these
tests only keep the bench from rotting as the service changes. The bench
runs once for the module.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from redis_server import REDIS_MISSING

NGINX_MISSING = shutil.which("nginx") is None and shutil.which("/usr/sbin/nginx") is None


@pytest.fixture(scope="module")
def smoke_run() -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def table_rows(text: str) -> dict[str, list[str]]:
    """Every Markdown table row of ``text`` by its first cell: the cells after it."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| "):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_bench_smoke_prints_a_row_for_every_scenario(smoke_run):
    sys.path.insert(0, ROOT)
    from bench.run import SCENARIOS

    main_table = smoke_run.stdout.split("Several nodes:")[0]
    missing = [name for name in SCENARIOS if name not in table_rows(main_table)]
    assert not missing, f"rows missing: {missing}\n{smoke_run.stdout}\n{smoke_run.stderr[-3000:]}"
    assert "load generator:" in smoke_run.stdout


@pytest.mark.skipif(REDIS_MISSING, reason="redis-server is not installed: apt-get install redis-server")
@pytest.mark.skipif(NGINX_MISSING, reason="nginx is not installed: apt-get install nginx-light")
def test_bench_smoke_prints_the_several_nodes_table_with_a_measured_row_per_setup(smoke_run):
    sys.path.insert(0, ROOT)
    from bench.nodes import HEADER, REFERENCES, ROWS, SETUPS

    assert "Several nodes:" in smoke_run.stdout, smoke_run.stdout
    rows = table_rows(smoke_run.stdout.split("Several nodes:", 1)[1])
    missing = [name for name in ROWS if name not in rows]
    assert not missing, f"rows missing: {missing}\n{smoke_run.stdout}\n{smoke_run.stderr[-3000:]}"
    measured = [HEADER.index(column) - 1 for column in
                ("poll_202 req/s", "file_1m req/s", "wait: req/playback", "kill→job done s", "kill→player 200 s")]
    for name, _, _ in SETUPS:  # every figure a number: each scenario ran on each setup
        unmeasured = [HEADER[i + 1] for i in measured if not rows[name][i].replace(".", "", 1).isdigit()]
        assert not unmeasured, f"{name}: not measured: {unmeasured}\n{rows[name]}"
        assert "the exact bytes" in rows[name][-1], rows[name][-1]
    for name, _, _ in REFERENCES:
        assert "not measured here" in rows[name][-1]
