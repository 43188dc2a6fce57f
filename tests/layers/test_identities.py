"""Closed-form special cases and identities between layers (each an independent check)."""

import math

import pytest
import torch

import widenets as wn
from tests.conftest import rel_err


def _fc(act, b_std=0.3):
    return wn.serial(wn.Dense(8, w_std=1.3, b_std=b_std), act, wn.Dense(2, w_std=1.1, b_std=0.2))


def _both(net, x):
    k = net.kernel(x, x[:4] * 0.8)
    return k.nngp, k.ntk


def test_abrelu_one_one_is_identity(x_small):
    for a, b in zip(_both(_fc(wn.ABRelu(1, 1)), x_small), _both(_fc(wn.Identity()), x_small)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_leaky_relu_zero_is_relu(x_small):
    for a, b in zip(_both(_fc(wn.LeakyRelu(0.0)), x_small), _both(_fc(wn.Relu()), x_small)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_abs_is_abrelu_minus_one_one(x_small):
    for a, b in zip(_both(_fc(wn.Abs()), x_small), _both(_fc(wn.ABRelu(-1, 1)), x_small)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_identity_network_is_exactly_linear(x_small):
    """Dense-Identity-Dense: K = σ2²(σ1² xx'/d + σb1²) + σb2², Θ = K + σ2²(σ1² xx'/d + σb1²)."""
    s1, b1, s2, b2 = 1.3, 0.3, 1.1, 0.2
    x1, x2 = x_small, x_small[:4] * 0.8
    k1 = s1**2 * x1 @ x2.T / 8 + b1**2
    nngp = s2**2 * k1 + b2**2
    ntk = nngp + s2**2 * k1
    got = _fc(wn.Identity()).kernel(x1, x2)
    torch.testing.assert_close(got.nngp, nngp, rtol=1e-14, atol=0)
    torch.testing.assert_close(got.ntk, ntk, rtol=1e-14, atol=0)


def test_relu_closed_form_by_hand():
    """One-hidden-layer ReLU NTK (Lee et al. 2019 App. C / Jacot et al.) for two inputs."""
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)   # unit norms, cos = 0.6
    k = wn.serial(wn.Dense(4, w_std=1.0, b_std=0.0), wn.Relu(), wn.Dense(1, w_std=1.0,
                                                                         b_std=0.0)).kernel(x)
    # K1 = <x,x'>/2: diag 1/2, off 0.3; c = 0.6
    th = math.acos(0.6)
    t12 = 0.5 * (math.sin(th) + (math.pi - th) * 0.6) / (2 * math.pi)
    td12 = (math.pi - th) / (2 * math.pi)
    assert math.isclose(float(k.nngp[0, 1]), t12, rel_tol=1e-14)
    assert math.isclose(float(k.ntk[0, 1]), t12 + td12 * 0.3, rel_tol=1e-14)
    assert math.isclose(float(k.nngp[0, 0]), 0.25, rel_tol=1e-15)
    assert math.isclose(float(k.ntk[0, 0]), 0.25 + 0.5 * 0.5, rel_tol=1e-15)


def test_quadrature_matches_erf_closed_form(x_small):
    """Elementwise(erf) at the default degree (25 panels x 8 nodes) equals Erf within 1e-8
    relative (degree 150 gives ~3e-6 at these variances, K ~ 3, where erf saturates)."""
    q = _both(_fc(wn.Elementwise(torch.erf)), x_small)
    for a, b in zip(q, _both(_fc(wn.Erf()), x_small)):
        assert rel_err(a, b) < 1e-8


def test_quadrature_matches_relu_closed_form(x_small):
    """Elementwise(relu) at degree 128 equals Relu within 2e-3 relative (NNGP); the kink makes
    Gauss-Hermite converge like 1/degree, so the NTK (a step function in Tdot) is looser."""
    q = _both(_fc(wn.Elementwise(torch.relu, degree=128)), x_small)
    c = _both(_fc(wn.Relu()), x_small)
    assert rel_err(q[0], c[0]) < 2e-3
    assert rel_err(q[1], c[1]) < 1e-2


@pytest.mark.parametrize("act", [wn.Gelu(), wn.Sin(1.3, 0.7, 0.4), wn.Erf()], ids=repr)
def test_smooth_closed_forms_match_quadrature(act, x_small):
    """Gelu, Sin and Erf closed forms against high-degree quadrature of their forward function,
    with φ' by autograd: an independent computation of both T and Tdot."""
    q = _both(_fc(wn.Elementwise(act.forward)), x_small)
    for a, b in zip(_both(_fc(act), x_small), q):
        assert rel_err(a, b) < 1e-7


def test_elementwise_explicit_derivative_matches_autograd(x_small):
    a = _both(_fc(wn.Elementwise(torch.tanh, dfn=lambda x: 1 - torch.tanh(x) ** 2)), x_small)
    b = _both(_fc(wn.Elementwise(torch.tanh)), x_small)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depth_100_relu_stays_finite(dtype, x_small):
    layers = [m for _ in range(100) for m in (wn.Dense(8, w_std=1.5, b_std=0.1), wn.Relu())]
    k = wn.serial(*layers, wn.Dense(1, w_std=1.5)).kernel(x_small, dtype=dtype)
    assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
    # σw² = 2.25 > 2: variances grow like (σw²/2)^depth; NTK grows at least as fast.
    assert float(k.nngp[0, 0]) > 1.0


def test_fan_in_sum_of_denses_is_sum_of_kernels(x_small):
    """Three fresh Dense branches on one input: K = Σ K_i exactly (independent zero-mean)."""
    d = [wn.Dense(4, w_std=s, b_std=0.1) for s in (0.5, 1.0, 1.5)]
    net = wn.serial(wn.FanOut(3), wn.parallel(*d), wn.FanInSum())
    k = net.kernel(x_small)
    ref = sum(di.kernel(x_small).nngp for di in d)
    torch.testing.assert_close(k.nngp, ref, rtol=1e-14, atol=0)


def test_fan_in_concat_weights_by_width(x_small):
    a, b = wn.Dense(4, w_std=0.5), wn.Dense(12, w_std=1.5)
    k = wn.serial(wn.FanOut(2), wn.parallel(a, b), wn.FanInConcat()).kernel(x_small)
    ref = (4 * a.kernel(x_small).nngp + 12 * b.kernel(x_small).nngp) / 16
    torch.testing.assert_close(k.nngp, ref, rtol=1e-14, atol=0)
