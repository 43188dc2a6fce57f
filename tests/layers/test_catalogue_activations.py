"""The catalogue activations (Cos, Rbf, Gabor, Exp, Gaussian, ExpNormalized, Polynomial,
Monomial, Hermite, RectifiedMonomial, Sign, SigmoidLike) against independent references:

* smooth ones: 2-D Gauss-Hermite quadrature of E[φ(u)φ(v)] and E[φ'(u)φ'(v)] (φ' by autograd)
  written here, at 120 nodes per axis, to 1e-9 (a wrong factor, a swapped sign of K12 or a
  dropped term fails by orders of magnitude);
* RectifiedMonomial: the Cho & Saul 2009 closed forms J_0..J_3 (to 1e-12) and scipy's dblquad
  over the positive quadrant for degrees 0-5 (to 1e-8);
* Sign: orthant probabilities from scipy's multivariate normal CDF (to 1e-6);
* all but ExpNormalized: Monte Carlo over finite networks built by `module()` (slow).
"""

import math

import numpy as np
import pytest
import torch

import widenets as wn
from tests.conftest import rel_err

# (K11, K22, K12) triples: unequal variances, positive/negative/zero/near-±1 correlation
TRIPLES = torch.tensor([
    [1.0, 1.0, 0.3], [0.7, 1.6, -0.5], [2.0, 0.5, 0.99], [1.3, 1.3, 1.3], [0.4, 0.9, 0.0],
    [1.1, 0.8, -0.93], [0.25, 0.25, -0.25],
], dtype=torch.float64)

_NODES, _W = np.polynomial.hermite_e.hermegauss(120)
_Z = torch.from_numpy(_NODES)
_WT = torch.from_numpy(_W / _W.sum())


def _grad(fn):
    def d(x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            y = fn(x)
            if not y.requires_grad:          # a constant (degree 0)
                return torch.zeros_like(x)
            (g,) = torch.autograd.grad(y.sum(), x)
        return g
    return d


def quad2(fn, k11, k22, k12):
    """E[fn(u) fn(v)], (u, v) ~ N(0, [[k11, k12], [k12, k22]]), 2-D Gauss-Hermite."""
    c = k12 / math.sqrt(k11 * k22)
    r = math.sqrt(max(1 - c * c, 0.0))
    u = math.sqrt(k11) * _Z[:, None]
    v = math.sqrt(k22) * (c * _Z[:, None] + r * _Z[None, :])
    return float((fn(u) * fn(v) * _WT[:, None] * _WT[None, :]).sum())


_GL_X, _GL_W = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(1500))


def quad1(fn, k):
    """E[fn(u)²], u ~ N(0, k): Gauss-Legendre at 1500 nodes on ±14√k (converged to ~1e-15
    for these entire integrands; independent of the Gauss-Hermite nodes)."""
    lim = 14 * math.sqrt(k)
    x = _GL_X * lim
    dens = torch.exp(-x * x / (2 * k)) / math.sqrt(2 * math.pi * k)
    return float((fn(x) ** 2 * dens * _GL_W).sum() * lim)


SMOOTH = {
    "cos": lambda: wn.Cos(1.3, 0.8, 0.4),
    "rbf": lambda: wn.Rbf(0.7),
    "gabor": wn.Gabor,
    "exp": lambda: wn.Exp(0.9, 0.6),
    "gaussian": lambda: wn.Gaussian(1.2, -0.8),
    "gaussian_b_positive": lambda: wn.Gaussian(0.5, 0.05),
    "sigmoid_like": wn.SigmoidLike,
    "polynomial": lambda: wn.Polynomial([0.3, -1.0, 0.5, 0.2]),
    "polynomial_even": lambda: wn.Polynomial([1.0, 0.0, -0.7]),
    **{f"monomial_{n}": (lambda n=n: wn.Monomial(n)) for n in range(6)},
}


