"""The modules of widenets.empirical import each other in one direction only (no cycles, no
imports deferred into functions to dodge one), and the deprecated jacobian_ntk warns."""

import ast
import warnings
from pathlib import Path

import torch

import widenets as wn

# lowest first: a module may import only modules before it
ORDER = ["_target", "structure", "factors", "attention", "bare", "jacobian", "ntvp",
         "structured", "cost", "ntk", "linearize", "monte_carlo", "__init__"]
PKG = Path(wn.__file__).parent / "empirical"


def _relative_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.append(node.module)
    return out


def test_empirical_modules_import_downwards_only():
    """Mutation caught: the old jacobian.py imported ntk (inside jacobian_ntk) while ntk
    imported jacobian; any such back edge, deferred or not, fails here."""
    files = {p.stem for p in PKG.glob("*.py")}
    assert files == set(ORDER), "add the new module to ORDER at its level"
    for name in ORDER:
        for target in _relative_imports(PKG / f"{name}.py"):
            assert ORDER.index(target) < ORDER.index(name), f"{name} imports {target}"


def test_jacobian_ntk_is_deprecated_and_forwards():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    x = torch.randn(4, 3, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = wn.empirical.jacobian_ntk(model, x)
    assert any(issubclass(w.category, FutureWarning) and "implementation='jacobian'"
               in str(w.message) for w in caught)
    assert torch.equal(old, wn.empirical_ntk(model, x, implementation="jacobian"))
