"""linearize / taylor_expand against the model itself, and trained linearized models against
the NTK's closed-form discrete dynamics; empirical_nngp against the outputs."""

import pytest
import torch
from torch import nn

import widenets as wn

DT = torch.float64


def smooth_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(),
                         nn.Linear(6, 2)).to(DT)


X = torch.randn(5, 3, dtype=DT, generator=torch.Generator().manual_seed(1))


def direction(params, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=DT) for k, v in params.items()}


def shifted(p0, v, eps):
    return {k: p0[k] + eps * v[k] for k in p0}


def model_at(model, params, x):
    return torch.func.functional_call(model, params, (x,))


def test_linearized_equals_model_at_p0():
    m = smooth_model()
    f_lin = wn.linearize(m)
    torch.testing.assert_close(f_lin(X), m(X), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(f_lin(X, f_lin.p0), m(X), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_taylor_error_order(degree):
    """|f(p0 + εv) - T_K(p0 + εv)| = C ε^(K+1) + O(ε^(K+2)): halving ε divides the error by
    2^(K+1) (8 for K = 2). A wrong term (missing 1/k!, wrong sign) leaves an O(ε^K) error and a
    ratio near 2^K, outside the window [0.8, 1.25] x 2^(K+1)."""
    m = smooth_model()
    t = wn.linearize(m) if degree == 1 else wn.taylor_expand(m, degree)
    p0 = t.p0
    v = direction(p0)
    errs = []
    for eps in (2e-2, 1e-2):
        p = shifted(p0, v, eps)
        errs.append(float((model_at(m, p, X) - t(X, p)).norm()))
    ratio = errs[0] / errs[1]
    assert 0.8 * 2 ** (degree + 1) < ratio < 1.25 * 2 ** (degree + 1), ratio
    assert errs[1] > 1e-12               # the model is not polynomial: the check has teeth


def test_linearized_is_affine_in_params():
    """f_lin(p0 + 2δ) - f0 = 2 (f_lin(p0 + δ) - f0) exactly (it is a jvp, linear in δ)."""
    m = smooth_model()
    f_lin = wn.linearize(m)
    p0, v = f_lin.p0, direction(f_lin.p0)
    f0 = f_lin(X)
    one = f_lin(X, shifted(p0, v, 0.3)) - f0
    two = f_lin(X, shifted(p0, v, 0.6)) - f0
    torch.testing.assert_close(two, 2 * one, rtol=1e-12, atol=1e-12)


def test_trained_linearized_model_follows_ntk_dynamics():
    """Gradient descent on (1/2)||f_lin(X) - Y||² with step η is exactly
    f_{t+1}(X) = f_t(X) - η Θ (f_t(X) - Y), Θ = J Jᵀ the empirical NTK in "full" mode
    (Lee et al. 2019, seed 002, linearized dynamics in discrete time). Trains the nn.Module
    form with torch.optim.SGD and compares against the recursion."""
    m = smooth_model()
    f_lin = wn.linearize(m)
    y = torch.randn(5, 2, dtype=DT, generator=torch.Generator().manual_seed(3))
    theta = wn.empirical_ntk(m, X, mode="full")                     # (n, n, O, O)
    n, o = 5, 2
    theta = theta.permute(0, 2, 1, 3).reshape(n * o, n * o)
    lr = 0.05
    opt = torch.optim.SGD(f_lin.parameters(), lr=lr)
    f_pred = m(X).detach().reshape(-1)
    for _ in range(4):
        opt.zero_grad()
        loss = 0.5 * ((f_lin(X) - y) ** 2).sum()
        loss.backward()
        opt.step()
        f_pred = f_pred - lr * theta @ (f_pred - y.reshape(-1))
    torch.testing.assert_close(f_lin(X).detach().reshape(-1), f_pred, rtol=1e-10, atol=1e-10)
    # the original model is untouched and the module's p0 is fixed
    torch.testing.assert_close(f_lin.p0["0.weight"], m[0].weight.detach())
    assert not torch.equal(f_lin.params[0].detach(), m[0].weight.detach())


def test_linearize_a_function_and_frozen_parameters():
    g = torch.Generator().manual_seed(4)
    p0 = {"w": torch.randn(3, 4, generator=g, dtype=DT)}

    def f(p, x):
        return torch.sin(x @ p["w"])

    f_lin = wn.linearize(f, params=p0)
    v = direction(p0)
    errs = [float((f(shifted(p0, v, e), X) - f_lin(X, shifted(p0, v, e))).norm())
            for e in (2e-2, 1e-2)]
    assert 3.2 < errs[0] / errs[1] < 5.0
    m = smooth_model()
    m[0].requires_grad_(False)
    f_lin = wn.linearize(m)
    assert f_lin.names == ("2.weight", "2.bias", "4.weight", "4.bias")


def test_empirical_nngp_matches_outputs():
    m = smooth_model()
    x2 = X[:3] * 1.5
    f1, f2 = m(X).detach(), m(x2).detach()
    full = wn.empirical_nngp(m, X, x2, mode="full", batch_size=2)
    torch.testing.assert_close(full, torch.einsum("ia,jb->ijab", f1, f2), rtol=1e-14, atol=0)
    torch.testing.assert_close(wn.empirical_nngp(m, X, x2), f1 @ f2.T / 2, rtol=1e-14, atol=0)
    diag = wn.empirical_nngp(m, X, mode="diagonal")
    torch.testing.assert_close(diag, f1[:, None] * f1[None], rtol=1e-14, atol=0)
