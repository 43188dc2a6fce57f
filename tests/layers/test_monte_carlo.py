"""Analytic kernels against Monte Carlo over finite random networks (the independent check).

Setup: hidden width 512, inputs of 8 features with norms 0.6..1.4 × √8, σw = 1.2, σb = 0.6.
Measured Monte Carlo errors on this configuration (fixed seeds): NNGP (64 nets x 128 readout
units) 1.1-2.3%, NTK (8 nets) 1.2-3.6%. Tolerances: 4% (NNGP) and 5% (NTK). Bug effects on the
same nets: a factor of 2 or T and Tdot swapped: > 30%; biases dropped from the hidden layers:
14-67%; the first layer's bias dropped: 9-29% (sin's NNGP: 4.4%, the one case at the edge).
The standard parameterization's bias term (+1 next to n·K ~ 512) is below Monte Carlo
resolution; test_dense_empirical_ntk_is_exact checks it exactly instead.
"""

import pytest
import torch

import widenets as wn
from tests.conftest import rel_err

from .registry import nets

WIDTH = 512
TOL_NNGP = 0.04
TOL = 0.05

ACTS = {
    "relu": wn.Relu, "leaky_relu": lambda: wn.LeakyRelu(0.2), "abrelu": lambda: wn.ABRelu(-0.5, 1.5),
    "abs": wn.Abs, "identity": wn.Identity, "erf": wn.Erf, "gelu": wn.Gelu,
    "sin": lambda: wn.Sin(1.0, 1.2, 0.3),
    "elementwise_tanh": lambda: wn.Elementwise(torch.tanh, name="tanh"),
}


def _net(act, out, parameterization):
    def d(n):
        return wn.Dense(n, w_std=1.2, b_std=0.6, parameterization=parameterization)
    return wn.serial(d(WIDTH), act(), d(WIDTH), act(), d(out))


def assert_ntk_matches_monte_carlo(act: str, x: torch.Tensor) -> None:
    """The NTK of the depth-2 `act` net on (x, 0.9 x[:3]) against 8 finite networks, with the
    engine currently set (the engine tests call it under each engine): 5% tolerance, a factor
    of 2 or T and Tdot swapped are > 30% (module docstring)."""
    net = _net(ACTS[act], 2, "ntk")
    exact = net.kernel(x, x[:3] * 0.9, get="ntk")
    mc = wn.monte_carlo_kernel(net, x, x[:3] * 0.9, n_samples=8, get="ntk")
    assert rel_err(mc, exact) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("act", sorted(ACTS))
def test_nngp_matches_monte_carlo(act, parameterization, x_small):
    # 128 readout units × 64 networks average the output second moments
    net = _net(ACTS[act], 128, parameterization)
    exact = net.kernel(x_small)
    mc = wn.monte_carlo_kernel(net, x_small, n_samples=64, get="nngp")
    assert rel_err(mc, exact.nngp) < TOL_NNGP


@pytest.mark.slow
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("act", sorted(ACTS))
def test_ntk_matches_monte_carlo(act, parameterization, x_small):
    net = _net(ACTS[act], 2, parameterization)
    exact = net.kernel(x_small, x_small[:3] * 0.9, get="ntk")
    mc = wn.monte_carlo_kernel(net, x_small, x_small[:3] * 0.9, n_samples=8,
                               get="ntk")
    assert rel_err(mc, exact) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("name", ["residual", "concat", "parallel_sum_of_denses", "dense_no_bias"])
def test_combinators_match_monte_carlo(name, parameterization, x_small):
    net = nets(width=WIDTH, parameterization=parameterization)[name]
    exact = net.kernel(x_small)
    mc = wn.monte_carlo_kernel(net, x_small, n_samples=8)
    # 3 readout units only: the NNGP estimate is noisier, so more networks are averaged
    mc_nngp = wn.monte_carlo_kernel(net, x_small, n_samples=200, seed=100,
                                    get="nngp")
    assert rel_err(mc.ntk, exact.ntk) < TOL
    assert rel_err(mc_nngp, exact.nngp) < 2 * TOL


