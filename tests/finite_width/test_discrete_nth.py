"""Discrete-time Neural Tangent Hierarchy (seed 000 eq. 29; docs/math.md §nth-discrete):
one GD step Taylor-expanded, truncated at order p. Checked against real gradient-descent steps
of the network (plain `fw.train`, independent of the hierarchy's tensors), against a closed form
for order 2, against the continuous hierarchy as η -> 0, and K3/K4 against the other path."""

import copy

import pytest
import torch

import widenets as wn
from widenets.finite_width import _core

fw = wn.finite_width


@pytest.fixture(scope="module")
def deep():
    """A narrow 2-hidden-layer erf net (large Hessians: the Taylor terms are well resolved)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    xt = torch.randn(2, 3, generator=g, dtype=torch.float64)
    net = wn.serial(wn.Dense(8, b_std=0.1), wn.Erf(), wn.Dense(8, b_std=0.1), wn.Erf(),
                    wn.Dense(1, b_std=0.1))
    model = net.module((3,), seed=0, dtype=torch.float64)
    return model, x, xt, torch.sin(x.sum(1)), fw.nth_kernels(model, x, order=4, x_test=xt,
                                                             discrete=True)


def _errors(deep, order, eta, steps):
    """||f_pred - f_GD|| and ||K2_pred - K2_GD|| (train and test rows) after `steps` real GD
    steps of the network with learning rate eta ("sum" loss)."""
    model, x, xt, y, k = deep
    res = fw.truncated_nth(None, y=y, order=order, times=[0, steps], kernels=k,
                           learning_rate=eta, discrete=True, convention="sum")
    m = copy.deepcopy(model)
    fw.train(m, x, y, learning_rate=eta, steps=steps, record=("loss",), convention="sum")
    z = torch.cat([x, xt])
    with torch.no_grad():
        f = m(z).reshape(-1)
    k2 = _core.ntk(m, z, x)
    pf = torch.cat([res.outputs[1], res.test_outputs[1]])
    pk = torch.cat([res.ntk[1], res.ntk_test[1]])
    return float((pf - f).norm()), float((pk - k2).norm())


@pytest.mark.parametrize("steps", [1, 3])
def test_steps_are_exact_to_the_truncation_order(deep, steps):
    """Halving η must divide the error of order p by 2^p on the outputs (the first dropped
    term of f has p derivatives) and by 2^(p-1) on K2. Measured (η 0.0125 -> 0.00625, 3 steps):
    outputs order 4 ratio 15, K2 ratio 7.4. Catches: a wrong ½ on D²f[u, u] or ⅙ on D³f (f ratio
    falls to 4 or 8), a wrong D²K2 (M) or K4 / A' (K2 ratio falls to 4 after 3 steps), a sign."""
    lo, hi = {}, {}
    for order in (2, 3, 4):
        hi[order] = _errors(deep, order, 0.0125, steps)
        lo[order] = _errors(deep, order, 0.00625, steps)
    for order in (2, 3, 4):
        rf = hi[order][0] / lo[order][0]
        assert rf > 0.75 * 2 ** order, (order, rf, hi, lo)
        if order >= 3:
            rk = hi[order][1] / lo[order][1]
            assert rk > 0.75 * 2 ** (order - 1), (order, rk, hi, lo)


def test_k3_k4_agree_with_the_continuous_path(deep):
    """The discrete path's K3, K4 (from Q, B) equal `higher_order_kernel`'s structured
    formula: any index permutation error in the assembly breaks this at O(1)."""
    model, x, xt, _y, k = deep
    z = torch.cat([x, xt])
    k3 = fw.higher_order_kernel(model, x, order=3, x_first=z, implementation="structured")
    k4 = fw.higher_order_kernel(model, x, order=4, x_first=z, implementation="structured")
    assert torch.allclose(torch.cat([k.k3, k.k3_test]), k3, rtol=1e-10, atol=1e-12)
    assert torch.allclose(torch.cat([k.k4, k.k4_test]), k4, rtol=1e-10, atol=1e-12)


def test_order2_is_the_linearized_model_under_gd(deep):
    """Order 2: r_k = (I - c K2)^k r_0 and test outputs f_0(x*) - K(x*, X) Σ_j c r_j
    (closed form of GD on the linearized model, "mean" loss: c = η/n)."""
    _model, _x, _xt, y, k = deep
    eta, steps, n = 0.7, 9, 5
    res = fw.truncated_nth(None, y=y, order=2, times=[steps], kernels=k, learning_rate=eta,
                           discrete=True)
    c = eta / n
    r = k.f0 - y
    ft = k.f0_test.clone()
    for _ in range(steps):
        ft = ft - c * k.k2_test @ r
        r = r - c * k.k2 @ r
    assert torch.allclose(res.outputs[0], r + y, atol=1e-12)
    assert torch.allclose(res.test_outputs[0], ft, atol=1e-12)


