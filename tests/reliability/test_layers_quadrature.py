"""Issue 17 item 2 and issue 11's Elementwise items: quadrature accurate at any variance, a
closed-form T with Tdot by autograd, and the two traps of the Activation base.

Before the fix Elementwise used 64 Gauss-Hermite nodes in z whatever the variance: tanh's
tdot_diag(25) was 45% off and Elementwise(erf) after Dense(16, w_std=3) 20-67% off in the NTK.
The rule now follows both the Gaussian and φ's unit scale (docs/math.md §quadrature-accuracy)
and is stated to reach 1e-8 relative for smooth activations at every variance 1e-3..1e3.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special
from torch import nn

import widenets as wn
from widenets.layers.activations import Activation

VARIANCES = [1e-3, 1e-2, 0.1, 1.0, 3.0, 25.0, 100.0, 1e3]


def _softplus(x):
    return np.logaddexp(0.0, x)


# (torch fn, numpy φ, numpy φ')
FUNCS = {
    "tanh": (torch.tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "sigmoid": (torch.sigmoid, special.expit, lambda x: special.expit(x) * special.expit(-x)),
    "softplus": (nn.functional.softplus, _softplus, special.expit),
    "erf": (torch.erf, special.erf, lambda x: 2 / math.sqrt(math.pi) * np.exp(-x * x)),
}


def _quad1(f, k):
    """E[f(u)], u ~ N(0, k), by adaptive scipy quad in x with breakpoints at φ's unit scale."""
    s = math.sqrt(k)
    dens = lambda x: math.exp(-x * x / (2 * k)) / math.sqrt(2 * math.pi * k)  # noqa: E731
    lim = 12 * s
    pts = sorted({p for p in (-6, -3, -1, 0, 1, 3, 6) if -lim < p < lim})
    return integrate.quad(lambda x: f(x) * dens(x), -lim, lim, points=pts, limit=500,
                          epsabs=0, epsrel=1e-13)[0]


@pytest.mark.parametrize("name", list(FUNCS))
def test_one_dimensional_rule_matches_scipy_at_every_variance(name):
    """t_diag = E[φ(u)²] and tdot_diag = E[φ'(u)²] against scipy quad at variances 1e-3..1e3,
    to 2e-8 relative (the stated accuracy is 1e-8; the old rule was 45% off for tanh at 25)."""
    fn, phi, dphi = FUNCS[name]
    act = wn.Elementwise(fn)
    k = torch.tensor(VARIANCES, dtype=torch.float64)
    t, td = act.t_diag(k), act.tdot_diag(k)
    for i, v in enumerate(VARIANCES):
        want_t = _quad1(lambda x: phi(x) ** 2, v)
        want_td = _quad1(lambda x: dphi(x) ** 2, v)
        assert abs(float(t[i]) - want_t) <= 2e-8 * abs(want_t), (v, float(t[i]), want_t)
        assert abs(float(td[i]) - want_td) <= 2e-8 * abs(want_td), (v, float(td[i]), want_td)


def test_two_dimensional_rule_matches_erf_closed_form_at_every_variance():
    """T and Tdot of Elementwise(erf) against the Erf closed form for K11, K22 over 1e-3..1e3
    and correlations -0.95..0.999, to 1e-7 relative (the old rule was 20-67% off in the NTK at
    variance ~9 and worse beyond)."""
    v = torch.tensor([1e-3, 0.1, 3.0, 100.0, 1e3], dtype=torch.float64)
    k11, k22 = v[:, None, None], v[None, :, None]
    c = torch.tensor([-0.95, 0.3, 0.9, 0.999], dtype=torch.float64)[None, None]
    k12 = c * torch.sqrt(k11 * k22)
    q, e = wn.Elementwise(torch.erf), wn.Erf()
    for got, want in ((q.t(k11, k22, k12), e.t(k11, k22, k12)),
                      (q.tdot(k11, k22, k12), e.tdot(k11, k22, k12))):
        scale = want.abs().clamp(min=1e-12)
        assert float(((got - want).abs() / scale).max()) < 1e-7


def test_elementwise_erf_after_wide_dense_matches_erf():
    """The issue's example: Elementwise(torch.erf) vs Erf() after Dense(16, w_std=3.0), and at
    w_std 0.03 and 30 (variances ~1e-3 and ~1e3), whole network, NNGP and NTK."""
    torch.manual_seed(0)
    x = torch.randn(5, 16, dtype=torch.float64)
    for w in (0.03, 3.0, 30.0):
        a = wn.serial(wn.Dense(16, w_std=w), wn.Elementwise(torch.erf), wn.Dense(1)).kernel(x)
        b = wn.serial(wn.Dense(16, w_std=w), wn.Erf(), wn.Dense(1)).kernel(x)
        torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-7, atol=0)
        torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-7, atol=0)


