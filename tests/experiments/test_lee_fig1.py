"""lee-fig1 (--quick): hidden weights move like 1/n, input/output weights like 1/√n, and the
empirical NTK changes faster than 1/√n in width (seed 002 Fig. 1), measured on trained nets."""

from __future__ import annotations

import pytest

from widenets.experiments import load, make_config


@pytest.mark.slow
def test_relative_change_slopes(tmp_path):
    mod = load("lee-fig1")
    res = mod.run(make_config(mod, quick=True))
    m = res.metrics
    msg = {k: round(v, 3) for k, v in m.items() if isinstance(v, float)}
    # Exponents of the paper: -1/2 (input, output), -1 (hidden). ±0.25 separates -1/2 from -1
    # (a mix-up of the parameter groups or of the width fails), and leaves room for 2 seeds.
    assert -1.25 < m["slope hidden weights"] < -0.75, msg
    for q in ("input weights", "output weights"):
        assert -0.75 < m[f"slope {q}"] < -0.25, msg
    assert m["slope hidden weights"] < m["slope input weights"] - 0.25, msg
    # Θ: between O(1/n) and O(1/√n), closer to 1/n
    assert -1.3 < m["slope NTK Θ"] < -0.5, msg
    mod.plot(res, tmp_path / "fig1.png")
    assert (tmp_path / "fig1.png").stat().st_size > 10_000


@pytest.mark.slow
def test_fast_gd_loop_matches_fw_train_and_stops_only_when_converged():
    """lee-fig1's plain autograd GD loop gives fw.train's parameters (same "mean" loss and η;
    a wrong loss normalization or sign breaks the equality), and the convergence stop skips the
    remaining steps only once the per-chunk movement has contracted below tol."""
    import copy

    import torch

    from widenets import finite_width as fw
    from widenets.data import load_digits
    from widenets.experiments.common import fc_net
    from widenets.experiments.lee_fig1 import Config, _train_to

    ds = load_digits(n_train=16, n_test=10, seed=0)
    model = fc_net(16, 2, out=10).module((64,), seed=0, dtype=torch.float64)
    ref = copy.deepcopy(model)
    cfg = Config(steps=30, chunk=7, tol=0.0)
    _, loss, done = _train_to(model, ds.x_train, ds.y_train, 0.4, cfg)
    fw.train(ref, ds.x_train, ds.y_train, learning_rate=0.4, steps=30, record=("loss",))
    assert done == 30
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)
    # A linear model on 16 points converges geometrically: the stop triggers long before 10⁵
    # steps, and the parameters then agree with many more plain steps to ~tol.
    lin = torch.nn.Sequential(torch.nn.Linear(64, 10, dtype=torch.float64))
    far = copy.deepcopy(lin)
    _, _, done = _train_to(lin, ds.x_train, ds.y_train, 0.01,
                           Config(steps=100_000, chunk=50, tol=1e-6))
    assert done < 100_000
    _train_to(far, ds.x_train, ds.y_train, 0.01, Config(steps=done + 5000, chunk=50, tol=0.0))
    gap = (lin[0].weight - far[0].weight).norm()
    assert gap < 1e-4 * far[0].weight.norm(), (done, float(gap))
