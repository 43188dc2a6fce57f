"""The documentation site builds in strict mode (issue 15): a broken link or anchor, a page
missing from the nav, a reference mkdocstrings cannot resolve, or a docstring griffe cannot
parse is a warning, and strict mode turns every warning into a failure. `make docs` runs the
same build into site/."""

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_strict_build(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (
        "`make docs` (mkdocs build --strict) failed; fix every WARNING below "
        "(the docs extra must be installed: pip install -e '.[docs]'):\n"
        + out.stdout[-6000:] + out.stderr[-6000:])
    site = tmp_path / "site"
    # The API reference is generated from the docstrings: every public class and function of
    # each public module must have an entry (an HTML id ending in its name) on its page.
    # Mutation caught: a page whose `::: module` block renders nothing, or a public name that
    # mkdocstrings resolves to a submodule of the same name (wn.lift, wn.tiles.compute).
    pages = {"widenets": "widenets", "widenets.predict": "predict",
             "widenets.finite_width": "finite_width", "widenets.tiles": "tiles",
             "widenets.sklearn": "sklearn", "widenets.data": "data",
             "widenets.experiments": "experiments"}
    missing = []
    for modname, page in pages.items():
        mod = importlib.import_module(modname)
        ids = set(re.findall(r'id="([\w.]+)"', (site / "api" / page / "index.html").read_text()))
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            if not any(i == f"{modname}.{name}" or i.endswith(f".{name}") for i in ids):
                missing.append(f"{modname}.{name} (docs/api/{page}.md)")
    assert not missing, "public names missing from the API reference: " + ", ".join(missing)
    assert (site / "math" / "index.html").exists()