def test_lifted_tanh_goes_through_the_accurate_rule():
    """wn.lift maps nn.Tanh to Elementwise: at large weights (pre-activation variance ~25 and
    more) its output variance must match scipy."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    lifted = wn.lift(model, (4,), w_std=5.0, b_std=0.0, parameterization="ntk")
    x = torch.randn(3, 4, dtype=torch.float64) * 2
    k = lifted.kernel(x)
    pre = 25.0 * (x * x).sum(1) / 4
    for i in range(3):
        want = _quad1(lambda z: np.tanh(z) ** 2, float(pre[i]))
        assert abs(float(k.cov1[i]) - want) <= 1e-8 * want


def _erf_nngp(k11, k22, k12):
    return (2 / math.pi) * torch.arcsin(2 * k12 / torch.sqrt((1 + 2 * k11) * (1 + 2 * k22)))


def test_nngp_fn_closed_form_gives_tdot_by_autograd():
    """Elementwise(erf, nngp_fn=<erf closed form>) equals Erf() to 1e-12 in NNGP and NTK
    through two hidden layers (Tdot = ∂T/∂K12 by autograd; quadrature would give ~1e-9)."""
    torch.manual_seed(4)
    x = torch.randn(6, 3, dtype=torch.float64)

    def net(act):
        return wn.serial(wn.Dense(8, w_std=2.0, b_std=0.3), act, wn.Dense(8, w_std=1.5), act,
                         wn.Dense(1))

    a = net(wn.Elementwise(torch.erf, nngp_fn=_erf_nngp)).kernel(x)
    b = net(wn.Erf()).kernel(x)
    torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-12, atol=0)
    # and with x1 != x2 (no symmetric shortcut)
    a2 = net(wn.Elementwise(torch.erf, nngp_fn=_erf_nngp)).kernel(x[:3], x[3:], get="ntk")
    torch.testing.assert_close(a2, net(wn.Erf()).kernel(x[:3], x[3:], get="ntk"), rtol=1e-12,
                               atol=0)


def test_nngp_fn_that_disagrees_with_fn_is_refused():
    """A closed form for the wrong function (erf's T for tanh) is caught at construction."""
    with pytest.raises(ValueError, match="Elementwise: nngp_fn disagrees with the quadrature"):
        wn.Elementwise(torch.tanh, nngp_fn=_erf_nngp)


class _SameObject(Activation):
    """A closed form returning the same tensor object for T and Tdot (T = Tdot = K12 + 1 is
    not a valid kernel pair, but the bookkeeping must not corrupt it)."""

    def forward(self, x):  # pragma: no cover - kernel only
        return x

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        t = k12 + 1.0
        return t, (t if want_tdot else None)


class _Separate(_SameObject):
    def t_and_tdot(self, k11, k22, k12, want_tdot):
        return k12 + 1.0, (k12 + 1.0 if want_tdot else None)


def test_same_tensor_for_t_and_tdot_is_not_corrupted():
    """Θ' = Tdot Θ is computed in place; when T and Tdot are one object the NNGP used to be
    overwritten with Tdot·Θ. Reference: the same formulas as separate tensors."""
    x = torch.randn(4, 3, dtype=torch.float64)
    for x2 in (None, torch.randn(2, 3, dtype=torch.float64)):
        a = wn.serial(wn.Dense(5), _SameObject(), wn.Dense(1)).kernel(x, x2)
        b = wn.serial(wn.Dense(5), _Separate(), wn.Dense(1)).kernel(x, x2)
        torch.testing.assert_close(a.nngp, b.nngp, rtol=0, atol=0)
        torch.testing.assert_close(a.ntk, b.ntk, rtol=0, atol=0)


def test_activation_without_formulas_raises_not_implemented():
    class Nothing(Activation):
        def forward(self, x):  # pragma: no cover
            return x

    class OnlyT(Activation):
        def forward(self, x):  # pragma: no cover
            return x

        def t(self, k11, k22, k12):
            return k12

    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="Nothing: an Activation subclass must define"):
        wn.serial(wn.Dense(4), Nothing(), wn.Dense(1)).kernel(x)
    with pytest.raises(NotImplementedError, match="OnlyT: an Activation subclass must define"):
        wn.serial(wn.Dense(4), OnlyT(), wn.Dense(1)).kernel(x)
    # the NNGP alone needs only t
    k = wn.serial(wn.Dense(4), OnlyT(), wn.Dense(1)).kernel(x, get="nngp")
    assert torch.isfinite(k).all()
