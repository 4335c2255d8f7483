"""The package's folders are its plan (README, "Project layout"), and its imports point one way.

Every import of every module under recsvc/, at the top or inside a function,
is read with ast; nothing is imported to find out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "recsvc"
FOLDERS = ("contract", "storage", "core", "http", "player", "kit", "demo", "run")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = read_modules()


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(the recsvc modules ``name`` imports, the top-level names of everything else it imports)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.split(".")[0] == "recsvc" else others).add(
                    alias.name if alias.name.split(".")[0] == "recsvc" else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "recsvc":
                others.add(target.split(".")[0])
                continue
            for alias in node.names:  # "from recsvc.http import openapi" imports a module
                ours.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    ours.discard(name)
    unknown = ours - set(MODULES)
    assert not unknown, f"{name} imports modules that do not exist: {sorted(unknown)}"
    return ours, others


GRAPH = {name: imports_of(name)[0] for name in MODULES}


def folder_of(name: str) -> str:
    """The room a module sits in: a folder, "recsvc" for the entry point beside them, or
    "version" for the package's own __init__ (its version, which imports nothing)."""
    parts = name.split(".")
    if len(parts) == 1:
        return "version"
    return parts[1] if parts[1] in FOLDERS else "recsvc"


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_module_sits_in_a_folder_of_the_plan_or_is_the_entry_point():
    beside = sorted(name for name in MODULES if folder_of(name) == "recsvc")
    assert beside == ["recsvc.__main__", "recsvc.cli", "recsvc.python_version"]
    assert {folder_of(name) for name in MODULES} == {*FOLDERS, "recsvc", "version"}


def test_the_readme_names_every_folder_in_its_project_layout():
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Project layout", 1)[1].split("\n## ", 1)[0]
    for folder in FOLDERS:
        assert f"`recsvc/{folder}/`" in layout, folder


def test_the_decision_imports_nothing_but_the_model_and_settings():
    ours, others = imports_of("recsvc.contract.decision")
    assert ours <= {"recsvc.contract.model", "recsvc.contract.settings"}
    assert others <= {"__future__", "dataclasses", "typing"}


def test_no_module_imports_in_a_circle():
    assert circles(GRAPH) == []


def test_no_folder_imports_in_a_circle():
    folders: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        folders.setdefault(folder_of(name), set()).update(
            folder_of(target) for target in targets if folder_of(target) != folder_of(name))
    assert circles(folders) == []


def test_nothing_imports_the_command_line_but_the_entry_point():
    assert sorted(name for name, targets in GRAPH.items() if "recsvc.cli" in targets) == ["recsvc.__main__"]


def test_only_the_storage_folder_imports_sqlite3():
    users = {name for name in MODULES if "sqlite3" in imports_of(name)[1]}
    assert users and all(folder_of(name) == "storage" for name in users), sorted(users)


def test_the_worker_never_reaches_the_http_side():
    assert not {name for name in reachable("recsvc.core.worker") if folder_of(name) in ("http", "run")}


@pytest.mark.parametrize("player", sorted(name for name in MODULES if folder_of(name) == "player"))
def test_the_players_never_reach_the_server_or_storage(player):
    assert not {name for name in reachable(player) if folder_of(name) in ("http", "storage", "run")}


def test_the_checks_find_what_they_look_for():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    assert "recsvc.storage.store" in reachable("recsvc.core.worker")
    assert imports_of("recsvc.player.fetch")[0] >= {"recsvc.player.client", "recsvc.player.outcomes"}