@pytest.mark.slow
def test_module_output_variance_matches_nngp_diagonal(x_small):
    """Output variance over many seeds of the finite module equals the nngp diagonal.

    For a fully connected net E[f(x)²] equals K(x, x) at any width (each layer's second moment
    is an average of i.i.d. units), so a narrow net (32) and many seeds test it exactly."""
    def d(n):
        return wn.Dense(n, w_std=1.2, b_std=0.6)
    net = wn.serial(d(32), wn.Relu(), d(32), wn.Erf(), d(1))
    exact = net.kernel(x_small)
    with torch.no_grad():
        outs = torch.stack([net.module((8,), seed=s, dtype=torch.float64)(x_small)[:, 0]
                            for s in range(500)])
    var = (outs ** 2).mean(0)
    # relative std of each variance estimate ≈ √(2/500) ≈ 6.3% (finite-width fluctuations
    # make outputs heavier-tailed: a bit more); 4σ = 25%; a factor of 2 fails by far
    torch.testing.assert_close(var, exact.cov1, rtol=0.25, atol=0)
    assert rel_err(var, exact.cov1) < 0.12


@pytest.mark.parametrize("b_std", [None, 0.0, 0.7])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_dense_empirical_ntk_is_exact(parameterization, b_std, x_small):
    """A single Dense layer's NTK does not depend on the weights: autograd gives it exactly.
    ntk: σw² ⟨x, x'⟩/d + σb²;  standard: ⟨x, x'⟩ + 1 (bias present)."""
    net = wn.Dense(5, w_std=1.7, b_std=b_std, parameterization=parameterization)
    exact = net.kernel(x_small, x_small[:4], get="ntk")
    emp = wn.empirical_ntk(net.module((8,), seed=3, dtype=torch.float64), x_small, x_small[:4],
                           implementation="jacobian")
    torch.testing.assert_close(emp, exact, rtol=1e-12, atol=1e-12)
    has_bias = b_std is not None
    gram = x_small @ x_small[:4].T
    if parameterization == "ntk":
        ref = 1.7 ** 2 * gram / 8 + (b_std or 0.0) ** 2
    else:
        ref = gram + (1.0 if has_bias else 0.0)
    torch.testing.assert_close(exact, ref, rtol=1e-13, atol=1e-13)


def test_parameter_shapes_and_count():
    net = wn.serial(wn.Dense(32, b_std=0.1), wn.Relu(), wn.Dense(16, b_std=None), wn.Erf(),
                    wn.FanOut(2), wn.parallel(wn.Dense(4), wn.Dense(4)), wn.FanInSum())
    mod = net.module((10,), seed=0)
    shapes = [tuple(p.shape) for p in mod.parameters()]
    assert shapes == [(32, 10), (32,), (16, 32), (4, 16), (4,), (4, 16), (4,)]
    assert sum(p.numel() for p in mod.parameters()) == 32 * 10 + 32 + 16 * 32 + 2 * (4 * 16 + 4)
    assert mod(torch.randn(7, 10)).shape == (7, 4)


def test_module_seed_is_reproducible_and_parameterizations_agree_at_init():
    """Same seed: same function in both parameterizations (docs/math.md §parameterization), different params."""
    x = torch.randn(5, 6)
    ntk = wn.serial(wn.Dense(64, w_std=1.3, b_std=0.2), wn.Relu(), wn.Dense(3, w_std=0.8))
    sp = wn.serial(wn.Dense(64, w_std=1.3, b_std=0.2, parameterization="standard"), wn.Relu(),
                   wn.Dense(3, w_std=0.8, parameterization="standard"))
    a, b = ntk.module((6,), seed=11), ntk.module((6,), seed=11)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    torch.testing.assert_close(a(x), sp.module((6,), seed=11)(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a(x), ntk.module((6,), seed=12)(x))