def _check_against_quadrature(act, triples, tol):
    k11, k22, k12 = triples[:, 0], triples[:, 1], triples[:, 2]
    t, tdot = act.t_and_tdot(k11, k22, k12, True)
    dphi = _grad(act.forward)
    for i, (a, b, c) in enumerate(triples.tolist()):
        ref_t = quad2(act.forward, a, b, c)
        ref_d = quad2(dphi, a, b, c)
        scale_t, scale_d = max(1.0, abs(ref_t)), max(1.0, abs(ref_d))
        assert abs(float(t[i]) - ref_t) < tol * scale_t, (i, float(t[i]), ref_t)
        assert abs(float(tdot[i]) - ref_d) < tol * scale_d, (i, float(tdot[i]), ref_d)
    # the diagonal formulas (c = 1) against scipy's adaptive quadrature (Gauss-Hermite at 120
    # nodes is only ~1e-8 for Gabor's narrow exp(-2x²) at K = 2)
    for f, fn in ((act.t_diag, act.forward), (act.tdot_diag, dphi)):
        got = f(triples[:, 0])
        for i, kk in enumerate(triples[:, 0].tolist()):
            ref = quad1(fn, kk)
            assert abs(float(got[i]) - ref) < tol * max(1.0, abs(ref)), (i, float(got[i]), ref)


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_smooth_activation_matches_quadrature(name):
    # (rectified monomials have a kink in φ or φ': quadrature converges like 1/nodes there;
    # they get the exact Cho & Saul and dblquad tests below instead)
    _check_against_quadrature(SMOOTH[name](), TRIPLES, 1e-9)


def test_hermite_matches_quadrature_at_unit_variance():
    trip = torch.tensor([[1.0, 1.0, c] for c in (-0.99, -0.4, 0.0, 0.3, 0.8, 1.0)],
                        dtype=torch.float64)
    for n in range(6):
        _check_against_quadrature(wn.Hermite(n), trip, 1e-9)


