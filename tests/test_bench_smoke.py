"""The benchmark still runs: ``python -m bench --smoke`` completes and prints every scenario row.

Results are not asserted (a benchmark measures; CI machines differ); this
test only keeps the bench from rotting as the service changes.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_bench_smoke_prints_a_row_for_every_scenario():
    sys.path.insert(0, ROOT)
    from bench.run import SCENARIOS

    done = subprocess.run([sys.executable, "-m", "bench", "--smoke"], capture_output=True, text=True, cwd=ROOT,
                          timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")}
    missing = [name for name in SCENARIOS if name not in rows]
    assert not missing, f"rows missing: {missing}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert "load generator:" in done.stdout
