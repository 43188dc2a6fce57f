"""No private name crosses a package boundary (issue 15, part 3; the contributor guide's rule):
a helper another package needs is public in the lower package. This scans every module's
`from ... import ...` statements, so a new cross-package private import fails here, naming
the file, the line and the name."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "widenets"


def _package(module: str) -> str:
    """widenets.layers.base -> widenets.layers; widenets.kernel -> widenets."""
    return module.rsplit(".", 1)[0]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] + ["__init__"]
    return ".".join(parts)


def _resolve(importer: str, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module if (node.module or "").startswith("widenets") else None
    base = importer.split(".")[:-node.level]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_private_name_is_imported_across_packages():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        importer = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _resolve(importer, node)
            if target is None:
                continue
            # the package that owns the imported names: the target module's package, or the
            # target itself when it is a package (`from ..layers import x`)
            owner = target if (SRC.parent / target.replace(".", "/")).is_dir() else \
                _package(target)
            if owner == _package(importer):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    problems.append(f"{path.relative_to(SRC.parent.parent)}:{node.lineno}: "
                                    f"{alias.name} from {target}")
    assert not problems, ("private names imported across packages (make them public in the "
                          "lower package):\n" + "\n".join(problems))


def test_the_scan_sees_a_planted_violation(tmp_path):
    """The checker's own logic on a planted example: a module of one package importing a
    private name of another is found, a same-package one is not."""
    importer = "widenets.tiles.reader"
    bad = ast.parse("from ..layers.base import _secret").body[0]
    good = ast.parse("from .store import _helper").body[0]
    assert _package(_resolve(importer, bad)) != _package(importer)
    assert _package(_resolve(importer, good)) == _package(importer)