def test_small_steps_agree_with_the_continuous_hierarchy(deep):
    """At flow time T = ηk fixed, discrete and continuous predictions differ by O(η): halving η
    halves the gap (ratio in [1.6, 2.5]; an O(1) mismatch, e.g. a wrong c, gives ratio ~1)."""
    _model, _x, _xt, y, k = deep
    gaps = []
    for eta in (0.1, 0.05):
        steps = int(round(2.0 / eta))
        for order in (3, 4):
            d = fw.truncated_nth(None, y=y, order=order, times=[steps], kernels=k,
                                 learning_rate=eta, discrete=True)
            c = fw.truncated_nth(None, y=y, order=order, times=[steps], kernels=k,
                                 learning_rate=eta)
            gaps.append(float((d.outputs - c.outputs).norm()))
    for o in range(2):
        ratio = gaps[o] / gaps[o + 2]
        assert 1.6 < ratio < 2.5, gaps


@pytest.mark.slow
def test_large_steps_discrete_beats_continuous_and_improves_with_width(data16):
    """GD at η = 1.5 ("mean" loss, η λ_max/n ≈ 0.55, 12 steps), 1-hidden-layer erf nets of width
    64/256/1024, seeds 0-1: every discrete order beats every continuous order against real GD,
    and its error shrinks with width; the continuous error is dominated by the GD-vs-flow gap.
    Measured (n = 12): continuous ≈ 0.17-0.29 at every order; discrete order 4: 8e-3 / 7e-4 /
    1.3e-4."""
    x, y = data16
    x, y = x[:12], y[:12]
    errs = {}
    for width in (64, 256, 1024):
        net = wn.serial(wn.Dense(width, b_std=0.1), wn.Erf(), wn.Dense(1, b_std=0.1))
        for seed in (0, 1):
            model = net.module((4,), seed=seed, dtype=torch.float64)
            k = fw.nth_kernels(model, x, order=4, discrete=True)
            gd = fw.train(model, x, y, learning_rate=1.5, steps=12, record=("outputs",))
            for o in (2, 3, 4):
                for disc in (False, True):
                    p = fw.truncated_nth(None, y=y, order=o, times=range(13), kernels=k,
                                         learning_rate=1.5, discrete=disc)
                    e = float((p.outputs - gd.outputs[:, :, 0]).norm(dim=1).max()) / 2
                    errs[width, o, disc] = errs.get((width, o, disc), 0.0) + e
    for w in (64, 256, 1024):
        worst_discrete = max(errs[w, o, True] for o in (2, 3, 4))
        best_continuous = min(errs[w, o, False] for o in (2, 3, 4))
        assert worst_discrete < best_continuous, errs
    for o in (2, 3, 4):
        assert errs[64, o, True] > errs[256, o, True] > errs[1024, o, True], errs


def test_discrete_input_errors(deep):
    model, x, _xt, y, k = deep
    with pytest.raises(ValueError, match="truncated_nth: with discrete=True, times must be whole"):
        fw.truncated_nth(None, y=y, order=3, times=[0.5], kernels=k, discrete=True)
    kc = fw.nth_kernels(model, x, order=3)
    with pytest.raises(ValueError, match="nth_kernels\\(..., discrete=True\\)"):
        fw.truncated_nth(None, y=y, order=3, times=[1], kernels=kc, discrete=True)
    with pytest.raises(TypeError, match="truncated_nth: discrete must be a bool"):
        fw.truncated_nth(None, y=y, order=3, times=[1], kernels=k, discrete="yes")
    with pytest.raises(FloatingPointError, match="discrete hierarchy diverged"):
        fw.truncated_nth(None, y=y, order=2, times=[2000], kernels=k, learning_rate=50.0,
                         discrete=True)


def test_chunk_size_is_a_deprecated_alias(deep):
    model, x, _xt, _y, _k = deep
    with pytest.warns(FutureWarning, match="chunk_size= is deprecated since 0.2; use batch_size"):
        a = fw.higher_order_kernel(model, x, order=3, chunk_size=2)
    b = fw.higher_order_kernel(model, x, order=3, batch_size=2)
    assert torch.equal(a, b)
    with pytest.warns(FutureWarning, match="implementation='mlp' is deprecated"):
        c = fw.higher_order_kernel(model, x, order=3, implementation="mlp")
    assert torch.allclose(a, c, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="higher_order_kernel: batch_size must be a positive int"):
        fw.higher_order_kernel(model, x, order=3, batch_size=0)
