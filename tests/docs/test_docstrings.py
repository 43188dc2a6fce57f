"""Every public name has a docstring with a runnable example (issue 15).

Public names: the `__all__` of widenets and of its public subpackages listed in PUBLIC below
(the API reference is generated from the same lists). Each class or function needs a docstring
with an `Example:` (or `Examples:`) section of `>>>` lines; the examples run as doctests with
`wn` (widenets), `torch` and `np` imported, in a temporary directory. Constants (FIGURES,
RECORDABLE) and submodules are documented by their module.
"""

import doctest
import importlib
import inspect
import os
import re

import numpy as np
import pytest
import torch

import widenets as wn

PUBLIC = ["widenets", "widenets.predict", "widenets.finite_width", "widenets.tiles",
          "widenets.sklearn", "widenets.data", "widenets.experiments"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE_RE = re.compile(r"^\s*Examples?:\s*$", re.M)


def public_objects():
    """(qualified name, object) of every public class and function, each object once."""
    seen, out = set(), []
    for modname in PUBLIC:
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            out.append((f"{modname}.{name}", obj))
    return out


OBJECTS = public_objects()


def _where(obj) -> str:
    try:
        path = inspect.getsourcefile(obj)
        line = inspect.getsourcelines(obj)[1]
        return f"{os.path.relpath(path, ROOT)}:{line}"
    except (TypeError, OSError):
        return "(source not found)"


def missing_example(qualname: str, obj) -> str | None:
    """What is missing from obj's docstring, as a message for its author; None if nothing."""
    doc = obj.__doc__
    if not doc or not doc.strip():
        return (f"{qualname} ({_where(obj)}) has no docstring. Add a Google-style docstring "
                f"with a summary line, Args:, Returns: and an Example: section of >>> lines "
                f"(checked by tests/docs/test_docstrings.py).")
    doc = inspect.cleandoc(doc)
    if not EXAMPLE_RE.search(doc) or ">>>" not in doc:
        what = "no `Example:` section" if not EXAMPLE_RE.search(doc) else "no `>>>` lines"
        return (f"{qualname} ({_where(obj)}): its docstring has {what}. Add at its end\n"
                f"    Example:\n        >>> ...   (a call that runs in well under a second; "
                f"`wn`, `torch` and `np` are imported; checked by tests/docs/test_docstrings.py)")
    return None


def test_every_public_name_has_an_example():
    assert len(OBJECTS) > 80, "the public API lost names, or PUBLIC is wrong"
    problems = [m for q, o in OBJECTS if (m := missing_example(q, o))]
    assert not problems, (f"{len(problems)} public names lack a runnable example:\n"
                          + "\n".join(problems))


def test_the_check_names_what_is_missing():
    # Mutations: no docstring, a docstring without an Example section, a section without >>>.
    def f():
        pass

    def g():
        """Summary."""

    def h():
        """Summary.

        Example:
            f()
        """

    assert "has no docstring" in missing_example("f", f)
    assert "no `Example:` section" in missing_example("g", g)
    assert "no `>>>` lines" in missing_example("h", h)
    assert "tests/docs/test_docstrings.py" in missing_example("f", f)


def run_examples(doc: str, name: str, where: str) -> tuple[int, str]:
    """Run the >>> lines of a docstring; (number of failed examples, doctest's report)."""
    parser = doctest.DocTestParser()
    test = parser.get_doctest(inspect.cleandoc(doc), {"wn": wn, "torch": torch, "np": np},
                              name, where, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    runner.run(test, out=out.append)
    return runner.failures, "".join(out)


def test_a_wrong_expected_output_fails():
    # Mutation caught: a runner that executes examples without comparing their output.
    ok = run_examples(">>> wn.finite_width.k3_hvp_count(3)\n9\n", "ok", "here")
    wrong = run_examples(">>> wn.finite_width.k3_hvp_count(3)\n10\n", "wrong", "here")
    assert ok[0] == 0 and wrong[0] == 1, (ok, wrong)


@pytest.mark.parametrize("qualname,obj", OBJECTS, ids=[q for q, _ in OBJECTS])
def test_docstring_example_runs(qualname, obj, tmp_path, monkeypatch):
    if missing_example(qualname, obj):
        pytest.skip("no example (reported by test_every_public_name_has_an_example)")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    failures, report = run_examples(obj.__doc__, qualname, _where(obj))
    assert failures == 0, f"the example of {qualname} ({_where(obj)}) failed:\n{report}"
