"""tools/mutate.py, the mutation tester, run on a tiny module with a tiny test.

The fixture's test checks ``fee`` far from its boundary, so the mutants at
the boundary survive and those that change the answers are killed: the
tool must tell the two apart, and never touch the tree it was given.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTATE = os.path.join(ROOT, "tools", "mutate.py")

TINY = """\
def fee(age):
    if age >= 18:
        return 10
    return 0
"""

TINY_TEST = """\
from tiny import fee


def test_an_adult_pays_and_a_child_does_not():
    assert fee(40) == 10
    assert fee(5) == 0
"""


def _tree(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tiny.py").write_text(TINY)
    (tmp_path / "tests" / "test_tiny.py").write_text(TINY_TEST)
    return tmp_path


def _mutate(tree, *args):
    done = subprocess.run([sys.executable, MUTATE, "--root", str(tree), "--module", "tiny.py",
                           "--tests", "tests/test_tiny.py", "--python", sys.executable, *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _results(lines):
    """{(line, mutation): result} from the table."""
    rows = {}
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "tiny.py":
            place, before, _, after, result = parts[1:6]
            rows[(int(place.split(":")[0]), f"{before} -> {after}")] = result
    return rows


def test_mutants_the_test_misses_survive_and_the_others_are_killed(tmp_path):
    tree = _tree(tmp_path)
    lines = _mutate(tree, "--timeout", "60")
    assert _results(lines) == {
        (2, ">= -> >"): "survived",     # fee(18) is never asked
        (2, "18 -> 19"): "survived",
        (2, "18 -> 17"): "survived",
        (3, "10 -> 11"): "killed",
        (3, "10 -> 9"): "killed",
        (4, "0 -> 1"): "killed",
    }
    assert lines[-1] == "6 mutants run, 3 survived, 0 timed out"
    assert (tree / "tiny.py").read_text() == TINY  # mutants live in a copy only


def test_list_prints_the_mutants_without_running_them(tmp_path):
    lines = _mutate(_tree(tmp_path), "--list")
    assert lines[0] == "tiny.py:2:8\t>= -> >"
    assert lines[-1] == "6 mutants"


def test_a_sample_is_bounded_and_repeatable(tmp_path):
    tree = _tree(tmp_path)
    first = _mutate(tree, "--list", "--sample", "3", "--seed", "4")
    assert first[-1] == "3 mutants"
    assert _mutate(tree, "--list", "--sample", "3", "--seed", "4") == first
    assert _mutate(tree, "--list", "--limit", "2")[-1] == "2 mutants"
