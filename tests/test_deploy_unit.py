"""The systemd unit of docs/deploy.md, as written there, is hardened: ``systemd-analyze security`` rates it OK or better.

The unit is read from the docs (the ``ini`` block under
``/etc/systemd/system/recsvc.service``) and rated offline, so no systemd has
to run here; the test is skipped, with the reason, where systemd-analyze is
not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

UNIT_BLOCK = re.compile(r"`/etc/systemd/system/recsvc\.service`:\n\n```ini\n(.*?)```", re.S)
GOOD_ENOUGH = ("PERFECT", "SAFE", "OK")


def unit_from_docs() -> str:
    with open(os.path.join(ROOT, "docs", "deploy.md"), encoding="utf-8") as handle:
        found = UNIT_BLOCK.search(handle.read())
    assert found, "docs/deploy.md has no recsvc.service block"
    return found.group(1)


def settings_of(unit: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_the_unit_sets_the_hardening_the_deploy_guide_promises():
    unit = settings_of(unit_from_docs())
    assert unit["ProtectSystem"] == ["strict"] and unit["ReadWritePaths"] == ["/var/lib/recsvc"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["PrivateTmp"] == ["yes"] and unit["UMask"] == ["0077"]
    assert unit["User"] == ["recsvc"] and unit["Group"] == ["recsvc"]
    data_dir = [v for v in unit["Environment"] if v.startswith("RECSVC_DATA_DIR=")]
    assert data_dir == ["RECSVC_DATA_DIR=/var/lib/recsvc"], "the writable path is the data dir"


def test_systemd_analyze_rates_the_unit_ok_or_better(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not here (a systemd system has it): the rating cannot be checked")
    unit = tmp_path / "recsvc.service"
    unit.write_text(unit_from_docs(), encoding="utf-8")
    done = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True,
                          timeout=60)
    rating = re.search(r"Overall exposure level for recsvc\.service: ([0-9.]+) (\w+)", done.stdout)
    assert rating, done.stdout + done.stderr
    score, level = float(rating.group(1)), rating.group(2)
    assert level in GOOD_ENOUGH, f"{score} {level}:\n{done.stdout}"
    with open(os.path.join(ROOT, "docs", "deploy.md"), encoding="utf-8") as handle:
        assert f'rates this unit "{level}"' in handle.read(), "the guide states the rating it gets"
