"""Bad input: clear errors naming the function, the argument, what was expected and what came."""

import numpy as np
import pytest
import torch

import widenets as wn

NET = wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1))
X = torch.randn(4, 3, dtype=torch.float64)


@pytest.mark.parametrize("x1, exc, match", [
    (torch.randn(3), ValueError, r"Serial.kernel: x1 must have a batch axis.*shape \(3,\)"),
    (torch.ones(4, 3, dtype=torch.int64), TypeError, r"x1 must hold floating-point.*int64"),
    (torch.tensor([[1.0, float("nan"), 0.0]]), ValueError, r"x1 contains 1 NaN or infinite"),
    (torch.tensor([[1.0, float("inf"), 0.0]]), ValueError, r"x1 contains 1 NaN or infinite"),
    ([[1.0, 2.0, 3.0]], TypeError, r"x1 must be a torch.Tensor or numpy array.*list"),
])
def test_bad_x1(x1, exc, match):
    with pytest.raises(exc, match=match):
        NET.kernel(x1)


def test_numpy_input_accepted():
    k = NET.kernel(X.numpy())
    torch.testing.assert_close(k.nngp, NET.kernel(X).nngp)


def test_feature_mismatch():
    with pytest.raises(ValueError, match=r"x1 and x2 must have the same feature shape.*\(4, 3\).*\(2, 5\)"):
        NET.kernel(X, torch.randn(2, 5))


@pytest.mark.parametrize("kwargs, match", [
    (dict(w_std=-1.0), r"Dense: w_std must be a finite number >= 0, got -1.0"),
    (dict(b_std=-0.1), r"Dense: b_std must be a finite number >= 0 or None, got -0.1"),
    (dict(w_std=float("nan")), r"Dense: w_std must be a finite number"),
    (dict(parameterization="mup"), r"Dense: parameterization must be one of \('ntk', 'standard'\), got 'mup'"),
])
def test_bad_dense_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wn.Dense(4, **kwargs)


@pytest.mark.parametrize("out", [0, -3, 2.5, True])
def test_bad_width(out):
    with pytest.raises(ValueError, match="Dense: out must be a positive int"):
        wn.Dense(out)


@pytest.mark.parametrize("act", [wn.Relu(), wn.Erf(), wn.Gelu(), wn.Sin(),
                                 wn.Elementwise(torch.tanh)], ids=repr)
def test_activation_needs_gaussian_input(act):
    with pytest.raises(ValueError, match=r"\.kernel: input must be Gaussian \(got the raw input\); "
                                         r"put a Dense or Conv before it"):
        wn.serial(act, wn.Dense(1)).kernel(X)
    with pytest.raises(ValueError, match="non-Gaussian layer output"):
        wn.serial(wn.Dense(4), wn.Relu(), act).kernel(X)


def test_identity_and_linear_abrelu_accept_any_input():
    for act in (wn.Identity(), wn.ABRelu(0.5, 0.5)):
        k = wn.serial(act, wn.Dense(2)).kernel(X)
        torch.testing.assert_close(k.nngp, 0.25 ** (act.a != 1) * X @ X.T / 3)


@pytest.mark.parametrize("in_shape, match", [
    ((3, 2, 2, 2, 2), r"Dense.module: in_shape must be \(features,\) or channels-first"),
    ((0,), r"in_shape must be a tuple of positive ints"),
    ("abc", r"in_shape must be a tuple of positive ints"),
])
def test_bad_in_shape(in_shape, match):
    with pytest.raises(ValueError, match=match):
        NET.module(in_shape)


def test_monte_carlo_in_shape_must_fit_inputs():
    with pytest.raises(ValueError, match=r"monte_carlo_kernel: x1 must have shape \(n, \*in_shape\) = \(n, 5\), got \(4, 3\)"):
        wn.monte_carlo_kernel(NET, X, in_shape=(5,), n_samples=1)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        wn.monte_carlo_kernel(NET, X, n_samples=0)


def test_bad_get():
    with pytest.raises(ValueError, match=r"get must be None, 'nngp', 'ntk' or a tuple.*'cov'"):
        NET.kernel(X, get="cov")


def test_correlated_residual_branches_refused():
    twin = wn.serial(wn.Dense(4), wn.FanOut(2), wn.parallel(wn.Identity(), wn.Identity()),
                     wn.FanInSum())
    with pytest.raises(ValueError, match="FanInSum.kernel: two branches come from the same"):
        twin.kernel(X)
    two_nongaussian = wn.serial(wn.Dense(4), wn.FanOut(2),
                                wn.parallel(wn.Relu(), wn.serial(wn.Dense(4), wn.Erf())),
                                wn.FanInSum())
    with pytest.raises(ValueError, match="at most one branch may be non-Gaussian"):
        two_nongaussian.kernel(X)


def test_branch_count_errors():
    with pytest.raises(ValueError, match=r"parallel.kernel: expected 2 branches \(put FanOut\(2\)"):
        wn.serial(wn.Dense(4), wn.parallel(wn.Relu(), wn.Relu())).kernel(X)
    with pytest.raises(ValueError, match="Dense.kernel: expected one input, got 2 branches"):
        wn.serial(wn.FanOut(2), wn.Dense(3)).kernel(X)
    with pytest.raises(TypeError, match="serial: argument 1 must be a widenets layer"):
        wn.serial(wn.Dense(3), torch.nn.ReLU())


def test_overflow_reported_not_returned():
    layers = [m for _ in range(200) for m in (wn.Dense(8, w_std=4.0), wn.Relu())]
    with pytest.raises(FloatingPointError, match="non-finite entries.*float32"):
        wn.serial(*layers, wn.Dense(1)).kernel(X, dtype=torch.float32)


def test_elementwise_arguments():
    with pytest.raises(TypeError, match="Elementwise: fn must be callable"):
        wn.Elementwise(3)
    with pytest.raises(ValueError, match="Elementwise: degree must be an int in"):
        wn.Elementwise(torch.tanh, degree=1)
    assert np.isfinite(wn.serial(wn.Dense(2), wn.Elementwise(torch.tanh), wn.Dense(1))
                       .kernel(X).nngp.numpy()).all()
