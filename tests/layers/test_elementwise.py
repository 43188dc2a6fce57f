"""Elementwise by the Hermite series (docs/math.md §hermite-series) with the quadrature for the
pairs the series does not certify: against closed forms, the quadrature, by-hand coefficients
and its own truncation bound.

Tolerances are relative to the natural scale √(E[φ(u)²] E[φ(v)²]) of T (and the same with φ'
for Tdot): 1e-9, where a wrong normalisation of the Hermite polynomials (He_k instead of
He_k/√k!), a wrong power of ρ, a swapped variance or a dropped fallback (ReLU at ρ = 0.9999
through 256 terms is off by ~1e-4) are all off by 1e-5 or much more.
"""

import copy
import math
import pickle

import pytest
import torch

import widenets as wn
from widenets.layers.elementwise import hermite_coefficients

V = torch.tensor([1e-3, 0.05, 1.0, 4.0, 100.0, 1e3], dtype=torch.float64)
C = torch.tensor([-0.99999, -0.999, -0.9, -0.3, 0.0, 0.4, 0.9, 0.97, 0.999, 0.99999],
                 dtype=torch.float64)


def _grid(v=V, c=C):
    k11, k22 = v[:, None, None], v[None, :, None]
    return k11, k22, c[None, None] * torch.sqrt(k11 * k22)


def _scaled_error(act, ref, k11, k22, k12):
    """max |T - T_ref| / √(T(K11) T(K22)) and the same for Tdot."""
    got, want = act.t_and_tdot(k11, k22, k12, True), ref.t_and_tdot(k11, k22, k12, True)
    scales = (torch.sqrt(ref.t_diag(k11) * ref.t_diag(k22)),
              torch.sqrt(ref.tdot_diag(k11) * ref.tdot_diag(k22)))
    return [float(((g - w).abs() / s).max()) for g, w, s in zip(got, want, scales)]


CLOSED = {
    "erf": (torch.erf, wn.Erf()),
    "gelu": (torch.nn.functional.gelu, wn.Gelu()),
    "relu": (torch.relu, wn.Relu()),
    "abs": (torch.abs, wn.Abs()),
    "leaky_relu": (lambda x: torch.nn.functional.leaky_relu(x, 0.2), wn.LeakyRelu(0.2)),
    "cubic": (lambda x: 0.2 + x - 0.3 * x ** 2 + 0.1 * x ** 3,
              wn.Polynomial([0.2, 1.0, -0.3, 0.1])),
}


@pytest.mark.parametrize("name", list(CLOSED))
def test_series_matches_closed_forms_at_any_variance_and_correlation(name):
    """T and Tdot against the closed-form layer at variances 1e-3..1e3 (every pair of them,
    ratios up to 1e6) and correlations -0.99999..0.99999: within 1e-9 of the scale. ReLU-like
    kinks leave the slowly converging series to the quadrature near |ρ| = 1."""
    fn, ref = CLOSED[name]
    v = V if name != "cubic" else V[:5]          # a cubic at variance 1e3: T ~ 1e9, fine too,
    err_t, err_tdot = _scaled_error(wn.Elementwise(fn), ref, *_grid(v))   # but skip the
    assert err_t < 1e-9 and err_tdot < 1e-9, (err_t, err_tdot)           # overflow-free part


def test_collinear_pairs_by_the_one_dimensional_rule():
    """ρ = ±1 exactly (K12 = ±K11 = ±K22: the self pairs of x1 = x2, identical inputs): the
    series cannot certify kinks there and the pair is a 1-D integral E[φ(σz)φ(±σz)]. Reference:
    the closed forms' exact diagonal (their arccos at a rounded c ≈ 1 is itself 1e-8 off) and,
    at ρ = -1, φ's parity: relu(x) relu(-x) = 0 and step(x) step(-x) = 0 a.e.; |x| is even
    and sign(x) sign(-x) = -1; erf is odd and erf' even. Within 1e-11 of the scale (a sign
    slip at ρ = -1 is off by O(1))."""
    minus = {"relu": lambda r: (0 * V, 0 * V), "abs": lambda r: (V, -torch.ones_like(V)),
             "erf": lambda r: (-r.t_diag(V), r.tdot_diag(V))}
    for name, fn, ref in (("relu", torch.relu, wn.Relu()), ("abs", torch.abs, wn.Abs()),
                          ("erf", torch.erf, wn.Erf())):
        act = wn.Elementwise(fn)
        scale = (ref.t_diag(V), ref.tdot_diag(V).abs())
        for sign, want in ((1.0, (ref.t_diag(V), ref.tdot_diag(V))), (-1.0, minus[name](ref))):
            got = act.t_and_tdot(V, V, sign * V, True)
            for g, w, sc in zip(got, want, scale):
                assert float(((g - w).abs() / sc).max()) < 1e-11, (name, sign, g, w)


