"""Build the single-file recsvc: ``python3 tools/build_pyz.py dist/recsvc.pyz`` (``make pyz``).

The archive is the standard library's zipapp of the ``recsvc`` package,
static assets included (they are read with importlib.resources, which reads
from a zip as well as from a folder). Its ``__main__`` calls
``recsvc.cli:main`` and exits with its status: zipapp's own ``-m`` entry
would drop the return value, and ``recsvc: error: ...`` must exit 2.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAIN = '''"""recsvc as one file: python3 recsvc.pyz serve | worker | demo | fetch ..."""
import sys

from recsvc.cli import main

sys.exit(main())
'''


def build(target: Path, python: str = "/usr/bin/env python3") -> Path:
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recsvc-pyz-") as staging:
        source = Path(staging) / "app"
        shutil.copytree(ROOT / "recsvc", source / "recsvc",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (source / "__main__.py").write_text(MAIN, encoding="utf-8")
        zipapp.create_archive(source, target, interpreter=python, compressed=True)
    return target


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else ROOT / "dist" / "recsvc.pyz"
    print(build(target))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
