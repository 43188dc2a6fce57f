"""Issue 17 item 1: LayerNorm(affine=True) followed by an activation.

The γ gradient of channel c is the normalized channel value y_c itself, so the NTK of channel c
holds y_c(x) y_c(x'), which is correlated with the activation's derivative on the same channel:
the activation must multiply it by E[u v φ'(u) φ'(v)], not by K12 E[φ'(u) φ'(v)]
(docs/math.md §layernorm-affine). Before the fix the off-diagonal NTK was 8-21% low against
Monte Carlo (Relu/Erf/tanh); these tests fail on that code.
"""

import math

import pytest
import torch
from scipy import integrate, special

import widenets as wn

POINTS = [(1.0, 1.0, 0.5), (0.7, 2.0, -0.6), (3.0, 0.4, 0.9), (0.05, 0.08, 0.02)]


def _expect2(f, k11, k22, k12):
    """E[f(u, v)] over the bivariate normal by scipy dblquad (independent of widenets)."""
    s1, s2 = math.sqrt(k11), math.sqrt(k22)
    c = k12 / (s1 * s2)
    r = math.sqrt(1 - c * c)

    def g(z2, z1):
        return f(s1 * z1, s2 * (c * z1 + r * z2)) * math.exp(-(z1 * z1 + z2 * z2) / 2) / (
            2 * math.pi)

    return integrate.dblquad(g, -9, 9, -9, 9, epsabs=1e-10, epsrel=1e-9)[0]


def _relu_reference(k11, k22, k12):
    """E[uv 1{u>0}1{v>0}] - K12 E[1{u>0}1{v>0}] by 1-D quadrature over u of the conditional
    moments of v | u ~ N(μ, s²): E[v 1{v>0}] = μΦ(μ/s) + sφ(μ/s), P(v>0) = Φ(μ/s)."""
    s2 = math.sqrt(k22 - k12 * k12 / k11)

    def q(u, first):
        mu = k12 / k11 * u
        dens = math.exp(-u * u / (2 * k11)) / math.sqrt(2 * math.pi * k11)
        if first:
            return u * (mu * special.ndtr(mu / s2) + s2 * math.exp(-(mu / s2) ** 2 / 2)
                        / math.sqrt(2 * math.pi)) * dens
        return special.ndtr(mu / s2) * dens

    top = 10 * math.sqrt(k11)
    e_uv = integrate.quad(q, 0, top, args=(True,), epsabs=1e-13, epsrel=1e-12)[0]
    e_dd = integrate.quad(q, 0, top, args=(False,), epsabs=1e-13, epsrel=1e-12)[0]
    return e_uv - k12 * e_dd


def _sech2(x):
    return 1 / math.cosh(x) ** 2


SMOOTH = {
    "Erf": (wn.Erf(), lambda x: 2 / math.sqrt(math.pi) * math.exp(-x * x)),
    "Gelu": (wn.Gelu(), lambda x: special.ndtr(x) + x * math.exp(-x * x / 2)
             / math.sqrt(2 * math.pi)),
    "Sin": (wn.Sin(1.3, 0.7, 0.4), lambda x: 1.3 * 0.7 * math.cos(0.7 * x + 0.4)),
    "Elementwise(tanh)": (wn.Elementwise(torch.tanh), _sech2),
}


@pytest.mark.parametrize("name", list(SMOOTH))
@pytest.mark.parametrize("point", POINTS[:3])
def test_gamma_correction_matches_quadrature(name, point):
    """E[uv φ'(u)φ'(v)] - K12 E[φ'(u)φ'(v)] against scipy dblquad with φ' written here. A
    missing factor 2 in a derivative term or a dropped K12 Tdot term fails by far more than
    1e-7."""
    act, dphi = SMOOTH[name]
    k11, k22, k12 = (torch.tensor([v], dtype=torch.float64) for v in point)
    got = float(act.gamma_correction(k11, k22, k12)[0])
    want = _expect2(lambda u, v: (u * v - point[2]) * dphi(u) * dphi(v), *point)
    assert abs(got - want) <= 1e-7 * max(1.0, abs(want)), (got, want)
    # the exact diagonal (c = 1) used on self pairs, against 1-D quadrature
    k = torch.tensor([point[0]], dtype=torch.float64)
    got_d = float(act.gamma_correction_diag(k)[0])
    s = math.sqrt(point[0])
    want_d = integrate.quad(lambda z: (s * z * s * z - point[0]) * dphi(s * z) ** 2
                            * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -10, 10,
                            epsabs=1e-13, epsrel=1e-12)[0]
    assert abs(got_d - want_d) <= 1e-7 * max(1.0, abs(want_d)), (got_d, want_d)


