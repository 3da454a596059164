"""The house has no import circles: not between modules, not between rooms; `checks` imports nothing of agent_ops.

Every import counts, including those inside functions (the lazy ones of the status path); only
`if TYPE_CHECKING:` blocks are left out, since they never run.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in [*ROOT.glob("agent_ops/**/*.py"), *ROOT.glob("checks/**/*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {id(node) for block in ast.walk(tree)
                     if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                     for node in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [resolve(f"{node.module}.{a.name}") or resolve(node.module) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names]
            else:
                continue
            edges[mod].update(t for t in targets if t and t != mod)
    return edges


def _cycles(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def _room(mod: str) -> str:
    parts = mod.split(".")
    if parts[0] == "checks":
        return "checks"
    return ".".join(parts[:2]) if len(parts) > 2 or (ROOT / "agent_ops" / parts[-1]).is_dir() else mod


def test_no_module_imports_itself_through_others() -> None:
    mods = _modules()
    assert _cycles(sorted(mods), _edges(mods)) == []


def test_no_two_rooms_import_each_other() -> None:
    mods = _modules()
    rooms: dict[str, set[str]] = defaultdict(set)
    for a, targets in _edges(mods).items():
        rooms[_room(a)].update(_room(b) for b in targets if _room(b) != _room(a))
    assert "agent_ops.run" in rooms["agent_ops.front"]  # the graph is real: the top room reaches the ones below
    assert _cycles(sorted({_room(m) for m in mods}), rooms) == []


def test_checks_imports_nothing_of_the_controller() -> None:
    edges = _edges(_modules())
    assert {b for a, targets in edges.items() if a.startswith("checks") for b in targets if b.startswith("agent_ops")} == set()
