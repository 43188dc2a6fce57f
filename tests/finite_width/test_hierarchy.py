"""Neural Tangent Hierarchy: K3/K4 against finite differences, truncated dynamics against
closed forms and against real training (seed 000, eqs. 9-10, 15, 22; Thm. 2.6)."""

import copy

import pytest
import torch
from scipy.linalg import expm

import widenets as wn
from widenets.finite_width import _core

from .conftest import per_sample_grads, tanh_net

fw = wn.finite_width


def _shifted(model, direction: dict, eps: float):
    m = copy.deepcopy(model)
    p = _core.params_of(model)
    _core.load_params(m, {k: p[k] + eps * direction[k] for k in p})
    return m


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    model = tanh_net(12, depth=2).module((3,), seed=1, dtype=torch.float64)
    return model, x


def _grad_directions(model, x):
    return _core.jacobian(model, _core.params_of(model), x)


@pytest.mark.parametrize("implementation", ["hvp", "structured"])
def test_k3_is_central_difference_of_k2(small, implementation):
    """K3(a,b,c) = d/dε K2(θ + ε ∇f(x_c)) at ε=0 (seed 000 eq. 10). K2 of the shifted models
    comes from plain autograd Jacobians, independent of the HVP path. Central differences with
    h = 1e-4 have error ~h² ≈ 1e-8 relative, so 1e-6 rejects any wrong factor or index."""
    model, x = small
    k3 = fw.higher_order_kernel(model, x, order=3, implementation=implementation)
    dirs = _grad_directions(model, x)
    h = 1e-4
    fd = []
    for c in range(x.shape[0]):
        dc = {k: v[c] for k, v in dirs.items()}
        jp = per_sample_grads(_shifted(model, dc, h), x)
        jm = per_sample_grads(_shifted(model, dc, -h), x)
        fd.append((jp @ jp.T - jm @ jm.T) / (2 * h))
    fd = torch.stack(fd, dim=-1)
    rel = float((fd - k3).norm() / k3.norm())
    assert rel < 1e-6, f"K3 vs finite difference of K2: relative error {rel:.2e}"
    assert torch.equal(k3, k3.transpose(0, 1)), "K3 must be symmetric in its first two slots"


