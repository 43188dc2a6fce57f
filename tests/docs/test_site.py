"""The documentation site builds in strict mode (issue 15): a broken link or anchor, a page
missing from the nav, a reference mkdocstrings cannot resolve, or a docstring griffe cannot
parse is a warning, and strict mode turns every warning into a failure. `make docs` runs the
same build into site/."""

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
    # The API reference is generated from the docstrings: a public name must appear on its page.
    import widenets

    html = (site / "api" / "widenets" / "index.html").read_text()
    for name in ("Dense", "Kernel", "empirical_ntk", "serial"):
        assert f'id="widenets.{name}"' in html, f"widenets.{name} missing from the API reference"
    assert (site / "math" / "index.html").exists()
    assert widenets.__version__
