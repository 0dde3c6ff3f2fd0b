"""The house layout, checked from the source: layers import downward only, no import circles, small units.

Every module's imports are read with ``ast``, function-local ones included (a local import hides a
circle from Python, not from this test). The layers, lowest first (ARCHITECTURE.md):

    alarm.pipeline  <  alarm.rephrase  <  alarm.trainer  <  alarm.demo  <  alarm.cli

A module may import its own layer and the layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("pipeline", "rephrase", "trainer", "demo", "cli")
"""Lowest first; the package ``alarm`` is the repository root (pyproject.toml maps it)."""
STAGES = ("pipeline", "rephrase", "trainer")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def source_files() -> dict[str, Path]:
    """``alarm.x.y`` -> file, for every library module (tests and benchmarks excluded)."""
    files = {"alarm": ROOT / "__init__.py", "alarm.cli": ROOT / "cli.py"}
    for top in LAYERS[:-1]:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(["alarm", *parts])] = path
    return {name: path for name, path in files.items() if path.is_file()}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def imported(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported alarm module, line) for every import in ``path``, local ones included."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from alarm.x import y``: y is a submodule or a name in x; count whichever exists.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known and "." in name:
                name = name.rpartition(".")[0]  # alarm.x.y.Name -> alarm.x.y
            if name in known and name != module:
                found.append((name, node.lineno))
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    files = source_files()
    return {m: imported(m, p, set(files)) for m, p in files.items()}


def circles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_layers_import_downward_only() -> None:
    files = source_files()
    upward = [
        f"{files[m].relative_to(ROOT)}:{line} imports {target} ({LAYERS[layer(target)]} is above "
        f"{LAYERS[layer(m)]})"
        for m, edges in import_graph().items() for target, line in edges
        if layer(m) >= 0 and layer(target) > layer(m)
    ]
    assert not upward, (
        "upward imports (a lower layer must not know a higher one):\n  " + "\n  ".join(upward)
        + "\nFix: move what both need down to the lowest layer that uses it, or pass it in as an argument.")


def test_no_import_circles() -> None:
    found = circles(import_graph())
    assert not found, (
        "import circles (function-local imports count too):\n  " + "\n  ".join(" <-> ".join(c) for c in found)
        + "\nFix: move the piece the modules share into a module of its own that imports neither of them; "
          "moving an import into a function hides the circle from Python, not from this test.")


def test_stages_are_imported_through_the_alarm_package() -> None:
    bare = []
    for path in source_files().values():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bare += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                     if n.split(".")[0] in (*STAGES, "cli")]
    assert not bare, ("top-level stage imports (there is no installed `pipeline`, `trainer`, `rephrase` or "
                      "`cli`):\n  " + "\n  ".join(bare) + "\nFix: import alarm.pipeline... instead.")


def test_units_are_small() -> None:
    big = []
    for path in source_files().values():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_FILE_LINES:
            big.append(f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines "
                               f"(at most {MAX_FUNCTION_LINES})")
    assert not big, ("units too long to read at once:\n  " + "\n  ".join(big)
                     + "\nFix: split the file along the data flow, the function into named steps.")


@pytest.mark.parametrize(("source", "expected"), [
    ({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}, [["a", "b", "c"]]),
    ({"a": ["b"], "b": []}, []),
])
def test_circle_finder_finds_circles(source: dict[str, list[str]], expected: list[list[str]]) -> None:
    graph = {k: [(v, 1) for v in vs] for k, vs in source.items()}
    assert circles(graph) == expected


def test_import_reader_sees_local_and_relative_imports(tmp_path: Path) -> None:
    module = tmp_path / "job.py"
    module.write_text("from alarm.pipeline import store\n\ndef f():\n    from alarm.trainer.train import train\n"
                      "    from . import decode\n")
    known = {"alarm.pipeline.job", "alarm.pipeline.store", "alarm.pipeline.decode", "alarm.trainer.train"}
    assert sorted(t for t, _ in imported("alarm.pipeline.job", module, known)) == [
        "alarm.pipeline.decode", "alarm.pipeline.store", "alarm.trainer.train"]
