"""CUDA tensors through every family of public computations, against the CPU results.

Skipped without a GPU (CI has none); run on a CUDA machine with
`python -m pytest tests/test_cuda.py tests/empirical/test_ntk_zoo.py -k cuda`.
The CPU results are themselves checked against independent references elsewhere (Monte Carlo,
closed forms, autograd); here the reference is the same public call on CPU tensors, in float64,
and the tolerance (1e-9 relative unless said otherwise) fails on any wrong factor, a wrong
branch taken on the GPU (e.g. a CPU-only engine's result silently replaced by another formula)
or a result computed in float32 by mistake (errors ~1e-7). Each test also checks that the result
stays on the GPU (no silent transfer to the CPU and back).
"""

from __future__ import annotations

import pytest
import torch

import widenets as wn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DEV = torch.device("cuda")
TOL = 1e-9


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _x(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _conv(**kw):
    return wn.Conv(4, 3, padding="SAME", w_std=1.4, b_std=0.1, **kw)


# networks for net.kernel: name -> (net, x1, x2)
NETS = {
    "relu_mlp": (wn.serial(wn.Dense(64, w_std=1.5, b_std=0.1), wn.Relu(),
                           wn.Dense(64, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(1)),
                 (7, 5), (4, 5)),
    "erf_gelu": (wn.serial(wn.Dense(16), wn.Erf(), wn.Dense(16), wn.Gelu(), wn.Dense(1)),
                 (6, 3), (5, 3)),
    "elementwise_softplus": (wn.serial(wn.Dense(16), wn.Elementwise(torch.nn.functional.softplus),
                                       wn.Dense(1)), (6, 3), (3, 3)),
    "catalogue": (wn.serial(wn.Dense(8), wn.Sin(), wn.Dense(8), wn.Rbf(), wn.Dense(8),
                            wn.Monomial(2), wn.Dense(1)), (5, 3), (4, 3)),
    "conv_gap": (wn.serial(_conv(), wn.Relu(), _conv(), wn.Relu(), wn.GlobalAvgPool(),
                           wn.Dense(1)), (5, 1, 6, 6), (3, 1, 6, 6)),
    "conv_flatten": (wn.serial(_conv(), wn.Relu(), wn.Flatten(), wn.Dense(1)),
                     (5, 2, 5, 5), (4, 2, 5, 5)),
    "conv_pool_layernorm": (wn.serial(_conv(), wn.Relu(), wn.AvgPool(2), _conv(),
                                      wn.LayerNorm(), wn.Erf(), wn.GlobalAvgPool(), wn.Dense(1)),
                            (4, 2, 6, 6), (3, 2, 6, 6)),
    "residual": (wn.serial(wn.Dense(16), wn.FanOut(2),
                           wn.parallel(wn.serial(wn.Relu(), wn.Dense(16)), wn.Identity()),
                           wn.FanInSum(), wn.Relu(), wn.Dense(1)), (6, 4), (3, 4)),
    "attention": (wn.serial(wn.Conv(16, 1), wn.GlobalSelfAttention(16, 16, 16, 2), wn.Relu(),
                            wn.GlobalAvgPool(), wn.Dense(1)), (4, 3, 5), (3, 3, 5)),
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("x2_given", [False, True])
def test_analytic_kernels_on_cuda_match_cpu(name, x2_given):
    net, s1, s2 = NETS[name]
    x1, x2 = _x(s1, 1), (_x(s2, 2) if x2_given else None)
    want = net.kernel(x1, x2)
    got = net.kernel(x1.to(DEV), None if x2 is None else x2.to(DEV))
    for field in ("nngp", "ntk"):
        g, w = getattr(got, field), getattr(want, field)
        assert g.device.type == "cuda" and g.dtype == torch.float64
        assert rel(g, w) < TOL, (name, field)


def test_analytic_float32_on_cuda():
    """float32 on the GPU agrees with float64 on the CPU to float32 rounding (1e-5; a wrong
    term is O(1))."""
    net, s1, _ = NETS["conv_gap"]
    x = _x(s1, 3)
    want = net.kernel(x)
    got = net.kernel(x.float().to(DEV), dtype=torch.float32)
    assert got.ntk.dtype == torch.float32 and got.ntk.device.type == "cuda"
    assert rel(got.ntk, want.ntk) < 1e-5


def test_large_fc_kernel_on_cuda_is_not_sent_to_the_cpu_engine():
    """A kernel above the native engine's size threshold stays on the GPU and agrees with the
    CPU's (native) result to rounding (1e-9: the two engines agree to rounding, not bitwise)."""
    net = NETS["relu_mlp"][0]
    x = _x((1100, 5), 4)        # 1100^2 > 2^20 entries
    want = net.kernel(x)
    got = net.kernel(x.to(DEV))
    assert got.ntk.device.type == "cuda"
    assert rel(got.ntk, want.ntk) < TOL
    assert torch.equal(got.ntk, got.ntk.T)


def test_finite_network_module_on_cuda():
    """net.module builds a torch module that runs on the GPU and gives the CPU's outputs."""
    net = NETS["conv_gap"][0]
    model = net.module((1, 6, 6), seed=0, dtype=torch.float64)
    x = _x((3, 1, 6, 6), 5)
    want = model(x)
    got = model.to(DEV)(x.to(DEV))
    assert got.device.type == "cuda" and rel(got, want) < 1e-12


def test_predictions_on_cuda_match_cpu():
    """Closed-form MSE training, the GP posterior, the infinite ensemble, the CG solver (with and
    without a preconditioner), Lanczos dynamics and the ODE predictor on GPU kernels."""
    net = NETS["relu_mlp"][0]
    xtr, xte, ytr = _x((8, 5), 6), _x((3, 5), 7), _x((8, 2), 8)
    k = net.kernel(torch.cat([xtr, xte]))
    ntk, nngp = k.ntk, k.nngp
    results = []
    for dev in ("cpu", DEV):
        kt = ntk[:8, :8].to(dev)
        kx = ntk[8:, :8].to(dev)
        pred = wn.predict.gradient_descent_mse(kt, ytr.to(dev), diag_reg=1e-6)
        out = list(pred(torch.tensor([0.5, 10.0], dtype=torch.float64), k_test_train=kx))
        gp = wn.predict.gp_inference(nngp[:8, :8].to(dev), ytr.to(dev), nngp[8:, :8].to(dev),
                                     nngp[8:, 8:].to(dev), kernel="nngp", diag_reg=1e-6)
        out += [gp.mean, gp.covariance]
        ens = wn.predict.gradient_descent_mse_ensemble(net, xtr.to(dev), ytr.to(dev),
                                                       diag_reg=1e-6)
        mean, cov = ens(2.0, xte.to(dev), kernel="ntk", compute_cov=True)
        out += [mean, cov]
        sol = wn.predict.solve(nngp[:8, :8].to(dev), ytr.to(dev), diag_reg=1e-3, method="cg",
                               preconditioner=None, tol=1e-12)
        out.append(sol.alpha)
        sol = wn.predict.solve(nngp[:8, :8].to(dev), ytr.to(dev), diag_reg=1e-3, method="cg",
                               preconditioner="pivoted_cholesky", rank=3, tol=1e-12)
        out.append(sol.alpha)
        kry = wn.predict.krylov_dynamics(kt, ytr.to(dev), torch.tensor([0.5, 3.0]),
                                         diag_reg=1e-3, tol=1e-10)
        out += [kry.decay, kry.gain]
        ode = wn.predict.gradient_descent(wn.predict.mse_loss, kt, ytr.to(dev))
        out += list(ode(torch.tensor([0.5, 2.0], dtype=torch.float64), k_test_train=kx))
        results.append(out)
    for i, (a, b) in enumerate(zip(*results)):
        assert b.device.type == "cuda", i
        assert rel(b, a) < 1e-8, i     # solves of conditioned systems: 1e-8 relative


def test_empirical_ntk_of_a_finite_network_on_cuda():
    """The empirical NTK of the module a widenets network builds, every implementation."""
    net = NETS["conv_gap"][0]
    model = net.module((1, 6, 6), seed=1, dtype=torch.float64)
    x = _x((4, 1, 6, 6), 9)
    want = wn.empirical_ntk(model, x, implementation="jacobian")
    model = model.to(DEV)
    for impl in ("structured", "jacobian", "ntvp", "auto"):
        got = wn.empirical_ntk(model, x.to(DEV), implementation=impl)
        assert got.device.type == "cuda"
        assert rel(got, want) < TOL, impl


def test_higher_order_kernel_on_cuda():
    net = wn.serial(wn.Dense(32), wn.Erf(), wn.Dense(1))
    model = net.module((3,), seed=2, dtype=torch.float64)
    x = _x((4, 3), 10)
    want = wn.finite_width.higher_order_kernel(model, x, order=3)
    got = wn.finite_width.higher_order_kernel(model.to(DEV), x.to(DEV), order=3)
    assert got.device.type == "cuda" and rel(got, want) < TOL


def test_lift_on_cuda():
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    lifted = wn.lift(model, (3,))
    x = _x((5, 3), 11)
    want = lifted.kernel(x)
    got = lifted.kernel(x.to(DEV))
    assert got.ntk.device.type == "cuda" and rel(got.ntk, want.ntk) < TOL


@pytest.mark.parametrize("name", ["erf_gelu", "conv_gap"])
def test_fused_engine_on_cuda_equals_eager(name):
    """The torch.compile units (Triton on CUDA) against the eager engine on the GPU: rounding
    only (1e-13 of the largest entry; a wrong coefficient in a fused formula moves entries by
    > 1e-2), the same exact diagonal and symmetry."""
    net, s1, _ = NETS[name]
    x = _x(s1, 12).to(DEV)
    previous = wn.set_engine("eager")
    try:
        a = net.kernel(x)
        wn.set_engine("fused")
        b = net.kernel(x)
    finally:
        wn.set_engine(previous)
    for f in ("nngp", "ntk"):
        ta, tb = getattr(a, f), getattr(b, f)
        assert tb.device.type == "cuda"
        assert float((ta - tb).abs().max() / ta.abs().max()) < 1e-13, f
    assert torch.equal(b.ntk, b.ntk.transpose(0, 1))
