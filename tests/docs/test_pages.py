"""Every ```python block of the documentation pages runs (issue 15): examples cannot rot.

Blocks run top to bottom in one namespace per page, in a temporary working directory, with
OMP threads as the test suite sets them. ```py blocks (and any other language) are not run:
the contributor guide says when to use them. A page whose examples raise fails with the page,
the block's first line number and the traceback.
"""

import os
import re
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE_RE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(text: str):
    """(line number, code) of each ```python block of a Markdown text."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE_RE.finditer(text)]


PAGES = sorted(p for p in DOCS.rglob("*.md") if python_blocks(p.read_text()))


def test_pages_with_examples_are_found():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    # Mutation caught: a fence regex that matches nothing would silently run no example.
    for page in ("guide/kernels.md", "guide/empirical.md", "guide/predict.md",
                 "guide/finite_width.md", "guide/tiles.md", "guide/cli.md", "contributing.md",
                 "neural_tangents.md", "index.md"):
        assert page in names, f"docs/{page} has no ```python example the tests can run"
    assert python_blocks("x\n```python\na = 1\n```\n```py\nb = 2\n```\n") == [(3, "a = 1\n")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    import matplotlib

    matplotlib.use("Agg")
    namespace = {"__name__": f"docs_page_{page.stem}"}
    rel = page.relative_to(ROOT)
    for line, code in python_blocks(page.read_text()):
        try:
            exec(compile(code, f"{rel}:{line}", "exec"), namespace)
        except Exception:
            pytest.fail(f"{rel}: the ```python block at line {line} failed:\n"
                        f"{traceback.format_exc()}", pytrace=False)
