"""Kernels are differentiable through every closed-form activation, including the diagonal
(c = 1, where arccos/arcsin have infinite slope) and through tensor-valued activation
hyperparameters; every gradient is checked against central finite differences of the kernel."""

import pytest
import torch

import widenets as wn
from tests.gradients import assert_grad_matches_central_differences
from widenets.layers.activations import Activation

#: one instance of every exported activation; a new activation must be added here (the test
#: below fails until it is), so its gradients are checked too
INSTANCES = {
    "Relu": wn.Relu(), "LeakyRelu": wn.LeakyRelu(0.1), "ABRelu": wn.ABRelu(-0.3, 0.8),
    "Abs": wn.Abs(), "Identity": wn.Identity(), "Erf": wn.Erf(), "Gelu": wn.Gelu(),
    "Sin": wn.Sin(), "Cos": wn.Cos(0.8, 1.2, 0.3), "Rbf": wn.Rbf(0.5), "Gabor": wn.Gabor(),
    "Exp": wn.Exp(0.5, 0.3), "Gaussian": wn.Gaussian(1.0, -0.5), "ExpNormalized":
    wn.ExpNormalized(), "Sign": wn.Sign(), "SigmoidLike": wn.SigmoidLike(),
    "Polynomial": wn.Polynomial([0.1, 1.0, 0.5]), "Monomial": wn.Monomial(3),
    "RectifiedMonomial": wn.RectifiedMonomial(2), "Hermite": None, "Elementwise": None,
}
#: activations without autograd support, and why (they raise instead of returning a gradient)
NO_GRADIENT = {"Elementwise": "quadrature: raises NotImplementedError under autograd",
               "Hermite": "needs unit-variance inputs: a σ gradient leaves its domain"}


def test_every_exported_activation_is_covered():
    exported = {n for n in wn.__all__ if isinstance(getattr(wn, n), type)
                and issubclass(getattr(wn, n), Activation)}
    assert exported <= set(INSTANCES), exported - set(INSTANCES)


def _fd(f, v, h=1e-6):
    return (f(v + h) - f(v - h)) / (2 * h)


@pytest.mark.parametrize("name", [n for n, a in INSTANCES.items() if a is not None])
def test_gradient_through_activation_matches_differences(name):
    """d/dσw of Σ (K + Θ) over a symmetric kernel (the diagonal included): a NaN from arccos at
    c = 1, or an in-place write that autograd cannot undo, fails here."""
    act = INSTANCES[name]
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def f(w):
        net = wn.serial(wn.Dense(8, w_std=w, b_std=0.2), act, wn.Dense(1, w_std=w))
        k = net.kernel(x)
        return k.nngp.sum() + k.ntk.sum()

    w = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(f(w), w)
    assert torch.isfinite(g)
    assert abs(float(g) - float(_fd(f, 0.9))) < 1e-6 * abs(float(g)) + 1e-9


@pytest.mark.parametrize("make, names", [
    (lambda v: wn.ABRelu(v[0], v[1]), ("a", "b")),
    (lambda v: wn.LeakyRelu(v[0]), ("alpha",)),
    (lambda v: wn.Sin(v[0], v[1], v[2]), ("a", "b", "c")),
    (lambda v: wn.Cos(v[0], v[1], v[2]), ("a", "b", "c")),
    (lambda v: wn.Rbf(v[0]), ("gamma",)),
    (lambda v: wn.Exp(v[0], v[1]), ("a", "b")),
    (lambda v: wn.Gaussian(v[0], -0.5), ("a",)),
    (lambda v: wn.Polynomial([v[0], v[1], v[2]]), ("coef_0", "coef_1", "coef_2")),
    (lambda v: wn.ExpNormalized(v[0], -v[1]), ("gamma", "shift")),
])
def test_activation_hyperparameter_gradients(make, names):
    """Gradients with respect to the activation's own parameters, through two hidden layers
    and with_hyperparameters (the copy must carry the tensors), against differences."""
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    start = torch.tensor([0.7, 1.1, 0.4][:len(names)], dtype=torch.float64)
    net = wn.serial(wn.Dense(8), make(start.tolist()), wn.Dense(8), make(start.tolist()),
                    wn.Dense(1))
    keys = [f"1.{n}" for n in names]
    assert set(keys) <= set(wn.hyperparameters(net))

    def f(v):
        k = net.with_hyperparameters({f"*.{n}": vi for n, vi in zip(names, v.unbind())})
        kk = k.kernel(x)
        return kk.nngp.sum() + kk.ntk.sum()

    assert_grad_matches_central_differences(f, start)
