"""The SPEC grammar and the `widenets kernel` command (`python -m widenets.tiles`)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiles_helpers import dyadic, relu_net

import widenets as wn
from widenets.tiles.cli import add_kernel_parser, load_data, main, run_kernel
from widenets.tiles.spec import parse_spec

DEPTH3 = "[dense(512, w_std=1.5, b_std=0.05) relu]*3 dense(1, w_std=1.5, b_std=0.05)"


def test_spec_text_and_json_build_the_same_net():
    net = relu_net(3)
    # The independent reference is the hand-built net: same description, same kernel values.
    x = dyadic(7)
    for spec in (DEPTH3,
                 "Dense(512,w_std=1.5,b_std=0.05) >> RELU, dense(512, w_std=1.5, b_std=0.05) | "
                 "relu dense(512, w_std=1.5, b_std=.05) relu dense(1, w_std=15e-1, b_std=0.05)",
                 json.dumps([{"repeat": 3, "layers": [
                     {"layer": "dense", "args": [512], "w_std": 1.5, "b_std": 0.05}, "relu"]},
                     "dense(1, w_std=1.5, b_std=0.05)"])):
        got = parse_spec(spec)
        assert repr(got) == repr(net)
        assert torch.equal(got.kernel(x, get="ntk"), net.kernel(x, get="ntk"))
    rep = parse_spec(DEPTH3)
    assert len({id(layer) for layer in rep.layers}) == 7  # a repeat makes fresh layers


def test_spec_arguments_and_errors(tmp_path):
    net = parse_spec("dense(10, parameterization=standard, b_std=none) leaky_relu(0.2) erf "
                     "sin(a=2, b=1, c=0.5)")
    assert repr(net) == repr(wn.serial(
        wn.Dense(10, parameterization="standard", b_std=None), wn.LeakyRelu(0.2), wn.Erf(),
        wn.Sin(a=2, b=1, c=0.5)))
    path = tmp_path / "net.json"
    path.write_text(json.dumps(["relu", {"layer": "Dense", "args": [3]}]))
    assert repr(parse_spec(str(path))) == repr(wn.serial(wn.Relu(), wn.Dense(3)))
    for bad, msg in [("dense(512", "expected ',' or '\\)'"), ("conv2(3)", "unknown layer"),
                     ("dense(w_std=1, 3)", "positional argument after"),
                     ("[relu]*", "repeat count"), ("dense(1, w=2)", "bad arguments for dense"),
                     ("relu ; relu", "unexpected character"), ("elementwise", "unknown layer"),
                     ("sin(b='1')", "bad arguments for sin: Sin: b must be a finite number")]:
        with pytest.raises(ValueError, match=msg):
            parse_spec(bad)


def test_load_data_formats(tmp_path):
    x = np.arange(12.0).reshape(4, 3) / 7
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", train=x, test=x[:2])
    np.savetxt(tmp_path / "c.csv", x, delimiter=",", header="f1,f2,f3", comments="")
    np.testing.assert_array_equal(load_data(str(tmp_path / "a.npy")), x)
    np.testing.assert_array_equal(load_data(f"{tmp_path / 'b.npz'}:test"), x[:2])
    np.testing.assert_allclose(load_data(str(tmp_path / "c.csv")), x, rtol=1e-15)
    with pytest.raises(ValueError, match="name one as"):
        load_data(str(tmp_path / "b.npz"))
    (tmp_path / "d.xyz").write_text("1,2")
    with pytest.raises(ValueError, match=".npy, .npz or .csv"):
        load_data(str(tmp_path / "d.xyz"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data(str(tmp_path / "nope.npy"))


def test_kernel_command_computes_resumes_and_refuses(tmp_path, capsys):
    x1, x2 = dyadic(21, seed=41).numpy(), dyadic(9, seed=42).numpy()
    np.save(tmp_path / "x1.npy", x1)
    np.save(tmp_path / "x2.npy", x2)
    out = tmp_path / "k.zarr"
    argv = ["--net", DEPTH3, "--data", str(tmp_path / "x1.npy"), "--x2",
            str(tmp_path / "x2.npy"), "--out", str(out), "--batch-size", "8", "--get", "both",
            "--no-progress"]
    assert main(argv) == 0
    assert "6 tiles (6 computed, 0 already done)" in capsys.readouterr().out
    assert main(argv) == 0
    assert "(0 computed, 6 already done)" in capsys.readouterr().out
    net = relu_net(3)
    refs = net.kernel(x1, x2, get=("nngp", "ntk"))
    for got, ref in zip(wn.tiles.load_kernel(out), refs, strict=True):
        assert torch.equal(got, ref)
    # Another net on the same store: refused with exit status 1 and the reason.
    bad = list(argv)
    bad[1] = "dense(512) relu dense(1)"
    assert main(bad) == 1
    assert "Refusing to mix" in capsys.readouterr().err
    # A SPEC error: status 2.
    bad[1] = "dense(512"
    assert main(bad) == 2


def test_add_kernel_parser_wires_into_a_parent_cli(tmp_path):
    parser = argparse.ArgumentParser(prog="widenets")
    add_kernel_parser(parser.add_subparsers(dest="command"))
    np.save(tmp_path / "x.npy", dyadic(10, seed=43).numpy())
    args = parser.parse_args(["kernel", "--net", "dense(8) erf dense(1)", "--data",
                              str(tmp_path / "x.npy"), "--out", str(tmp_path / "e.zarr"),
                              "--batch-size", "4", "--dtype", "float32", "--no-progress"])
    assert args.func is run_kernel and args.func(args) == 0
    k = wn.tiles.load_kernel(tmp_path / "e.zarr")
    ref = wn.serial(wn.Dense(8), wn.Erf(), wn.Dense(1)).kernel(dyadic(10, seed=43), get="ntk",
                                                                 dtype=torch.float32)
    assert k.dtype == torch.float32 and torch.equal(k, ref)


def test_python_dash_m_runs_standalone(tmp_path):
    np.save(tmp_path / "x.npy", dyadic(6, seed=44).numpy())
    src = Path(__file__).parents[2] / "src"
    proc = subprocess.run(
        [sys.executable, "-m", "widenets.tiles", "--net", "dense(4) relu dense(1)", "--data",
         str(tmp_path / "x.npy"), "--out", str(tmp_path / "m.zarr"), "--batch-size", "4"],
        capture_output=True, text=True, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 tiles (3 computed" in proc.stdout
    assert "tile" in proc.stderr  # the progress bar (tqdm writes to stderr)