def test_rbf_is_the_rbf_kernel_of_the_inputs():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = wn.serial(wn.Dense(1), wn.Rbf(0.4)).kernel(x, get="nngp")
    ref = torch.exp(-0.4 * torch.cdist(x, x) ** 2 / 3)
    torch.testing.assert_close(k, ref, rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------ rectified monomials
def _cho_saul(n, theta):
    """J_n of Cho & Saul 2009, eq. (6) and the listed J_0..J_3, written out."""
    s, c = math.sin(theta), math.cos(theta)
    return [math.pi - theta,
            s + (math.pi - theta) * c,
            3 * s * c + (math.pi - theta) * (1 + 2 * c * c),
            4 * s ** 3 + 15 * s * c * c + (math.pi - theta) * (9 * s * s * c + 15 * c ** 3)][n]


ANGLE_TRIPLES = torch.tensor(
    [[1.2, 0.7, math.sqrt(1.2 * 0.7) * c] for c in (-1.0, -0.999999, -0.6, 0.0, 0.45, 0.999999,
                                                     1.0)], dtype=torch.float64)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_rectified_monomial_equals_cho_saul(n):
    act = wn.RectifiedMonomial(n)
    k11, k22, k12 = ANGLE_TRIPLES.unbind(1)
    t, tdot = act.t_and_tdot(k11, k22, k12, True)
    assert torch.isfinite(t).all() and torch.isfinite(tdot).all()
    for i, (a, b, c) in enumerate(ANGLE_TRIPLES.tolist()):
        theta = math.acos(max(-1.0, min(1.0, c / math.sqrt(a * b))))
        ref = (a * b) ** (n / 2) * _cho_saul(n, theta) / (2 * math.pi)
        # Price: Tdot_n = n² T_{n-1}; n = 0 has Tdot = 0 (autograd's derivative of a step)
        ref_d = 0.0 if n == 0 else n * n * (a * b) ** ((n - 1) / 2) * _cho_saul(n - 1, theta) \
            / (2 * math.pi)
        # at c = ±1 the last bit of c = K12/√(K11K22) becomes √ε ~ 1.5e-8 in θ (in the
        # reference as well): 1e-8 there, 1e-12 elsewhere (a wrong J_n term fails both)
        tol = 1e-8 if abs(abs(c) / math.sqrt(a * b) - 1) < 1e-5 else 1e-12
        assert abs(float(t[i]) - ref) < tol * max(1, abs(ref)), (i, float(t[i]), ref)
        assert abs(float(tdot[i]) - ref_d) < tol * max(1, abs(ref_d))
    # degree 1 is Relu
    if n == 1:
        r, rd = wn.Relu().t_and_tdot(k11, k22, k12, True)
        torch.testing.assert_close(t, r, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(tdot, rd, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5])
def test_rectified_monomial_matches_dblquad(n):
    """E[max(u,0)^n max(v,0)^n] by scipy's dblquad over the positive quadrant (independent of
    the J_n recurrence), and the diagonal (2n-1)!!/2 K^n."""
    from scipy.integrate import dblquad

    a, b, c12 = 1.2, 0.7, -0.3
    det = a * b - c12 * c12
    inv = np.array([[b, -c12], [-c12, a]]) / det

    def dens(v, u):
        q = inv[0, 0] * u * u + 2 * inv[0, 1] * u * v + inv[1, 1] * v * v
        return (u * v) ** n * math.exp(-q / 2) / (2 * math.pi * math.sqrt(det))

    ref, _ = dblquad(dens, 0, 12, 0, 12, epsabs=1e-12, epsrel=1e-11)
    act = wn.RectifiedMonomial(n)
    t, _ = act.t_and_tdot(*(torch.tensor([v], dtype=torch.float64) for v in (a, b, c12)), False)
    assert abs(float(t[0]) - ref) < 1e-8 * max(1, ref), (float(t[0]), ref)
    k = torch.tensor([0.8], dtype=torch.float64)
    diag_ref = float((torch.clamp(math.sqrt(0.8) * _Z, min=0) ** (2 * n) * _WT).sum()) \
        if n else 0.5
    assert abs(float(act.t_diag(k)[0]) - diag_ref) < 1e-9


# ------------------------------------------------------------------ sign, expnormalized
def test_sign_matches_orthant_probabilities():
    from scipy.stats import multivariate_normal

    act = wn.Sign()
    k11, k22, k12 = TRIPLES.unbind(1)
    t, tdot = act.t_and_tdot(k11, k22, k12, True)
    for i, (a, b, c) in enumerate(TRIPLES.tolist()):
        if abs(c) >= math.sqrt(a * b) * 0.999:
            continue                     # degenerate covariance: the CDF is not defined
        # E[sign u sign v] = 4 P(u > 0, v > 0) - 1 = 4 P(u < 0, v < 0) - 1
        p = multivariate_normal(mean=[0, 0], cov=[[a, c], [c, b]]).cdf([0, 0])
        assert abs(float(t[i]) - (4 * p - 1)) < 1e-6, (i, float(t[i]), 4 * p - 1)
    assert torch.equal(tdot, torch.zeros_like(tdot))
    # the NTK through a Sign counts only the readout: Θ = K_sign (readout Dense, σw = 1)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = wn.serial(wn.Dense(8, b_std=0.3), wn.Sign(), wn.Dense(1)).kernel(x)
    torch.testing.assert_close(k.ntk, k.nngp, rtol=0, atol=0)


def test_expnormalized_definition_and_tdot_by_autograd():
    act = wn.ExpNormalized(gamma=0.7, shift=-0.4)
    k11, k22, k12 = TRIPLES[:, 0].clone(), TRIPLES[:, 1].clone(), TRIPLES[:, 2].clone()
    k12 = k12.clamp(-0.9 * (k11 * k22).sqrt(), 0.9 * (k11 * k22).sqrt()).requires_grad_(True)
    t, tdot = act.t_and_tdot(k11, k22, k12, True)
    # the definition (Shankar et al. 2020, NT): √(K11K22) exp(γ(cos θ + shift))
    ref = (k11 * k22).sqrt() * torch.exp(0.7 * (k12 / (k11 * k22).sqrt() - 0.4))
    torch.testing.assert_close(t, ref, rtol=1e-14, atol=0)
    (g,) = torch.autograd.grad(ref.sum(), k12)
    torch.testing.assert_close(tdot, g, rtol=1e-13, atol=0)
    # diagonal: c = 1
    k = torch.tensor([0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(act.t_diag(k), k * math.exp(0.7 * 0.6), rtol=1e-14, atol=0)
    torch.testing.assert_close(act.tdot_diag(k), torch.full_like(k, 0.7 * math.exp(0.42)),
                               rtol=1e-14, atol=0)


def test_expnormalized_is_kernel_only():
    net = wn.serial(wn.Dense(4), wn.ExpNormalized())
    with pytest.raises(ValueError, match=r"^ExpNormalized.module: .*kernel map"):
        net.module((3,))
    # applies to any kernel, also the raw inputs
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.isfinite(wn.ExpNormalized().kernel(x, get="nngp")).all()


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("make, match", [
    (lambda: wn.Monomial(1.5), r"^Monomial: degree must be a non-negative int"),
    (lambda: wn.Monomial(-1), r"^Monomial: degree"),
    (lambda: wn.RectifiedMonomial(2.0), r"^RectifiedMonomial: degree"),
    (lambda: wn.Hermite(True), r"^Hermite: degree"),
    (lambda: wn.Polynomial([]), r"^Polynomial: coef must have at least one entry"),
    (lambda: wn.Polynomial([1.0, float("nan")]), r"^Polynomial: coef\[1\] must be a finite"),
    (lambda: wn.Rbf(0.0), r"^Rbf: gamma must be > 0"),
    (lambda: wn.Cos(a="1"), r"^Cos: a must be a finite number"),
    (lambda: wn.ExpNormalized(do_clip=1), r"^ExpNormalized: do_clip must be a bool"),
])
def test_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_polynomial_coef_not_a_sequence():
    with pytest.raises(TypeError, match=r"^Polynomial: coef must be a sequence"):
        wn.Polynomial(3.0)


def test_gaussian_refuses_divergent_moment():
    x = torch.ones(2, 4, dtype=torch.float64)             # K = w_std² = 4 after Dense(w_std=2)
    net = wn.serial(wn.Dense(4, w_std=2.0), wn.Gaussian(b=0.07))
    with pytest.raises(ValueError, match=r"^Gaussian.kernel: b = 0.07 needs .* below"):
        net.kernel(x)
    # just below the threshold 1/(4·4) it is finite
    k = wn.serial(wn.Dense(4, w_std=2.0), wn.Gaussian(b=0.06)).kernel(x)
    torch.testing.assert_close(k.cov1, torch.full((2,), (1 - 0.96) ** -0.5, dtype=torch.float64))


def test_hermite_refuses_non_unit_variance():
    x = torch.ones(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^Hermite.kernel: inputs must have unit variance"):
        wn.serial(wn.Dense(4, w_std=1.1), wn.Hermite(2)).kernel(x)
    k = wn.serial(wn.Dense(4), wn.Hermite(3)).kernel(x, x * torch.tensor([1.0, -1, 1, -1]))
    assert torch.isfinite(k.nngp).all()


# ------------------------------------------------------------------ Monte Carlo
WIDTH = 512
MC = {
    "cos": lambda: wn.Cos(1.1, 0.9, 0.3), "rbf": lambda: wn.Rbf(0.6), "gabor": wn.Gabor,
    "exp": lambda: wn.Exp(0.5, 0.4), "gaussian": wn.Gaussian, "sigmoid_like": wn.SigmoidLike,
    "sign": wn.Sign, "polynomial": lambda: wn.Polynomial([0.2, 1.0, 0.3]),
    "monomial_3": lambda: wn.Monomial(3), "rectified_monomial_0": lambda: wn.RectifiedMonomial(0),
    "rectified_monomial_2": lambda: wn.RectifiedMonomial(2), "hermite_3": lambda: wn.Hermite(3),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MC))
def test_activation_matches_monte_carlo(name, x_small):
    """Finite networks of width 512 from `module()`: NNGP from 64 nets x 128 readout units
    (measured error < 3%), NTK from 8 nets (< 4%). Tolerances 5%/6%: a factor 2 in T or Tdot,
    or T and Tdot swapped, is off by > 25% (the bias terms keep the error visible).
    Cubic polynomials are heavy-tailed (E[u⁶] terms): measured 5-6% / 5-8% (NTK from 32 nets),
    tolerances 12% / 15%, still far below the > 25% of a wrong factor."""
    hermite = name.startswith("hermite")
    x = x_small / x_small.norm(dim=1, keepdim=True) * 8 ** 0.5 if hermite else x_small
    w, b = (1.0, 0.0) if hermite else (0.9, 0.3)

    def net(out):
        return wn.serial(wn.Dense(WIDTH, w_std=w, b_std=b), MC[name](),
                         wn.Dense(out, w_std=1.2, b_std=0.4))
    exact = net(128).kernel(x)
    mc = wn.monte_carlo_kernel(net(128), x, n_samples=64, get="nngp")
    heavy = name in ("monomial_3", "hermite_3")
    assert rel_err(mc, exact.nngp) < (0.12 if heavy else 0.05)
    x2 = x[:3].flip(1) if hermite else x[:3] * 0.9          # Hermite: keep unit variance
    exact_ntk = net(2).kernel(x, x2, get="ntk")
    mc_ntk = wn.monte_carlo_kernel(net(2), x, x2, n_samples=32 if heavy else 8,
                                   get="ntk")
    assert rel_err(mc_ntk, exact_ntk) < (0.15 if heavy else 0.06)