def test_series_matches_sin_closed_form_where_the_rule_resolves_it():
    """a·sin(bx + c) at b²K <= 50 (oscillations resolved by both 1-D and 2-D rules)."""
    ref = wn.Sin(1.3, 0.7, 0.4)
    err = _scaled_error(wn.Elementwise(ref.forward), ref, *_grid(V[:5]))
    assert max(err) < 1e-9, err


@pytest.mark.parametrize("fn", [torch.tanh, torch.sigmoid, torch.nn.functional.softplus,
                                torch.nn.functional.silu], ids=lambda f: f.__name__)
def test_series_matches_the_quadrature_without_closed_form(fn):
    """Activations without closed forms: auto (series) against implementation="quadrature"
    (the 2-D rule alone, stated 1e-8) on pairs away from |ρ| = 1 (which both compute by the
    quadrature): two independent computations."""
    c = torch.tensor([-0.9, -0.3, 0.0, 0.5, 0.9], dtype=torch.float64)
    k11, k22, k12 = _grid(V, c)
    auto = wn.Elementwise(fn)
    quad = wn.Elementwise(fn, implementation="quadrature")
    err = _scaled_error(auto, quad, k11, k22, k12)
    assert max(err) < 1e-8, err


def test_hermite_coefficients_of_a_cubic_by_hand():
    """(σz)³ = σ³ (He_3 + 3 He_1) = σ³ (√6 h_3 + 3 h_1): the rule and the recurrence exactly
    (a wrong √k! normalisation gives √6 → 6 or 1; a wrong recurrence fails h_3)."""
    sd = torch.tensor([0.5, 2.0], dtype=torch.float64)
    a, norm2, tail2 = hermite_coefficients((lambda x: x ** 3,), sd, order=40)
    want = torch.zeros(2, a.shape[-1], dtype=torch.float64)
    want[:, 1], want[:, 3] = 3 * sd ** 3, math.sqrt(6) * sd ** 3
    torch.testing.assert_close(a[0], want, rtol=0, atol=1e-12 * float(sd.max()) ** 3)
    torch.testing.assert_close(norm2[0], 15 * sd ** 6, rtol=1e-13, atol=0)   # E[z⁶] = 15
    assert float((tail2[0, :, 3] / norm2[0]).max()) < 1e-13


def test_truncation_bound_holds_and_is_not_vacuous():
    """|T - Σ_{k<=K} a_k b_k ρ^k| <= |ρ|^(K+1) r1 r2 (docs/math.md §hermite-series) for ReLU
    (slowest decay, closed form) at unequal variances, and within a factor 30 of the error at
    ρ = 0.99 (a bound from the wrong tail, e.g. r_{K-1} or r²  instead of r, fails one side)."""
    v1, v2 = 0.7, 2.5
    a, norm2, tail2 = hermite_coefficients((torch.relu,),
                                           torch.tensor([v1, v2], dtype=torch.float64).sqrt())
    relu = wn.Relu()
    for rho in (0.3, 0.8, 0.95, 0.99, -0.99):
        k12 = torch.tensor(rho * math.sqrt(v1 * v2), dtype=torch.float64)
        exact = float(relu.t(*(torch.tensor(v, dtype=torch.float64) for v in (v1, v2)), k12))
        for order in (8, 32, 128, 255):
            powers = rho ** torch.arange(order + 1, dtype=torch.float64)
            partial = float((a[0, 0, :order + 1] * a[0, 1, :order + 1] * powers).sum())
            bound = abs(rho) ** (order + 1) * math.sqrt(tail2[0, 0, order] * tail2[0, 1, order])
            assert abs(exact - partial) <= bound * (1 + 1e-9) + 1e-14, (rho, order)
            if rho == 0.99:
                assert bound < 30 * abs(exact - partial), (order, bound, exact - partial)


