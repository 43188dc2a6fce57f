"""Packaging (issue 15 part 5): `python -m build` gives an sdist and a wheel that install and
import in a clean virtual environment.

Offline by construction: the build runs without isolation (setuptools and build come from the
dev extra), the wheel is installed with --no-deps, and the fresh venv sees torch & co. through a
.pth line pointing at this interpreter's site-packages (no download, no editable finder: .pth
files of a directory added that way are not executed, so `import widenets` can only find the
installed wheel; the test checks that it does).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]




def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, **kw)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_sdist_and_wheel_build_install_and_import(tmp_path):
    src = tmp_path / "src"
    # Build from a copy of the tracked tree so build/ and *.egg-info never touch the checkout.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "site", "out", "*.egg-info", "__pycache__",
        ".pytest_cache", "tests", "benchmarks"))
    dist = tmp_path / "dist"
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    res = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
               env=env)
    # SPDX license string: setuptools warns about the old `license = {text = ...}` table.
    assert "License classifiers are deprecated" not in res.stderr + res.stdout
    assert "`project.license` as a TOML table is deprecated" not in res.stderr + res.stdout
    import widenets

    sdists = list(dist.glob("widenets-*.tar.gz"))
    wheels = list(dist.glob("widenets-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in dist.iterdir())
    # Version from one place: the file names carry widenets.__version__.
    assert f"widenets-{widenets.__version__}" in wheels[0].name
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "widenets/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names), "LICENSE missing from the wheel"
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta_text = zipfile.ZipFile(wheels[0]).read(meta).decode()
    assert "License-Expression: Apache-2.0" in meta_text
    with tarfile.open(sdists[0]) as tar:
        members = tar.getnames()
    assert any(m.endswith("src/widenets/py.typed") for m in members)

    # A fresh venv (no pip of its own), the wheel installed with this interpreter's pip.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                   ).stdout.strip()
    Path(purelib, "_parent_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
          "-q", str(wheels[0])], env=env)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = _run([str(py), "-c",
                "import widenets, torch; "
                "k = widenets.serial(widenets.Dense(1), widenets.Relu(), widenets.Dense(1))"
                ".kernel(torch.ones(2, 3)); "
                "print(widenets.__version__, widenets.__file__, list(k.ntk.shape) == [2, 2])"],
               env=clean, cwd=tmp_path)
    version, where, shape = out.stdout.split()
    assert version == widenets.__version__
    assert Path(where).is_relative_to(env_dir), f"imported {where}, not the installed wheel"
    assert shape == "True"
    script = env_dir / "bin" / "widenets"
    if script.exists():
        out = _run([str(script), "--version"], env=clean, cwd=tmp_path)
        assert widenets.__version__ in out.stdout