@pytest.mark.parametrize("implementation", ["hvp", "structured"])
def test_k4_is_central_difference_of_k3(small, implementation):
    """K4(a,b,c,d) = d/dε K3(θ + ε ∇f(x_d)) (seed 000 eq. 10, next level); same tolerance.
    The shifted K3 use the other implementation, so each path is checked against both."""
    model, x = small
    x = x[:4]
    other = "structured" if implementation == "hvp" else "hvp"
    k4 = fw.higher_order_kernel(model, x, order=4, implementation=implementation)
    dirs = _grad_directions(model, x)
    h = 1e-4
    fd = []
    for d in range(x.shape[0]):
        dd = {k: v[d] for k, v in dirs.items()}
        kp = fw.higher_order_kernel(_shifted(model, dd, h), x, order=3, implementation=other)
        km = fw.higher_order_kernel(_shifted(model, dd, -h), x, order=3, implementation=other)
        fd.append((kp - km) / (2 * h))
    fd = torch.stack(fd, dim=-1)
    rel = float((fd - k4).norm() / k4.norm())
    assert rel < 1e-6, f"K4 vs finite difference of K3: relative error {rel:.2e}"
    assert torch.allclose(k4, k4.transpose(0, 1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("implementation", ["hvp", "structured"])
def test_test_slot_and_chunking_agree_with_the_square_kernels(small, implementation):
    model, x = small
    xt = x[:2] + 0.3
    full3 = fw.higher_order_kernel(model, torch.cat([x, xt]), order=3,
                                   implementation=implementation)
    part3 = fw.higher_order_kernel(model, x, order=3, x_first=xt, implementation=implementation)
    assert torch.allclose(part3, full3[5:, :5, :5], rtol=1e-12, atol=1e-14)
    chunked = fw.higher_order_kernel(model, x, order=3, batch_size=2,
                                     implementation=implementation)
    assert torch.allclose(chunked, full3[:5, :5, :5], rtol=1e-12, atol=1e-14)
    part4 = fw.higher_order_kernel(model, x[:3], order=4, x_first=xt,
                                   implementation=implementation)
    full4 = fw.higher_order_kernel(model, torch.cat([x[:3], xt]), order=4,
                                   implementation=implementation)
    assert torch.allclose(part4, full4[3:, :3, :3, :3], rtol=1e-12, atol=1e-14)
    assert fw.k3_hvp_count(64) == 64 * 64


def test_order2_is_the_frozen_ntk_closed_form(small):
    """Order 2 through the ODE solver equals the matrix exponential of the frozen NTK, in both
    loss conventions (c = η/n for "mean", η for "sum"), on train and test points (eq. 22)."""
    model, x = small
    y = torch.cos(x.sum(1))
    xt = x[:2] * 0.7
    k = fw.nth_kernels(model, x, order=2, x_test=xt)
    r0 = (k.f0 - y).numpy()
    for conv, c in (("mean", 0.5 / 5), ("sum", 0.5)):
        res = fw.truncated_nth(None, y=y, order=2, times=[0.0, 3.0], kernels=k,
                               learning_rate=0.5, convention=conv)
        kk = k.k2.numpy()
        r3 = expm(-c * 3.0 * kk) @ r0
        assert torch.allclose(res.outputs[1], torch.from_numpy(r3) + y, atol=1e-9)
        # test outputs: f_t(x*) = f_0(x*) - K(x*, X) K^{-1} (r0 - r_t)
        sol = torch.linalg.solve(k.k2, torch.from_numpy(r0 - r3))
        ft = k.f0_test - k.k2_test @ sol
        assert torch.allclose(res.test_outputs[1], ft, atol=1e-8)
        assert torch.equal(res.ntk[1], k.k2)


def test_order2_matches_wn_predict(small):
    """The frozen-NTK path agrees with `wn.predict.gradient_descent_mse` (eigendecomposition,
    seed 002 eqs. 9-11): same time convention (t = GD steps), "sum" loss at η, "mean" at η/n."""
    model, x = small
    y = torch.cos(x.sum(1))
    xt = x[:2] * 0.7
    k = fw.nth_kernels(model, x, order=2, x_test=xt)
    times = torch.tensor([0.0, 0.5, 2.0, 7.0], dtype=torch.float64)
    for conv, lr in (("sum", 0.5), ("mean", 0.5 / 5)):
        res = fw.truncated_nth(None, y=y, order=2, times=times, kernels=k, learning_rate=0.5,
                               convention=conv)
        pred = wn.predict.gradient_descent_mse(k.k2, y, learning_rate=lr)
        tr, te = pred(times, k.f0, k.f0_test, k.k2_test)
        assert torch.allclose(res.outputs, tr, atol=1e-9), conv
        assert torch.allclose(res.test_outputs, te, atol=1e-9), conv


@pytest.mark.slow
def test_truncated_nth_beats_frozen_kernel_and_improves_with_width(data16):
    """Seed 000 Thm. 2.6 on n = 16, 1-hidden-layer erf nets, widths 64/256/1024, 2 seeds:
    over the horizon t in [0, 3] (convention "mean", η = 1) the order-3 hierarchy tracks real
    gradient flow better than the frozen NTK (order 2), order 4 better still, and every
    order's error shrinks with width. Errors are max_t ||f_pred(t) - f_real(t)||_2 averaged
    over the seeds; also checked on 6 test points (eq. 22): test outputs and the test-train
    NTK. Measured train-output errors: m=64: 1.2e-2 / 2.8e-3 / 3.3e-4 (orders 2/3/4),
    m=256: 2.6e-3 / 1.0e-3 / 1.9e-5, m=1024: 1.1e-3 / 2.9e-4 / 1.8e-6."""
    x, y = data16
    g = torch.Generator().manual_seed(5)
    xt = torch.randn(6, 4, generator=g, dtype=torch.float64)
    xt = xt / xt.norm(dim=1, keepdim=True) * 2.0
    times = torch.linspace(0, 3, 7)
    errs = {}
    for width in (64, 256, 1024):
        net = wn.serial(wn.Dense(width, b_std=0.1), wn.Erf(), wn.Dense(1, b_std=0.1))
        acc = {(q, o): 0.0 for q in ("train", "test", "ntk_test") for o in (2, 3, 4)}
        for seed in (0, 1):
            model = net.module((4,), seed=seed, dtype=torch.float64)
            k = fw.nth_kernels(model, x, order=4, x_test=xt)
            preds = {o: fw.truncated_nth(None, y=y, order=o, times=times, kernels=k)
                     for o in (2, 3, 4)}
            rec = fw.train(model, x, y, learning_rate=1.0, time=3.0, method="flow",
                           record_every=0.5, dt=0.1, record=("outputs", "ntk"), x_test=xt)
            for o, p in preds.items():
                acc["train", o] += float((p.outputs - rec.outputs[:, :, 0]).norm(dim=1).max()) / 2
                acc["test", o] += float((p.test_outputs - rec.test_outputs[:, :, 0])
                                        .norm(dim=1).max()) / 2
                acc["ntk_test", o] += float((p.ntk_test - rec.ntk_test).norm(dim=(1, 2)).max()) / 2
        errs[width] = acc
    table = "; ".join(f"m={w}: " + ", ".join(f"{q} p{o}={e:.2e}" for (q, o), e in a.items())
                      for w, a in errs.items())
    for a in errs.values():
        for q in ("train", "test", "ntk_test"):
            assert a[q, 3] < a[q, 2] and a[q, 4] < a[q, 3], f"order 4 < 3 < 2 fails: {table}"
    for o in (2, 3):
        assert errs[64]["train", o] > errs[256]["train", o] > errs[1024]["train", o], \
            f"errors must shrink with width: {table}"


def test_bad_inputs_are_named():
    model = wn.serial(wn.Dense(4), wn.Relu(), wn.Dense(2)).module((3,), seed=0)
    x = torch.randn(3, 3)
    with pytest.raises(ValueError, match="higher_order_kernel: the Neural Tangent Hierarchy"):
        fw.higher_order_kernel(model, x)
    with pytest.raises(ValueError, match="order must be 2, 3 or 4"):
        fw.higher_order_kernel(model, x, order=5)
    with pytest.raises(ValueError, match="implementation='structured' needs a widenets serial MLP"):
        fw.higher_order_kernel(torch.nn.Sequential(torch.nn.Linear(3, 1)), x, order=3,
                               implementation="structured")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fw.higher_order_kernel("net", x)
    one = wn.serial(wn.Dense(4), wn.Erf(), wn.Dense(1)).module((3,), seed=0)
    with pytest.raises(ValueError, match="times must be"):
        fw.truncated_nth(one, x, torch.zeros(3), times=[1.0, 0.5])
    with pytest.raises(ValueError, match="convention must be"):
        fw.truncated_nth(one, x, torch.zeros(3), times=[1.0], convention="avg")
    k = fw.nth_kernels(one, x, order=2)
    with pytest.raises(ValueError, match="computed up to order 2"):
        fw.truncated_nth(None, y=torch.zeros(3), order=3, times=[1.0], kernels=k)


@pytest.mark.slow
def test_ntk_velocity_is_order_one_over_width(data16):
    """Seed 000 Cor. 2.4: ||dK2/dt|| = ||(1/n) Σ_c K3(·,·,c) r_c|| = O(1/m) at initialization
    (1-hidden-layer erf nets, widths 64-4096, 4 seeds; measured slope ≈ -0.9). Asserted within
    0.3 of -1: a frozen (m^0) or a CLT-like m^-1/2 velocity is rejected."""
    x, y = data16

    def build(width, seed):
        net = wn.serial(wn.Dense(width, w_std=1.5, b_std=0.1), wn.Erf(),
                        wn.Dense(1, w_std=1.5, b_std=0.1))
        return net.module((4,), seed=seed, dtype=torch.float64)

    def measure(model):
        k3 = fw.higher_order_kernel(model, x, order=3)
        with torch.no_grad():
            r = model(x)[:, 0] - y
        return {"velocity": torch.einsum("abc,c->ab", k3, r).norm() / x.shape[0]}

    sw = fw.width_sweep(build, [64, 256, 1024, 4096], measure=measure, seeds=(0, 1, 2, 3))
    s = sw.slope["velocity"]
    assert abs(s + 1.0) < 0.3, f"slope {s:.3f}, CI {sw.ci['velocity']}"
