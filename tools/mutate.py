"""A small mutation tester: do the tests notice when a comparison, a boolean or a constant is wrong?

Theory of operation. For each module named in ``TESTS`` the script parses the
source and lists one mutant per place and change:

- a comparison operator moves across its boundary or flips: ``<`` <-> ``<=``,
  ``>`` <-> ``>=``, ``==`` <-> ``!=``;
- a boolean operator flips: ``and`` <-> ``or``;
- a small number (``abs(n) <= 1000``, not a bool) becomes ``n + 1`` and
  ``n - 1`` (so ``0`` -> ``1`` and ``1`` -> ``0``).

Each mutant is written, one at a time, into a temporary copy of the tree (the
working tree is never edited), and the module's fast test files run there
with ``-x -q`` under a timeout. A failing run kills the mutant; a passing run
means it survived: either a test is missing, or the mutant is equivalent (it
changes no behaviour) and a reader must judge which. The unmutated copy runs
first, so a module whose tests fail without any mutant is reported, not
counted as all-killed.

    python3 tools/mutate.py --list                      # every mutant, nothing run
    python3 tools/mutate.py --module recsvc/storage/counter.py  # one module
    python3 tools/mutate.py --sample 40 --seed 7        # a bounded, repeatable run

Standard library only; pytest is the one the tests use (``--python``).
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# module -> the fast test files that guard it (each a few seconds at most).
TESTS: dict[str, list[str]] = {
    "recsvc/contract/decision.py": ["tests/test_decision.py", "tests/test_play_rows.py", "tests/test_sweeper.py"],
    "recsvc/core/service.py": ["tests/test_play_rows.py", "tests/test_fail_fast.py", "tests/test_sweeper.py",
                          "tests/test_invariants.py", "tests/test_row7_attempt.py",
                          "tests/test_stuck_wakes_waiters.py", "tests/test_retry_limit.py", "tests/test_retry_floor.py",
                          "tests/test_authentication.py", "tests/test_readme_decisions.py",
                          "tests/test_twilio_webhook.py"],
    "recsvc/core/worker.py": ["tests/test_worker_pool.py", "tests/test_sweeper.py", "tests/test_crash_recovery.py",
                         "tests/test_worker_rows.py"],
    "recsvc/storage/counter.py": ["tests/test_counter.py::TestMemoryCounter", "tests/test_counter_expiry.py",
                          "tests/test_fail_fast.py"],
    "recsvc/storage/sqlite_counter.py": ["tests/test_sqlite_counter.py", "tests/test_counter_expiry.py"],
    "recsvc/storage/redis_counter.py": ["tests/test_counter.py"],
    "recsvc/storage/fallback_counter.py": ["tests/test_counter_backoff.py", "tests/test_counter_fallback.py"],
    "recsvc/core/media.py": ["tests/test_media.py", "tests/test_media_http.py"],
}

FLIPS: dict[type, type] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.And: ast.Or, ast.Or: ast.And,
}
SYMBOLS: dict[type, str] = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.And: "and", ast.Or: "or",
}
SMALL = 1000


@dataclass(frozen=True)
class Mutant:
    module: str      # path relative to the tree's root
    node: int        # index of the node in ast.walk order
    slot: int        # which operator of a chained comparison; 0 otherwise
    line: int
    column: int
    before: str
    after: str

    @property
    def place(self) -> str:
        return f"{self.line}:{self.column + 1}"

    @property
    def label(self) -> str:
        return f"{self.before} -> {self.after}"


def _is_small_number(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and type(node.value) in (int, float)
            and abs(node.value) <= SMALL)


def _number_changes(value: int | float) -> list[int | float]:
    return [change for change in (value + 1, value - 1) if change >= 0 or value < 0]


def list_mutants(root: str, module: str) -> list[Mutant]:
    """Every mutant of ``module`` (a path under ``root``), in source order."""
    with open(os.path.join(root, module), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    indices = {id(sub.slice) for sub in ast.walk(tree) if isinstance(sub, ast.Subscript)}
    mutants = []
    for index, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare):
            for slot, op in enumerate(node.ops):
                if type(op) in FLIPS:
                    mutants.append(Mutant(module, index, slot, node.lineno, node.col_offset, SYMBOLS[type(op)],
                                          SYMBOLS[FLIPS[type(op)]]))
        elif isinstance(node, ast.BoolOp):
            mutants.append(Mutant(module, index, 0, node.lineno, node.col_offset, SYMBOLS[type(node.op)],
                                  SYMBOLS[FLIPS[type(node.op)]]))
        elif _is_small_number(node) and id(node) not in indices:  # entry[1] names a field, not a rule
            for slot, change in enumerate(_number_changes(node.value)):
                mutants.append(Mutant(module, index, slot, node.lineno, node.col_offset, repr(node.value), repr(change)))
    return sorted(mutants, key=lambda m: (m.line, m.column, m.node, m.slot))


def mutated_source(source: str, mutant: Mutant) -> str:
    """The module's source with this one mutant applied (re-rendered from the syntax tree)."""
    tree = ast.parse(source)
    for index, node in enumerate(ast.walk(tree)):
        if index != mutant.node:
            continue
        if isinstance(node, ast.Compare):
            node.ops[mutant.slot] = FLIPS[type(node.ops[mutant.slot])]()
        elif isinstance(node, ast.BoolOp):
            node.op = FLIPS[type(node.op)]()
        else:
            node.value = _number_changes(node.value)[mutant.slot]
        return ast.unparse(tree) + "\n"
    raise ValueError(f"no node {mutant.node} in {mutant.module}")


