"""The floors of docs/architecture.md, checked: every import (function-level ones included) goes
to a lower floor or stays inside its own package, and no module imports itself back."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "netchisel"
FLOORS = {
    "core": 1,
    "artifact": 2,
    "calib": 2,
    "zoo": 2,
    "report": 2,
    "measure": 3,
    "prune": 4,
    "quantize": 4,
    "factorize": 4,
    "distill": 4,
    "dynamic": 4,
    "stages": 5,
    "pipeline": 6,
    "search": 7,
    "cli": 8,
    "__init__": 8,
}
LONGEST_FILE = 500  # lines; a formulas table is the one exception
LONG_TABLES = {"measure/formulas.py"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every netchisel module `path` imports, with the line, wherever the import statement is."""
    package = (
        _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    )
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("netchisel")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base])
            if base.startswith("netchisel"):
                if base == "netchisel":  # from netchisel import prune: the subpackages
                    found += [(f"netchisel.{a.name}", node.lineno) for a in node.names]
                else:
                    found.append((base.rstrip("."), node.lineno))
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_import_goes_down_a_floor_or_stays_in_its_room() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        here = _room(_module_name(path))
        for target, line in _imports(path):
            there = _room(target)
            if there == here or there not in FLOORS:
                continue
            if FLOORS[there] >= FLOORS[here]:
                where = f"{path.relative_to(SRC)}:{line} ({here}, floor {FLOORS[here]})"
                wrong.append(f"{where} imports {target} (floor {FLOORS[there]})")
    assert not wrong, "\n".join(wrong)


def test_every_room_has_a_floor() -> None:
    rooms = {
        p.stem if p.is_file() else p.name
        for p in SRC.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert rooms <= set(FLOORS), rooms - set(FLOORS)


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        graph[_module_name(path)] = {t for t, _ in _imports(path)}
    modules = set(graph)
    # an import of a package means its __init__; of a name inside a module, that module
    for deps in graph.values():
        for dep in list(deps):
            while dep not in modules and "." in dep:
                deps.discard(dep)
                dep = dep.rpartition(".")[0]
                deps.add(dep)
    cycles = _cycles({m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()})
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def test_no_file_holds_more_than_one_idea_by_length() -> None:
    long = [
        f"{p.relative_to(SRC)}: {n} lines"
        for p in sorted(SRC.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > LONGEST_FILE
        and str(p.relative_to(SRC)) not in LONG_TABLES
    ]
    assert not long, "\n".join(long)
