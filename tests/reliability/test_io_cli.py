"""Issue 17, data files and the command line: errors are errors, nothing is silently lost.

Every test here fails on the code before issue 17 (the comment says how).
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import numpy as np
import pytest

import widenets as wn
from widenets import cli
from widenets.experiments import runner
from widenets.experiments.base import ConfigError, Result, make_config
from widenets.tiles.cli import load_data
from widenets.tiles.spec import parse_spec


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


# ------------------------------------------------------------------ item 5: strict CSV reading
def _csv(tmp_path, text: str, name: str = "d.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_bad_first_row_is_an_error_not_a_lost_row(tmp_path):
    # Before: np.loadtxt failed on line 1, the retry skipped it as a "header": 2 rows, no word.
    p = _csv(tmp_path, "1,x2,3\n4,5,6\n7,8,9\n")
    with pytest.raises(ValueError, match=r"widenets kernel: --data: .*d.csv' line 1: the first "
                                         r"line mixes numbers and text \(column 2 is 'x2'\)"):
        load_data(str(p))
    with pytest.raises(ValueError, match=r"load_file: .*line 1.*mixes numbers and text"):
        wn.data.load_file(p)


def test_ragged_file_is_an_error_naming_the_line(tmp_path):
    # Before: "1,2,3 / 4,5 / 6,7" failed, the retry skipped line 1 and returned 2 rows of 2.
    p = _csv(tmp_path, "1,2,3\n4,5\n6,7\n")
    with pytest.raises(ValueError, match=r"line 2: expected 3 comma-separated fields \(as on "
                                         r"line 1\), got 2"):
        load_data(str(p))
    with pytest.raises(ValueError, match=r"load_file: .*line 2: expected 3"):
        wn.data.load_file(p)
    # A later non-number names line and column.
    q = _csv(tmp_path, "a,b\n1,2\n3,oops\n", "e.csv")
    with pytest.raises(ValueError, match=r"line 3, column 2: expected a number, got 'oops'"):
        wn.data.read_csv(q)


def test_header_detection_is_explicit(tmp_path):
    # "auto": a first line of names is a header, a first line of numbers is data.
    named = _csv(tmp_path, "x1,x2,y\n1,2,0\n3,4,1\n5,6,0\n", "named.csv")
    numeric = _csv(tmp_path, "1,2,0\n3,4,1\n", "numeric.csv")
    np.testing.assert_array_equal(wn.data.read_csv(named), [[1, 2, 0], [3, 4, 1], [5, 6, 0]])
    np.testing.assert_array_equal(wn.data.read_csv(numeric), [[1, 2, 0], [3, 4, 1]])
    # header=True skips line 1 whatever it holds; header=False reads it (names are an error).
    np.testing.assert_array_equal(wn.data.read_csv(numeric, header=True), [[3, 4, 1]])
    with pytest.raises(ValueError, match=r"line 1, column 1: expected a number, got 'x1'; pass "
                                         r"header=True"):
        wn.data.read_csv(named, header=False)
    with pytest.raises(ValueError, match=r"header must be 'auto', True or False, got 1"):
        wn.data.read_csv(named, header=1)
    with pytest.raises(ValueError, match=r"holds no data lines"):
        wn.data.read_csv(_csv(tmp_path, "x1,x2\n\n", "h.csv"))
    ds = wn.data.load_file(named, test_fraction=0.34, normalize=False, header="auto")
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 3


def test_empty_and_zero_row_npy_via_the_command_line(tmp_path, capsys):
    # Before: an empty .npy gave an EOFError traceback; a (0, 4) array a deep IndexError.
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "zero.npy", np.zeros((0, 4)))
    for name, needle in [("empty.npy", "cannot read --data"),
                         ("zero.npy", "at least one input")]:
        argv = ["kernel", "--net", "dense(4) relu dense(1)", "--data", str(tmp_path / name),
                "--out", str(tmp_path / "k.zarr"), "--no-progress"]
        assert cli.main(argv) == 2
        lines = _err_lines(capsys)
        assert len(lines) == 1 and "widenets kernel: " in lines[0] and needle in lines[0], lines
    assert not (tmp_path / "k.zarr").exists()


def test_kernel_out_below_proc_names_the_store(tmp_path, capsys):
    # Before: the message named the internal temporary '/proc/.x.<uuid>.init'.
    np.save(tmp_path / "x.npy", np.ones((3, 4)))
    argv = ["kernel", "--net", "dense(4) relu dense(1)", "--data", str(tmp_path / "x.npy"),
            "--out", "/proc/widenets-x", "--no-progress"]
    assert cli.main(argv) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "cannot create the tile store '/proc/widenets-x'" in lines[0]
    assert ".init" not in lines[0]


# ------------------------------------------------------------------ item 14: bounded SPEC
def test_net_spec_repeats_are_bounded():
    # Before: 20,000 and 40,000 layers were built (and 10^8 ran out of memory, nested repeats
    # gave a MemoryError traceback). The moderate counts come first so that this test fails
    # fast, without exhausting memory, on that code.
    with pytest.raises(ValueError, match=r"parse_spec: the repeat \[\.\.\.\]\*20000 would build "
                                         r"40000 layers; a SPEC may build at most 10000"):
        parse_spec("[dense(4) relu]*20000 dense(1)")
    with pytest.raises(ValueError, match=r"would build 40000 layers"):
        parse_spec("[[relu]*200]*200")
    with pytest.raises(ValueError, match=r"would build 200000000 layers"):
        parse_spec("[dense(16) relu]*100000000 dense(1)")
    with pytest.raises(ValueError, match=r"would build more than 10\^12 layers"):
        parse_spec("[relu]*" + "9" * 5000)
    with pytest.raises(ValueError, match=r"in the JSON SPEC"):
        parse_spec('[{"repeat": 100000000, "layers": ["relu"]}]')
    assert len(parse_spec("[dense(4) relu]*50 dense(1)").layers) == 101  # within the bound


def test_net_spec_bound_via_the_command_line(tmp_path, capsys):
    # Before: 20,000 layers built and run (a count of 10^8 exhausted the memory).
    np.save(tmp_path / "x.npy", np.ones((3, 4)))
    argv = ["kernel", "--net", "[relu]*20000 dense(1)", "--data",
            str(tmp_path / "x.npy"), "--out", str(tmp_path / "k.zarr"), "--no-progress"]
    assert cli.main(argv) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "at most 10000 layers" in lines[0], lines


# ------------------------------------------------------------------ item 12: distinct seeds
def test_repeated_seeds_are_an_input_error(tmp_path, capsys):
    # Before: seeds=1,1 ran and reported a zero-width confidence interval.
    from widenets.experiments import load

    with pytest.raises(ConfigError, match=r"--set seeds: lee-fig1 needs distinct seeds.*got "
                                          r"1,1 with 1 repeated"):
        make_config(load("lee-fig1"), quick=True, overrides={"seeds": "1,1"})
    assert cli.main(["reproduce", "blog-scaling", "--quick", "--out", str(tmp_path), "--set",
                     "seeds=0,2,0"]) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "distinct seeds" in lines[0], lines


# ------------------------------------------------------------------ item 15: no silent overwrite
@dataclasses.dataclass
class _Cfg:
    n: int = 3
    seed: int = 0


def _fake_module(fid: str, value: float):
    mod = types.SimpleNamespace(ID=fid, TITLE=f"fake {fid}", RUNTIME="0 s", Config=_Cfg, QUICK={})
    mod.run = lambda config: Result(figure=fid, config=config, data={},
                                    metrics={"value": value}, caption="c")
    mod.plot = lambda result, path: Path(path).write_bytes(b"\x89PNG fake")
    return mod


def test_second_run_into_one_out_is_refused_without_overwrite(tmp_path):
    # Before: the second run replaced the first one's result.json and index.html silently.
    quiet = dict(title="t", seed=None, log=lambda *a: None)
    runner.run_all([(_fake_module("fig", 1.0), _Cfg())], tmp_path, command="first", **quiet)
    first = (tmp_path / "result.json").read_text()
    with pytest.raises(OSError, match=r"--out .* already holds a report \(result.json and "
                                      r"index.html of `first`, status complete\); pass "
                                      r"--overwrite"):
        runner.run_all([(_fake_module("fig", 2.0), _Cfg())], tmp_path, command="second",
                       **quiet)
    assert (tmp_path / "result.json").read_text() == first  # untouched
    runner.run_all([(_fake_module("fig", 2.0), _Cfg())], tmp_path, command="second",
                   overwrite=True, **quiet)
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["command"] == "second" and res["figures"]["fig"]["metrics"]["value"] == 2.0


def test_cli_overwrite_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "prepare", lambda figures, **kw: [(_fake_module("fig", 1.0),
                                                                   _Cfg())])
    out = str(tmp_path / "o")
    assert cli.main(["demo", "--out", out]) == 0
    capsys.readouterr()
    assert cli.main(["demo", "--out", out]) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "already holds a report" in lines[0], lines
    assert cli.main(["demo", "--out", out, "--overwrite"]) == 0


# ------------------------------------------------------------------ item 7: --set values
@pytest.mark.parametrize("figure, setting, needle", [
    ("kernel-regression", "w_std=-1", "Dense: w_std must be a finite number >= 0, got -1.0"),
    ("lee-fig1", "n_train=1", "load_digits: n_train must be an int in"),
])
def test_values_a_figure_rejects_are_one_line_and_exit_2(tmp_path, capsys, figure, setting,
                                                         needle):
    # Before: a traceback and exit status 1 (the README promises one line and status 2).
    argv = ["reproduce", figure, "--quick", "--out", str(tmp_path), "--set", setting]
    assert cli.main(argv) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"widenets: error: {figure}: the configuration was rejected")
    assert needle in lines[0]