def copy_tree(root: str, into: str) -> str:
    """A copy of the parts of the tree the tests read, without caches or virtualenvs."""
    target = os.path.join(into, "tree")
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache",
                                    "recsvc-data", "demo-data", "dist", "build")
    shutil.copytree(root, target, ignore=ignore, symlinks=True)
    return target


def run_tests(tree: str, tests: list[str], python: str, timeout: float) -> str:
    """killed, survived or timeout: how the tests fared in ``tree``."""
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    proc = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the tests may have started servers of their own
        proc.wait()
        return "timeout"
    return "survived" if code == 0 else "killed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", help="a module path (repeatable); default: all in the table")
    parser.add_argument("--tests", nargs="+", help="test files for --module, instead of the table's")
    parser.add_argument("--root", default=ROOT, help="the tree to copy and mutate (default: this checkout)")
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    parser.add_argument("--limit", type=int, help="run at most N mutants (after --sample)")
    parser.add_argument("--sample", type=int, help="run a random sample of N mutants")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant's test run (default 60)")
    parser.add_argument("--python", default=None, help="the Python with pytest (default: .venv's, else this one)")
    args = parser.parse_args(argv)

    root = os.path.abspath(args.root)
    modules = args.module or list(TESTS)
    if args.tests and len(modules) != 1:
        parser.error("--tests goes with exactly one --module")
    unknown = [m for m in modules if not args.tests and m not in TESTS]
    if unknown:
        parser.error(f"no tests are known for {', '.join(unknown)}; pass --tests")
    mutants = [m for module in modules for m in list_mutants(root, module)]
    if args.sample is not None and args.sample < len(mutants):
        chosen = set(random.Random(args.seed).sample(range(len(mutants)), args.sample))
        mutants = [m for i, m in enumerate(mutants) if i in chosen]
    if args.limit is not None:
        mutants = mutants[:args.limit]

    if args.list:
        for m in mutants:
            print(f"{m.module}:{m.place}\t{m.label}")
        print(f"{len(mutants)} mutants")
        return 0

    python = args.python or next((p for p in (os.path.join(root, ".venv", "bin", "python"),)
                                  if os.path.exists(p)), sys.executable)
    survivors = timeouts = 0
    with tempfile.TemporaryDirectory(prefix="recsvc-mutate-") as scratch:
        tree = copy_tree(root, scratch)
        print(f"{'module':<28} {'line':>7}  {'mutation':<16} result", flush=True)
        for module in modules:
            own = [m for m in mutants if m.module == module]
            if not own:
                continue
            tests = args.tests or TESTS[module]
            path = os.path.join(tree, module)
            with open(path, encoding="utf-8") as f:
                original = f.read()
            try:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(ast.unparse(ast.parse(original)) + "\n")
                baseline = run_tests(tree, tests, python, args.timeout * 2)
                if baseline != "survived":
                    print(f"{module:<28} {'-':>7}  {'(none)':<16} tests fail unmutated ({baseline}); skipped",
                          flush=True)
                    continue
                for m in own:
                    started = time.monotonic()
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(mutated_source(original, m))
                    result = run_tests(tree, tests, python, args.timeout)
                    survivors += result == "survived"
                    timeouts += result == "timeout"
                    print(f"{module:<28} {m.place:>7}  {m.label:<16} {result} ({time.monotonic() - started:.1f}s)",
                          flush=True)
            finally:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(original)
    print(f"{len(mutants)} mutants run, {survivors} survived, {timeouts} timed out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
