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


def _digits(n):
    from widenets.data import load_digits

    ds = load_digits(n_train=n, n_test=10, seed=0)
    return ds.x_train, ds.y_train


@pytest.mark.parametrize("b_std", [0.3, None])
def test_stacked_mlp_gradients_are_autograds_for_every_activation(b_std):
    """StackedMLP's written-out backward pass gives every member autograd's loss and gradients,
    for every activation fc_net names, with and without biases. A missing weight or bias
    multiplier, a missing or wrong φ', a transposed product or members mixed up in the stacking
    each move a gradient by far more than the 1e-12 tolerance."""
    import torch

    from widenets.experiments.common import ACTIVATIONS, fc_net
    from widenets.experiments.stacked_mlp import StackedMLP

    x = torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[0, :] = 0.0          # pre-activations at exactly 0 when b_std is None: the kinks
    for act in ACTIVATIONS:
        mods = [fc_net(9, 3, out=3, activation=act, b_std=b_std).module((5,), seed=s,
                                                                        dtype=torch.float64)
                for s in (0, 1, 2)]
        loss, dws, dbs = StackedMLP(mods).gradients(x, y)
        for e, m in enumerate(mods):
            ref_loss = 0.5 * ((m(x) - y) ** 2).sum(1).mean()
            ref = torch.autograd.grad(ref_loss, list(m.parameters()))
            mine = [g[e] for pair in zip(dws, dbs, strict=True) for g in pair if g is not None]
            assert abs(float(loss[e] - ref_loss.detach())) < 1e-12, act
            assert len(mine) == len(ref), act
            for a, b in zip(mine, ref, strict=True):
                assert torch.allclose(a, b, rtol=0, atol=1e-12), (act, float((a - b).abs().max()))


def test_stacked_mlp_takes_other_activations_by_forward_mode_autograd():
    """An activation without a closed form in StackedMLP (LeakyRelu) gets φ' from forward-mode
    autograd: gradients equal autograd's (ReLU's closed-form φ' would be wrong by α on z < 0)."""
    import torch

    from widenets import layers as L
    from widenets.experiments.stacked_mlp import StackedMLP

    x, y = _digits(10)
    net = L.serial(L.Dense(7), L.LeakyRelu(0.2), L.Dense(10))
    mods = [net.module((64,), seed=s, dtype=torch.float64) for s in (0, 1)]
    stack = StackedMLP(mods)
    assert stack.slopes == [None]
    _, dws, _ = stack.gradients(x, y)
    for e, m in enumerate(mods):
        ref = torch.autograd.grad(0.5 * ((m(x) - y) ** 2).sum(1).mean(), [m[0].weight])[0]
        assert torch.allclose(dws[0][e], ref, rtol=0, atol=1e-12)


def test_stacked_mlp_refuses_mixed_or_foreign_architectures():
    import torch

    from widenets.experiments.common import fc_net
    from widenets.experiments.stacked_mlp import StackedMLP

    a = fc_net(8, 2, out=1).module((3,), seed=0, dtype=torch.float64)
    for other in (fc_net(9, 2, out=1).module((3,), seed=0, dtype=torch.float64),
                  fc_net(8, 2, out=1, activation="erf").module((3,), seed=0,
                                                               dtype=torch.float64)):
        with pytest.raises(ValueError, match="StackedMLP: the modules differ"):
            StackedMLP([a, other])
    with pytest.raises(ValueError, match="StackedMLP: expected an fc_net module"):
        StackedMLP([torch.nn.Sequential(torch.nn.Linear(3, 1))])
    with pytest.raises(ValueError, match="non-empty"):
        StackedMLP([])


def test_stacked_gd_follows_fw_train_and_stops_each_member_only_when_converged():
    """lee-fig1's stacked GD gives fw.train's parameters for every member (same "mean" loss and
    η; a wrong loss normalization, sign or member order breaks the equality); the convergence
    stop skips the remaining steps only once the per-chunk movement has contracted below tol,
    member by member, and a member that leaves the stack early ends where it would alone."""
    import copy

    import torch

    from widenets import finite_width as fw
    from widenets.experiments.common import fc_net
    from widenets.experiments.lee_fig1 import Config, _train_to
    from widenets.experiments.stacked_mlp import StackedMLP

    x, y = _digits(16)
    mods = [fc_net(16, 2, out=10).module((64,), seed=s, dtype=torch.float64) for s in (0, 1)]
    refs = copy.deepcopy(mods)
    _, final, _, done = _train_to(StackedMLP(mods), x, y, 0.4, Config(steps=30, chunk=7, tol=0.0))
    assert done == [30, 30]
    for e, ref in enumerate(refs):
        fw.train(ref, x, y, learning_rate=0.4, steps=30, record=("loss",))
        for name, q in ref.named_parameters():
            assert torch.allclose(final[e][name], q, rtol=0, atol=1e-12), name
    # Deep linear nets (identity activation) on 10 points converge geometrically, at rates
    # that differ between seeds: the stop triggers long before 10⁵ steps (at 700-1000), and
    # each member's parameters agree with many more plain steps to ~tol and with its own run.
    x, y = _digits(10)
    lin = [fc_net(32, 1, out=10, activation="identity").module((64,), seed=s,
                                                                dtype=torch.float64)
           for s in (0, 1, 2)]
    cfg = Config(steps=100_000, chunk=50, tol=1e-6)
    _, final, _, done = _train_to(StackedMLP(lin), x, y, 0.5, cfg)
    assert max(done) < 5000 and len(set(done)) > 1, done
    for e in range(3):
        _, alone, _, done_alone = _train_to(StackedMLP([lin[e]]), x, y, 0.5, cfg)
        assert done_alone == [done[e]]
        for name, v in alone[0].items():
            assert torch.allclose(v, final[e][name], rtol=0, atol=1e-13), name
    _, far, _, _ = _train_to(StackedMLP([lin[0]]), x, y, 0.5,
                             Config(steps=done[0] + 5000, chunk=50, tol=0.0))
    gap = (final[0]["0.weight"] - far[0]["0.weight"]).norm()
    assert gap < 1e-5 * far[0]["0.weight"].norm(), (done, float(gap))
