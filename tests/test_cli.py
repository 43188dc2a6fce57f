"""The `widenets` command: exit codes, typed --set, the report, Ctrl-C keeping finished work."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from widenets import cli
from widenets.experiments import runner
from widenets.experiments.base import ConfigError, Result, make_config, parse_value

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize("argv, needle", [
    (["reproduce", "no-such-figure"], "unknown figure 'no-such-figure'"),
    (["demo", "--set", "no_such_key=1"], "unknown key"),
    (["demo", "--set", "steps=many"], "expected an int"),
    (["demo", "--set", "widths=64,abc"], "expected an int"),
    (["demo", "--set", "steps"], "expected key=value"),
    (["demo", "--set", "lr_factor=3.0"], "lr_factor must be in (0, 1)"),
    (["demo", "--set", "data=/no/such/file.npz"], "data must be 'digits' or an existing"),
    (["reproduce", "all", "--set", "nonsense=1"], "no figure has this key"),
    (["kernel", "--net", "dense(1)", "--data", "/no/such.npy", "--out", "/no/store"],
     "widenets kernel: --data file '/no/such.npy' does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert cli.main(argv) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("widenets: error:") and needle in lines[0], lines


def test_unwritable_out_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cli.main(["demo", "--quick", "--out", str(blocker / "sub")]) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "cannot write to --out" in lines[0], lines


def test_console_process_exit_code(tmp_path):
    """The real process (python -m widenets): a usage error exits 2 with one line."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    bad = subprocess.run([sys.executable, "-m", "widenets", "reproduce", "nope"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown figure" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_list_shows_every_registered_figure(capsys):
    from widenets import experiments

    assert cli.main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for fid in experiments.available():
        assert fid in out
    assert len(experiments.available()) == 12         # 8 figures + attention, lee-fig4/s3/s5
    assert {"attention", "lee-fig4", "lee-s3", "lee-s5"} <= set(experiments.available())


def test_parse_value_types():
    assert parse_value("64,256", tuple[int, ...], key="w") == (64, 256)
    assert parse_value("1e-3", float, key="x") == 1e-3
    assert parse_value("false", bool, key="b") is False
    assert parse_value("none", float | None, key="o") is None
    assert parse_value("2", float | None, key="o") == 2.0
    with pytest.raises(ConfigError, match="expected a finite float"):
        parse_value("nan", float, key="x")
    with pytest.raises(ConfigError, match="expected a bool"):
        parse_value("maybe", bool, key="b")


@dataclasses.dataclass
class _Cfg:
    n: int = 3
    seed: int = 0


def _fake_module(fid: str, fail: bool):
    mod = types.SimpleNamespace(ID=fid, TITLE=f"fake {fid}", RUNTIME="0 s", Config=_Cfg, QUICK={})

    def run(config):
        if fail:
            raise KeyboardInterrupt
        return Result(figure=fid, config=config, data={}, metrics={"value": 1.5 * config.n},
                      caption=f"caption of {fid}")

    def plot(result, path):
        Path(path).write_bytes(b"\x89PNG fake")

    mod.run, mod.plot = run, plot
    return mod


def test_make_config_quick_seed_and_sets():
    mod = types.SimpleNamespace(ID="x", Config=_Cfg, QUICK={"n": 1})
    cfg = make_config(mod, quick=True, seed=7, overrides={"n": "5"})
    assert (cfg.n, cfg.seed) == (5, 7)
    assert make_config(mod, quick=True).n == 1


def test_interrupt_keeps_finished_figures(tmp_path):
    jobs = [(_fake_module("first", False), _Cfg(n=2)), (_fake_module("second", True), _Cfg())]
    with pytest.raises(KeyboardInterrupt):
        runner.run_all(jobs, tmp_path, title="t", command="widenets test", seed=None,
                       log=lambda *a: None)
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["status"] == "interrupted"
    assert list(res["figures"]) == ["first"]
    assert res["figures"]["first"]["metrics"] == {"value": 3.0}
    assert (tmp_path / "first.png").exists()
    html = (tmp_path / "index.html").read_text()
    assert "first.png" in html and "did not finish" in html


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from widenets.experiments import base

    items = [1, 2, 3]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert base.progress(items, desc="x") is items
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = base.progress(items, desc="x")
    assert type(bar).__name__ == "tqdm" or "tqdm" in type(bar).__module__
    assert list(bar) == items


def test_kernel_subcommand_is_wired_to_tiles(capsys):
    """`widenets kernel` is the tiles CLI (its own --net option appears in the help)."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["kernel", "--help"])
    assert exc.value.code == 0
    assert "--net" in capsys.readouterr().out


def test_reproduce_writes_typed_config_seed_and_report(tmp_path):
    """A real figure through the command line: --set and --seed reach the config, result.json
    has config/versions/seed/metrics/timings, index.html shows the PNG and the key numbers."""
    out = tmp_path / "kr"
    argv = ["reproduce", "kernel-regression", "--quick", "--seed", "4", "--out", str(out),
            "--set", "depths=1,3", "--set", "n_train=150", "--set", "n_test=100"]
    assert cli.main(argv) == 0
    res = json.loads((out / "result.json").read_text())
    fig = res["figures"]["kernel-regression"]
    assert fig["config"]["depths"] == [1, 3] and fig["config"]["seed"] == 4
    assert res["seed"] == 4 and res["status"] == "complete"
    assert {"torch", "numpy", "widenets", "python"} <= set(res["versions"])
    assert fig["timings"]["total_s"] > 0
    assert set(fig["metrics"]["ntk_test_accuracy_by_depth"]) == {"1", "3"}
    html = (out / "index.html").read_text()
    assert "src='kernel-regression.png'" in html and "ntk_best_test_accuracy" in html
    assert (out / "kernel-regression.png").stat().st_size > 10_000


def test_threads_flag_sets_torch_blas_and_the_kernels_block_threads(monkeypatch, capsys):
    """`--threads N` reaches torch's intra-op setting, which the analytic kernels' block
    threads follow, and numpy's BLAS; N < 1 is refused before anything runs."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    import widenets._parallel as parallel

    assert cli.main(["demo", "--quick", "--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    monkeypatch.setattr(parallel, "usable_cores", lambda: 8)
    old = torch.get_num_threads()
    with threadpool_limits(limits=None):          # restores the BLAS limits afterwards
        try:
            for n in (3, 1):
                cli._apply_threads(n)
                assert torch.get_num_threads() == n and parallel.block_threads() == n
                assert all(p["num_threads"] == n for p in threadpool_info())
        finally:
            torch.set_num_threads(old)
