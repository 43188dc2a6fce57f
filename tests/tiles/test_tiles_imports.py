"""No import cycle inside wn.tiles (issue 15, part 3): reader.py and _kernel_array.py once
imported each other (the lazy array's .load() reached back into the reader); the shared piece
now sits below both (whole.py). Every import counts, also those inside functions."""

import ast
from pathlib import Path

TILES = Path(__file__).resolve().parents[2] / "src" / "widenets" / "tiles"


def _graph(files: dict[str, str]) -> dict[str, set[str]]:
    """module -> modules of the same package it imports (`from .x import ...`, `from . import x`)."""
    graph = {}
    for name, text in files.items():
        deps = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[name] = deps & set(files)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        state[u] = 2
        stack.pop()
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_tiles_has_no_import_cycle():
    files = {p.stem: p.read_text() for p in TILES.glob("*.py") if p.stem != "__init__"}
    cycle = _cycle(_graph(files))
    assert cycle is None, " -> ".join(cycle)


def test_the_check_finds_a_planted_cycle():
    files = {"reader": "def f():\n    from ._kernel_array import K\n",
             "_kernel_array": "def g():\n    from .reader import _read\n", "store": ""}
    assert _cycle(_graph(files)) == ["_kernel_array", "reader", "_kernel_array"]