def _net(act):
    return wn.serial(wn.Dense(32, w_std=1.5, b_std=0.2), act, wn.Dense(32, w_std=1.3, b_std=0.1),
                     act, wn.Dense(1))


def test_network_with_identical_near_identical_and_scaled_inputs():
    """Whole network, NNGP and NTK, x1 = x2 (exact diagonal) and x1 != x2: Elementwise(erf)
    and Elementwise(relu) equal Erf and Relu within 1e-9 relative on inputs that include an
    exact duplicate (exact self-pair values), a near-duplicate (1 - ρ ~ 1e-5: the quadrature
    takes it for ReLU; closer ones are beyond the closed forms' own accuracy, whose arcsin
    turns a rounding error ε into √ε) and inputs whose norms differ by 1e3 (very different
    variances)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    x[1] = x[0]
    x[2] = x[0] + 1e-2 * torch.randn(5, generator=g, dtype=torch.float64)
    x[3] *= 30.0
    x[4] *= 0.03
    for fn, ref in ((torch.erf, wn.Erf()), (torch.relu, wn.Relu())):
        for x2 in (None, x[[0, 3, 5]] * 1.0):
            a = _net(wn.Elementwise(fn)).kernel(x, x2)
            b = _net(ref).kernel(x, x2)
            for u, w in ((a.nngp, b.nngp), (a.ntk, b.ntk)):
                torch.testing.assert_close(u, w, rtol=1e-9, atol=1e-12)
        k = _net(wn.Elementwise(fn)).kernel(x)
        assert torch.equal(k.nngp, k.nngp.T) and torch.equal(k.ntk, k.ntk.T)
        assert torch.equal(k.nngp[0], k.nngp[1])          # the duplicate: identical rows


def test_implementation_argument_and_copies():
    with pytest.raises(ValueError, match=r"^Elementwise: implementation must be one of "
                                         r"\('auto', 'quadrature'\), got 'series'"):
        wn.Elementwise(torch.tanh, implementation="series")
    act = wn.Elementwise(torch.tanh)
    x = torch.randn(4, 3, dtype=torch.float64)
    k = _net(act).kernel(x).ntk
    for other in (copy.deepcopy(act), pickle.loads(pickle.dumps(wn.Elementwise(torch.tanh)))):
        torch.testing.assert_close(_net(other).kernel(x).ntk, k, rtol=0, atol=0)
    assert "implementation='quadrature'" in repr(wn.Elementwise(torch.tanh,
                                                                implementation="quadrature"))


def test_float32_kernel_matches_float64():
    """The series runs in float64 whatever the kernel's dtype; the result is cast back."""
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    a = _net(wn.Elementwise(torch.tanh)).kernel(x, dtype=torch.float32)
    b = _net(wn.Elementwise(torch.tanh)).kernel(x.double())
    assert a.ntk.dtype == torch.float32
    torch.testing.assert_close(a.ntk.double(), b.ntk, rtol=1e-5, atol=1e-6)


def test_each_pair_is_independent_of_the_batch_bitwise():
    """A pair's order (and series-or-quadrature) depends on the pair alone: the kernel does not
    depend on how it is cut into row blocks (and x1 = x2 stays exactly symmetric). Mixed
    orders and quadrature pairs: ReLU at correlations 0..0.9999 and tanh at variance 9 (a
    batch-wide order choice differed by ~4e-12 here)."""
    c = torch.tensor([0.0, 0.5, 0.9, 0.99, 0.9999], dtype=torch.float64)
    for fn in (torch.relu, torch.tanh):
        act = wn.Elementwise(fn)
        k11, k22, k12 = _grid(torch.tensor([0.3, 9.0], dtype=torch.float64), c)
        both = act.t_and_tdot(k11, k22, k12, True)
        for i in range(2):
            for j in range(5):
                one = act.t_and_tdot(k11[i:i + 1], k22, k12[i:i + 1, :, j:j + 1], True)
                for b, o in zip(both, one):
                    assert torch.equal(b[i:i + 1, :, j:j + 1], o), (fn, i, j)
        # T alone (get="nngp") is bitwise T of (T, Tdot): each function certified on its own
        assert torch.equal(act.t(k11, k22, k12), both[0])
        assert torch.equal(act.tdot(k11, k22, k12), both[1])
