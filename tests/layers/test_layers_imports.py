"""No import cycle among the modules of widenets.layers (issue 15, part 3): the shared pieces
(the input kernel, the checks, the block scheduler) sit below `base`, and `base` reaches the
combinators only through the `Layer.stages()` hook and the `serial_composition` registration.
Imports inside functions count: a lazy import is a cycle postponed, not removed."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "widenets"
PACKAGE = SRC / "layers"


def imports_of(path: Path) -> set[str]:
    """The sibling modules of widenets.layers that `path` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:                                   # from . import x
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and \
                (node.module or "").startswith("widenets.layers."):
            out.add(node.module.split(".")[2])
    return {m for m in out if (PACKAGE / f"{m}.py").exists()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of nodes, or None (depth-first search)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_in_layers():
    graph = {p.stem: imports_of(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert "_schedule" in graph["base"] and "base" in graph["combinators"]   # the scan works
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in widenets.layers: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
