"""recsvc/ imports nothing but the standard library and itself (the design card)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_CHECK = ROOT.parent / "shared" / "tools" / "stdlib_only.py"


def non_stdlib_imports(package: Path) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            bad += [f"{path.relative_to(package.parent)}:{node.lineno} {n}" for n in names
                    if n.split(".")[0] not in sys.stdlib_module_names and n.split(".")[0] != package.name]
    return bad


def test_recsvc_imports_only_the_standard_library():
    assert non_stdlib_imports(ROOT / "recsvc") == []


def test_the_check_notices_a_third_party_import(tmp_path):
    package = tmp_path / "recsvc"
    package.mkdir()
    (package / "bad.py").write_text("import os\nimport requests\nfrom recsvc import x\n")
    assert non_stdlib_imports(package) == ["recsvc/bad.py:2 requests"]


@pytest.mark.skipif(not SHARED_CHECK.exists(), reason="the shared stdlib_only.py tool is not beside this checkout")
def test_shared_stdlib_check_prints_zero():
    result = subprocess.run([sys.executable, str(SHARED_CHECK), "recsvc"], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ})
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("0 non-stdlib imports")
