"""Laziness (seed 001): kappa's operator norms against dense autograd, seed 001's width
exponents, and output scaling alpha driving training lazy."""

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call, hessian, jacrev

import widenets as wn
from widenets.finite_width import _core

from .conftest import tanh_net

fw = wn.finite_width


def lecun_tanh(width: int):
    """Seed 001's model: f(x) = Σ_i b_i tanh(a_i x), no biases, LeCun init (b ~ N(0, 1/m))."""
    return wn.serial(wn.Dense(width, w_std=1.0, b_std=None, parameterization="standard"),
                     wn.Elementwise(torch.tanh),
                     wn.Dense(1, w_std=1.0, b_std=None, parameterization="standard"))


def _dense_parts(model, x):
    params = _core.params_of(model)
    names = list(params)

    def f(*flat):
        return functional_call(model, dict(zip(names, flat, strict=True)), (x,)).reshape(-1)

    flat = tuple(params[k] for k in names)
    jac = torch.cat([j.reshape(x.shape[0], -1) for j in jacrev(f, argnums=tuple(range(
        len(names))))(*flat)], dim=1)
    hs = hessian(f, argnums=tuple(range(len(names))))(*flat)
    sizes = [params[k].numel() for k in names]
    rows = [torch.cat([hs[i][j].reshape(x.shape[0], sizes[i], sizes[j])
                       for j in range(len(names))], dim=2) for i in range(len(names))]
    return jac, torch.cat(rows, dim=1)           # (n, P), (n, P, P)


def test_kappa_norms_match_dense_autograd():
    """Jacobian and Hessian operator norms from HVPs equal the dense ones (dense Hessian of a
    tiny net by torch.func.hessian; for two outputs the bilinear norm sup_e ||Σ e_i H_i|| is
    taken over a fine grid of unit vectors e)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0.3, -0.2], dtype=torch.float64)
    model = tanh_net(6).module((3,), seed=0, dtype=torch.float64)
    res = fw.kappa(model, x, y, tol=1e-10)
    jac, hess = _dense_parts(model, x)
    jn = float(torch.linalg.matrix_norm(jac, ord=2))
    angles = np.linspace(0, np.pi, 2001)
    hn = max(float(torch.linalg.eigvalsh(math.cos(a) * hess[0] + math.sin(a) * hess[1]).abs()
                   .max()) for a in angles)
    with torch.no_grad():
        rn = float((model(x)[:, 0] - y).norm())
    assert res.jacobian_norm == pytest.approx(jn, rel=1e-8)
    assert res.hessian_norm == pytest.approx(hn, rel=1e-5)   # grid step π/2000: error ~1e-6
    assert res.residual_norm == pytest.approx(rn, rel=1e-12)
    assert res.kappa == pytest.approx(rn * hn / jn ** 2, rel=1e-5)
    one = fw.kappa(model, x[:1], y[:1], tol=1e-10)
    assert one.hessian_norm == pytest.approx(float(torch.linalg.eigvalsh(hess[0]).abs().max()),
                                             rel=1e-8)


@pytest.mark.slow
def test_width_sweep_reproduces_seed_001_exponents():
    """||∇y|| ~ m^0.5, ||∇²y|| ~ m^0, κ ~ m^-1 for the 1-hidden-layer LeCun tanh net of seed
    001 (4 points in 1-d, widths 64-1024, 3 seeds), each mean slope within ±0.15."""
    x = torch.linspace(-1.5, 1.5, 4, dtype=torch.float64)[:, None]
    y = 2.0 + torch.sin(2 * x[:, 0])    # ||y(w0) - ȳ|| = O(1), dominated by ȳ (less noise)

    def build(width, seed):
        return lecun_tanh(width).module((1,), seed=seed, dtype=torch.float64)

    sw = fw.width_sweep(build, [64, 256, 1024],
                        measure=lambda m: fw.kappa(m, x, y, tol=1e-6), seeds=(0, 1, 2))
    s = sw.slope
    msg = ", ".join(f"{k}: {s[k]:.3f} (CI {sw.ci[k][0]:.3f}..{sw.ci[k][1]:.3f})"
                    for k in ("jacobian_norm", "hessian_norm", "kappa"))
    assert abs(s["jacobian_norm"] - 0.5) < 0.15, msg
    assert abs(s["hessian_norm"]) < 0.15, msg
    assert abs(s["kappa"] + 1.0) < 0.15, msg


def test_scaled_model_goes_lazy_as_alpha_grows(data16):
    """Chizat & Bach: α(f - f0) trained with loss/α² moves its weights ~1/α, and its outputs
    approach the frozen-NTK (order-2) prediction; checked at α = 1, 10, 100."""
    x, y = data16
    changes, gaps = [], []
    for alpha in (1.0, 10.0, 100.0):
        base = tanh_net(16).module((4,), seed=0, dtype=torch.float64)
        model = fw.scaled(base, alpha)
        with torch.no_grad():
            assert model(x).abs().max() == 0           # centered at initialization
        lin = fw.truncated_nth(model, x, y, order=2, times=[0.0, 20.0],
                               learning_rate=1.0 / alpha ** 2)
        rec = fw.train(model, x, y, learning_rate=1.0, steps=20, record_every=20,
                       record=("weights", "outputs"))
        assert rec.loss_scale == pytest.approx(1 / alpha ** 2)
        changes.append(float(fw.relative_change(rec).weights["model.2.weight"][-1]))
        gaps.append(float((rec.outputs[-1, :, 0] - lin.outputs[-1]).norm()))
    slope = np.polyfit(np.log([1, 10, 100]), np.log(changes), 1)[0]
    assert abs(slope + 1) < 0.1, f"relative weight change vs alpha: {changes}"
    assert gaps[2] < gaps[1] < gaps[0], f"distance to the frozen-NTK dynamics: {gaps}"


def test_width_sweep_statistics():
    """Slopes of exact power laws are recovered exactly; the interval is a t-interval."""
    class Dummy(torch.nn.Module):
        def __init__(self, w, s):
            super().__init__()
            self.w, self.s = w, s

    sw = fw.width_sweep(lambda w, s: Dummy(w, s), [10, 20, 40],
                        measure=lambda m: {"a": 3.0 * m.w ** -0.5 * (1 + 0.1 * m.s)},
                        seeds=(0, 1))
    assert sw.slope["a"] == pytest.approx(-0.5, abs=1e-12)
    assert sw.ci["a"][0] == pytest.approx(-0.5, abs=1e-9)
    assert sw.values["a"].shape == (2, 3)
    with pytest.raises(ValueError, match="width_sweep: widths must be at least two"):
        fw.width_sweep(lambda w, s: Dummy(w, s), [10], measure=lambda m: 1.0)
