"""No reference to a file that does not exist (issue 15).

Scans the repository's code and prose (src, tests, benchmarks, docs, README, CHANGELOG,
Makefile, pyproject.toml, mkdocs.yml) for
* paths into the repository (`docs/x.md`, `benchmarks/foo.py`, `src/...`, `tests/....py`,
  `widenets/....py`, `.ci/...`): the file must exist;
* the project's design notes kept outside the repository (`MATH.md`, `ARCHITECTURE.md`) and
  absolute paths into the development machine (`/work/...`): never allowed; cite
  `docs/math.md §<anchor>` instead;
* citations `docs/math.md §<anchor>`: the anchor must be a section of docs/math.md
  (headings end with `{#anchor}`).
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["src", "tests", "benchmarks", "docs", "README.md", "CHANGELOG.md", "Makefile",
           "pyproject.toml", "mkdocs.yml", ".ci"]
SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".sh", ""}

PATH_RE = re.compile(
    r"(?<![\w./-])((?:docs|benchmarks|src|tests|widenets|\.ci)/[\w./-]*[\w-])")
OUTSIDE_RE = re.compile(r"\b(MATH\.md|ARCHITECTURE\.md)\b|(?<![\w.])/work/[\w./-]+")
MATH_CITE_RE = re.compile(r"docs/math\.md((?:[\s,;]*(?:and\s+)?§\s*[A-Za-z][\w-]*)+)")
ANCHOR_RE = re.compile(r"^#{1,6} .*\{#([\w-]+)\}\s*$", re.M)


def _files():
    for entry in SCANNED:
        p = ROOT / entry
        if p.is_file():
            yield p
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                generated = any(part == "__pycache__" or part.endswith(".egg-info")
                                for part in f.parts)          # build output, not our text
                if f.is_file() and f.suffix in SUFFIXES and not generated \
                        and f != Path(__file__).resolve():
                    yield f


def _exists(ref: str) -> bool:
    ref = ref.rstrip(".")
    parts = ref.split("/")
    if any(re.fullmatch(r"[A-Z_]+(\.\w+)?", p) for p in parts[1:]):
        return True  # a placeholder such as benchmarks/NAME.py
    candidates = [ROOT / ref]
    if ref.startswith("widenets/"):
        candidates.append(ROOT / "src" / ref)
    # a directory reference (`benchmarks/`, `src/widenets/tiles`) is fine when it exists
    return any(c.exists() for c in candidates)


def _anchors() -> set[str]:
    return set(ANCHOR_RE.findall((ROOT / "docs" / "math.md").read_text()))


def _scan(files, anchors):
    problems = []
    for f in files:
        try:
            text = f.read_text()
        except UnicodeDecodeError:
            continue
        rel = f.relative_to(ROOT) if f.is_relative_to(ROOT) else f.name
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{rel}:{lineno}"
            for m in OUTSIDE_RE.finditer(line):
                problems.append(f"{where}: {m.group(0)!r} is outside the repository; cite "
                                f"docs/math.md §<anchor> (the {{#anchor}} of its headings)")
            for m in PATH_RE.finditer(line):
                ref = m.group(1)
                if not _exists(ref):
                    problems.append(f"{where}: {ref!r} does not exist in the repository")
            for m in MATH_CITE_RE.finditer(line):
                for anchor in re.findall(r"§\s*([A-Za-z][\w-]*)", m.group(1)):
                    if anchor not in anchors:
                        problems.append(f"{where}: docs/math.md §{anchor} names no section; "
                                        f"sections: {', '.join(sorted(anchors))}")
    return problems


def test_no_reference_to_a_missing_file():
    anchors = _anchors()
    assert len(anchors) > 30, "docs/math.md lost its {#anchor} headings"
    problems = _scan(_files(), anchors)
    assert not problems, "references to files or sections that do not exist:\n" + "\n".join(
        problems)


def test_the_checker_catches_each_kind(tmp_path):
    # Mutations it must catch: a missing docs page, a missing benchmark script, a design note
    # outside the repository, an unknown math anchor (also second in a list of anchors).
    bad = tmp_path / "bad.py"
    bad.write_text('"""See docs/nothing_here.md and benchmarks/nope.py, MATH.md §2,\n'
                   'docs/math.md §no-such-anchor and docs/math.md §gelu, §missing-too, and\n'
                   'docs/math.md §gelu with benchmarks/predict.py (both fine)."""\n')
    problems = _scan([bad], _anchors())
    text = "\n".join(problems)
    assert "docs/nothing_here.md" in text and "benchmarks/nope.py" in text
    assert "'MATH.md'" in text
    assert "§no-such-anchor" in text and "§missing-too" in text
    assert len(problems) == 5, text
