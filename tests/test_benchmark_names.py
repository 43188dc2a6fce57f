"""Every widenets name a benchmark script uses exists.

The benchmarks are not run by the test suite (they take minutes), so a renamed function broke
`benchmarks/finite_width.py` silently (it called a helper that the memory-budget unification
had renamed). This check resolves, without running the scripts, every `from widenets... import
name` and every attribute chain `alias.a.b` rooted at an imported widenets module, down to the
first object that is not a module; a missing name fails with the script and line.
"""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def _widenets_aliases(tree: ast.Module, problems: list[str], path: Path) -> dict[str, object]:
    aliases: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "widenets" or a.name.startswith("widenets."):
                    module = importlib.import_module(a.name)
                    if a.asname:
                        aliases[a.asname] = module
                    else:
                        aliases["widenets"] = importlib.import_module("widenets")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "widenets" or node.module.startswith("widenets.")):
            module = importlib.import_module(node.module)
            for a in node.names:
                if hasattr(module, a.name):
                    aliases[a.asname or a.name] = getattr(module, a.name)
                    continue
                try:        # a submodule not yet imported by its package
                    aliases[a.asname or a.name] = importlib.import_module(
                        f"{node.module}.{a.name}")
                except ImportError:
                    problems.append(f"{path.name}:{node.lineno}: {node.module} has no "
                                    f"{a.name!r}")
    return aliases


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return node.id, names[::-1]


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_uses_existing_widenets_names(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    problems: list[str] = []
    aliases = _widenets_aliases(tree, problems, path)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "ctx", None),
                                                             ast.Store):
            continue
        chain = _chain(node)
        if chain is None or chain[0] not in aliases:
            continue
        obj, seen = aliases[chain[0]], chain[0]
        for name in chain[1]:
            if not isinstance(obj, types.ModuleType):
                break       # attributes of classes and objects are the script's business
            if not hasattr(obj, name):
                try:
                    obj = importlib.import_module(f"{obj.__name__}.{name}")
                except ImportError:
                    problems.append(f"{path.name}:{node.lineno}: {seen}.{name} does not exist")
                    break
            else:
                obj = getattr(obj, name)
            seen = f"{seen}.{name}"
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_check_sees_a_missing_name(tmp_path):
    """Mutation: a check that never resolves anything would pass every script."""
    script = tmp_path / "bad.py"
    script.write_text("from widenets.finite_width import hierarchy\n"
                      "import widenets as wn\n"
                      "hierarchy._no_such_helper(1)\nwn.predict.no_such_function\n"
                      "wn.predict.solve\n")
    with pytest.raises(AssertionError, match=r"_no_such_helper[\s\S]*no_such_function"):
        test_benchmark_uses_existing_widenets_names(script)