@pytest.mark.parametrize("act", [wn.Relu(), wn.LeakyRelu(0.2), wn.Abs()], ids=repr)
@pytest.mark.parametrize("point", POINTS)
def test_gamma_correction_relu_family(act, point):
    """ABRelu: x φ'(x) = φ(x), so the correction is T - K12 Tdot = (a-b)² √(K11K22) sinθ/2π;
    checked against a 1-D quadrature of the conditional moments (ReLU) and the linear
    combination for a·min(x,0) + b·max(x,0) (by symmetry of the Gaussian, the (a,b) term is
    (a-b)² times the ReLU one)."""
    k11, k22, k12 = (torch.tensor([v], dtype=torch.float64) for v in point)
    got = float(act.gamma_correction(k11, k22, k12)[0])
    want = (act.a - act.b) ** 2 * _relu_reference(*point)
    assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (got, want)


def _mc_ntk(net, x, seeds, width_dtype=torch.float64):
    total = 0
    for s in range(seeds):
        total = total + wn.empirical_ntk(net.module((x.shape[1],), seed=s, dtype=width_dtype),
                                         x) / seeds
    return total


@pytest.mark.slow
@pytest.mark.parametrize("act", [wn.Relu(), wn.Erf(), wn.Elementwise(torch.tanh)], ids=repr)
def test_layernorm_affine_then_activation_matches_monte_carlo(act):
    """Dense(512) -> LayerNorm(affine=True) -> act -> Dense(1): the analytic NTK against the
    empirical NTK averaged over 24 seeds (width 512: Monte Carlo error ~1.5% of the diagonal
    here). Without the γ term the off-diagonal entries are 8-21% low, far outside 4%."""
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64)
    net = wn.serial(wn.Dense(512, w_std=1.3, b_std=0.2), wn.LayerNorm(affine=True), act,
                    wn.Dense(1))
    th = net.kernel(x, get="ntk")
    mc = _mc_ntk(net, x, 24)
    scale = th.diagonal().mean()
    assert float(((th - mc) / scale).abs().max()) < 0.04


@pytest.mark.parametrize("layout", ["diagonal", "full"])
def test_spatial_layernorm_affine_equals_flat(layout):
    """Conv with kernel size 1 on length-1 signals is a Dense layer: the spatial code path of
    the γ term (both layouts) must give the flat result (catches a correction applied only in
    one layout)."""
    torch.manual_seed(1)
    x = torch.randn(5, 3, dtype=torch.float64)
    flat = wn.serial(wn.Dense(8, b_std=0.3), wn.LayerNorm(affine=True), wn.Erf(), wn.Dense(1))
    conv = wn.serial(wn.Conv(8, 1, b_std=0.3), wn.LayerNorm(affine=True), wn.Erf(),
                     wn.Flatten(), wn.Dense(1))
    a = flat.kernel(x, get="ntk")
    b = conv.kernel(x[:, :, None], get="ntk", layout=layout)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=0)
    # and the γ term is really there: affine=False differs by more than 1%
    c = wn.serial(wn.Dense(8, b_std=0.3), wn.LayerNorm(), wn.Erf(), wn.Dense(1)).kernel(
        x, get="ntk")
    assert float(((a - c) / a).abs().max()) > 0.01


def test_layernorm_affine_mixed_with_other_branch_is_refused():
    """A γ term summed with another branch before the activation cannot be carried layer by
    layer (the activation would need the joint law of y and the sum): a clear error, not a
    wrong number."""
    net = wn.serial(wn.Dense(8), wn.FanOut(2),
                    wn.parallel(wn.LayerNorm(affine=True), wn.Dense(8)), wn.FanInSum(),
                    wn.Relu(), wn.Dense(1))
    with pytest.raises(ValueError, match=r"Relu\.kernel: a LayerNorm\(affine=True\)"):
        net.kernel(torch.randn(3, 4, dtype=torch.float64))
    # the NNGP alone is unaffected by γ: still refused, since the marker travels with the
    # kernel (cheap, and the same network must not work in one mode and not the other)


def test_two_affine_layernorms_count_twice():
    """LayerNorm(affine) twice in a row: both γ gradients are y y' of the final channel value
    (the second normalization is deterministic at infinite width, and with eps = 0 it is the
    identity on unit-variance inputs), so the correction enters with weight 2: the second
    affine LayerNorm adds exactly what the first one adds. Counting it once fails."""
    torch.manual_seed(2)
    x = torch.randn(4, 3, dtype=torch.float64)

    def ntk(*mid):
        return wn.serial(wn.Dense(8, b_std=0.1), *mid, wn.Relu(), wn.Dense(1)).kernel(
            x, get="ntk")

    two = ntk(wn.LayerNorm(affine=True, eps=0), wn.LayerNorm(affine=True, eps=0))
    plain = ntk(wn.LayerNorm(eps=0), wn.LayerNorm(eps=0))
    one = ntk(wn.LayerNorm(eps=0), wn.LayerNorm(affine=True, eps=0))
    # each affine LayerNorm adds the same (β + γ) contribution at the same place
    torch.testing.assert_close(two - one, one - plain, rtol=1e-9, atol=1e-12)
    assert float((two - plain).abs().max()) > 1e-3
