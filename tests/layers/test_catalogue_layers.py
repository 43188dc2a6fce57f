"""SumPool, GlobalSumPool, FanInProd, Dropout and repeat: brute-force references (explicit
loops over position pairs), Monte Carlo over their finite modules, and their errors."""

import itertools
import math

import pytest
import torch

import widenets as wn
from tests.conftest import rel_err


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ pooling, brute force
def _same_left(n, w, s):
    """TensorFlow's SAME rule (NT's convention): out = ceil(n/s), left = total // 2."""
    out = -(-n // s)
    return max((out - 1) * s + w - n, 0) // 2, out


def _brute_sum_pool(kin, spatial, window, stride, padding):
    """K'(o, o') = Σ_{d, d'} K(s·o + d - l, s·o' + d' - l), loops over every output pair,
    every window offset pair; zero outside the input (wrapped for CIRCULAR). kin is a full
    layout tensor (n1, n2, *S, *S); 1-D and 2-D."""
    r = len(spatial)
    geo = []
    for n, w, s in zip(spatial, window, stride):
        if padding == "VALID":
            geo.append((0, (n - w) // s + 1))
        else:
            geo.append(_same_left(n, w, s))
    outs = [o for _, o in geo]
    n1, n2 = kin.shape[:2]
    res = torch.zeros(n1, n2, *outs, *outs, dtype=kin.dtype)
    for o in itertools.product(*[range(v) for v in outs]):
        for o2 in itertools.product(*[range(v) for v in outs]):
            acc = torch.zeros(n1, n2, dtype=kin.dtype)
            for d in itertools.product(*[range(w) for w in window]):
                for d2 in itertools.product(*[range(w) for w in window]):
                    p = [st * oo + dd - g[0] for st, oo, dd, g in zip(stride, o, d, geo)]
                    p2 = [st * oo + dd - g[0] for st, oo, dd, g in zip(stride, o2, d2, geo)]
                    if padding == "CIRCULAR":
                        p = [v % n for v, n in zip(p, spatial)]
                        p2 = [v % n for v, n in zip(p2, spatial)]
                    elif not all(0 <= v < n for v, n in zip(p + p2, spatial + spatial)):
                        continue
                    acc += kin[(slice(None), slice(None), *p, *p2)]
            res[(slice(None), slice(None), *o, *o2)] = acc
    assert r in (1, 2)
    return res


@pytest.mark.parametrize("shape, window, stride, padding", [
    ((3, 5), (2,), (2,), "VALID"), ((3, 5), (3,), (2,), "SAME"), ((3, 6), (2,), (1,), "CIRCULAR"),
    ((2, 3, 4), (2, 3), (1, 2), "SAME"), ((2, 4, 3), (2, 2), (2, 1), "VALID"),
])
def test_sum_pool_equals_brute_force(shape, window, stride, padding):
    x, y = _x(3, *shape), _x(2, *shape, seed=1)
    up = wn.serial(wn.Conv(4, 2, w_std=1.3, b_std=0.2), wn.Relu())
    kin = up.kernel(x, y, layout="full")
    pool = wn.SumPool(window, stride=stride, padding=padding)
    k = wn.serial(up, pool).kernel(x, y, layout="full")
    spatial = tuple(shape[1:])
    for name in ("nngp", "ntk"):
        ref = _brute_sum_pool(getattr(kin, name), spatial, window, stride, padding)
        torch.testing.assert_close(getattr(k, name), ref, rtol=1e-13, atol=1e-13)
    # AvgPool is the same map divided by |W|² (catches a missing/extra division)
    ka = wn.serial(up, wn.AvgPool(window, stride=stride, padding=padding)).kernel(
        x, y, layout="full")
    torch.testing.assert_close(ka.nngp * math.prod(window) ** 2, k.nngp, rtol=1e-13, atol=0)
    # the finite module sums windows (x1, no weights: its own output)
    mod = pool.module(shape)
    avg = wn.AvgPool(window, stride=stride, padding=padding).module(shape)
    torch.testing.assert_close(mod(x), avg(x) * math.prod(window), rtol=1e-6, atol=1e-6)


def test_global_sum_pool_brute_force_and_module():
    x, y = _x(3, 2, 3, 4), _x(2, 2, 3, 4, seed=1)
    up = wn.serial(wn.Conv(4, 3, w_std=1.2, b_std=0.3), wn.Erf())
    kin = up.kernel(x, y, layout="full")
    k = wn.serial(up, wn.GlobalSumPool()).kernel(x, y)
    for name in ("nngp", "ntk"):
        t = getattr(kin, name)
        ref = torch.zeros(3, 2, dtype=torch.float64)
        for p in itertools.product(range(3), range(4)):
            for q in itertools.product(range(3), range(4)):
                ref += t[:, :, p[0], p[1], q[0], q[1]]
        torch.testing.assert_close(getattr(k, name), ref, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(wn.GlobalSumPool().module((2, 3, 4))(x), x.sum(dim=(2, 3)))


@pytest.mark.slow
def test_sum_pool_monte_carlo(mc_check):
    x = _x(4, 2, 5, 5)

    def make(c, o):
        return wn.serial(wn.Conv(c, 3, w_std=1.5, b_std=0.1), wn.Relu(),
                         wn.SumPool(2, stride=1, padding="SAME"),
                         wn.Conv(c, 2, padding="VALID", w_std=0.6), wn.Relu(),
                         wn.GlobalSumPool(), wn.Dense(o, w_std=0.3, b_std=0.1))
    mc_check(make, x, (2, 5, 5))


# ------------------------------------------------------------------ FanInProd
def _prod_net(width, out):
    return wn.serial(wn.Dense(width, w_std=1.3, b_std=0.3), wn.Relu(), wn.FanOut(2),
                     wn.parallel(wn.Dense(width, w_std=1.2, b_std=0.2),
                                 wn.serial(wn.Dense(width, w_std=0.9, b_std=0.4), wn.Erf())),
                     wn.FanInProd(), wn.Dense(out, w_std=1.1, b_std=0.1))


@pytest.mark.slow
def test_fan_in_prod_monte_carlo(x_small):
    """Width 512. NNGP: 64 nets x 128 readout units (products of Gaussians are heavy-tailed:
    measured 2.6-5.1% over seeds, tolerance 8%), NTK: 16 nets (1.3%, tolerance 6%). A kernel
    that adds instead of multiplies, or drops one product-rule term of the NTK, is off by
    > 20%."""
    exact = _prod_net(512, 128).kernel(x_small)
    mc = wn.monte_carlo_kernel(_prod_net(512, 128), x_small, n_samples=64,
                               get="nngp")
    assert rel_err(mc, exact.nngp) < 0.08
    ex = _prod_net(512, 1).kernel(x_small, get="ntk")
    mct = wn.monte_carlo_kernel(_prod_net(512, 1), x_small, n_samples=16,
                                get="ntk")
    assert rel_err(mct, ex) < 0.06


def test_fan_in_prod_product_rule_and_refusals():
    x = _x(4, 3)
    a, b = wn.Dense(5, w_std=1.3, b_std=0.2), wn.Dense(5, w_std=0.7, b_std=0.5)
    k = wn.serial(wn.FanOut(2), wn.parallel(a, b), wn.FanInProd()).kernel(x)
    ka, kb = a.kernel(x), b.kernel(x)
    torch.testing.assert_close(k.nngp, ka.nngp * kb.nngp, rtol=1e-14, atol=0)
    torch.testing.assert_close(k.ntk, ka.ntk * kb.nngp + kb.ntk * ka.nngp, rtol=1e-14, atol=0)
    assert not k.is_gaussian
    # correlated branches: two Identity branches of one Dense, or two raw-input branches
    with pytest.raises(ValueError, match="FanInProd.kernel: two branches come from the same"):
        wn.serial(wn.Dense(5), wn.FanOut(2), wn.parallel(wn.Identity(), wn.Identity()),
                  wn.FanInProd()).kernel(x)
    with pytest.raises(ValueError, match="FanInProd.kernel: at most one branch may be non-Gau"):
        wn.serial(wn.FanOut(2), wn.FanInProd()).kernel(x)
    with pytest.raises(ValueError, match="FanInProd.module: branch shapes must be equal"):
        wn.serial(wn.FanOut(2), wn.parallel(wn.Dense(2), wn.Dense(3)), wn.FanInProd()).module(3)
    # finite module: the product of the branch outputs
    net = wn.serial(wn.FanOut(2), wn.parallel(a, b), wn.FanInProd())
    m = net.module((3,), seed=0, dtype=torch.float64)
    torch.testing.assert_close(m(x), m[1].branches[0](x) * m[1].branches[1](x))


# ------------------------------------------------------------------ Dropout
def _mc_dropout(net, x, in_shape, n_nets, *, ntk: bool, seed=0):
    """Monte Carlo over finite networks in training mode, one forward pass per network with
    one mask per row of x; the NTK from the autograd Jacobian of that same pass (readout 1)."""
    n = x.shape[0]
    acc = torch.zeros(n, n, dtype=torch.float64)
    for s in range(n_nets):
        mod = net.module(in_shape, seed=seed + s, dtype=torch.float64)
        torch.manual_seed(1000 + seed + s)           # the dropout masks
        out = mod(x)                                  # (n, out)
        if not ntk:
            acc += (out @ out.T).detach() / out.shape[1]
            continue
        params = [p for p in mod.parameters() if p.requires_grad]
        jac = []
        for i in range(n):
            g = torch.autograd.grad(out[i, 0], params, retain_graph=True)
            jac.append(torch.cat([t.reshape(-1) for t in g]))
        jac = torch.stack(jac)
        acc += jac @ jac.T
    return acc / n_nets


@pytest.mark.slow
@pytest.mark.parametrize("spatial", [False, True])
def test_dropout_monte_carlo(spatial, x_small):
    """Training-mode networks, an independent mask per input and unit. Masks make the hidden
    layers' empirical kernels fluctuate a lot (relative std ~13% per width-512 net for
    p = 0.4), so many nets: NNGP 128 nets x 64 readout units, NTK 48 nets; measured errors
    1-3%, tolerance 7%. Without the 1/(1-p) gain the diagonal is off by 1/(1-p) = 1.67 and the
    error is > 35%; a gain on every entry fails as well."""
    if spatial:
        x = _x(6, 2, 5)

        def net(out):
            return wn.serial(wn.Conv(128, 3, w_std=1.3, b_std=0.2), wn.Relu(), wn.Dropout(0.4),
                             wn.Conv(128, 3, w_std=1.2, b_std=0.3), wn.Relu(), wn.Flatten(),
                             wn.Dense(out, w_std=1.1, b_std=0.2))
        shape = (2, 5)
    else:
        x = x_small

        def net(out):
            return wn.serial(wn.Dense(512, w_std=1.3, b_std=0.2), wn.Relu(), wn.Dropout(0.4),
                             wn.Dense(512, w_std=1.2, b_std=0.3), wn.Relu(),
                             wn.Dense(out, w_std=1.1, b_std=0.2))
        shape = (8,)
    mc_nngp = _mc_dropout(net(64), x, shape, 128, ntk=False)
    assert rel_err(mc_nngp, net(64).kernel(x, get="nngp")) < 0.07
    mc_ntk = _mc_dropout(net(1), x, shape, 48, ntk=True, seed=500)
    assert rel_err(mc_ntk, net(1).kernel(x, get="ntk")) < 0.07


@pytest.mark.parametrize("layout", ["flat", "diagonal", "full"])
def test_dropout_gain_on_self_pairs_only(layout):
    p = 0.3
    if layout == "flat":
        x = _x(5, 4)
        up = wn.serial(wn.Dense(3, w_std=1.2, b_std=0.1), wn.Relu(), wn.Dense(3))
    else:
        x = _x(5, 2, 4)
        up = wn.serial(wn.Conv(3, 3, w_std=1.2, b_std=0.1), wn.Relu(), wn.Conv(3, 2))
    kw = {} if layout == "flat" else {"layout": layout}
    k0 = up.kernel(x, **kw)
    k = wn.serial(up, wn.Dropout(p)).kernel(x, **kw)
    g = torch.ones_like(k0.nngp)
    n = x.shape[0]
    for i in range(n):
        if layout == "full":
            for q in range(k0.nngp.shape[2]):
                g[i, i, q, q] = 1 / (1 - p)
        else:
            g[i, i] = 1 / (1 - p)
    for name in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(k, name), getattr(k0, name) * g, rtol=1e-15, atol=0)
    # x2 given: distinct inputs, nothing changes
    k12 = wn.serial(up, wn.Dropout(p)).kernel(x, x[:2] + 0.1, **kw)
    torch.testing.assert_close(k12.nngp, up.kernel(x, x[:2] + 0.1, **kw).nngp, rtol=0, atol=0)
    # row blocks give the same diagonal
    if layout == "flat":
        net = wn.serial(up, wn.Dropout(p))
        net.block_entries = 5
        torch.testing.assert_close(net.kernel(x).ntk, k.ntk, rtol=1e-15, atol=0)


def test_dropout_errors_and_module():
    for p in (-0.1, 1.0, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match=r"^Dropout: p must be a drop probability in"):
            wn.Dropout(p)
    with pytest.raises(ValueError, match=r"Relu.kernel: input must be Gaussian"):
        wn.serial(wn.Dense(3), wn.Dropout(0.2), wn.Relu()).kernel(_x(2, 3))
    mod = wn.serial(wn.Dense(3), wn.Dropout(0.5)).module((3,), seed=0)
    assert isinstance(mod[1], torch.nn.Dropout) and mod[1].p == 0.5 and mod.training


# ------------------------------------------------------------------ repeat
def test_repeat_equals_serial_and_has_one_layer_object():
    block = wn.serial(wn.Dense(6, w_std=1.4, b_std=0.2), wn.Erf())
    x, y = _x(4, 6), _x(3, 6, seed=1)
    a = wn.repeat(block, 5).kernel(x, y)
    b = wn.serial(*[block] * 5).kernel(x, y)
    assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)
    ordered = wn.serial(wn.Dense(6, w_std=1.0, b_std=0.1), wn.Erf())   # Θ stays bounded
    deep = wn.repeat(ordered, 500)
    assert len(list(deep.walk())) == 4              # repeat, serial, Dense, Erf: not 500 copies
    assert torch.isfinite(deep.kernel(x, get="ntk")).all()
    mod = wn.repeat(block, 3).module((6,), seed=0)
    assert sum(p.numel() for p in mod.parameters()) == 3 * (36 + 6)
    w = [m[0].weight for m in mod]                   # independent copies
    assert not torch.equal(w[0], w[1])
    with pytest.raises(ValueError, match=r"^repeat.module: the layer must keep its input shape"):
        wn.repeat(wn.Dense(4), 2).module((3,))
    with pytest.raises(ValueError, match=r"^repeat: n must be a positive int"):
        wn.repeat(block, 0)
    with pytest.raises(TypeError, match=r"^repeat: layer must be a widenets layer"):
        wn.repeat(torch.nn.ReLU(), 2)


def test_repeat_spatial_layout_and_pooling():
    block = wn.serial(wn.Conv(3, 3, w_std=1.3, b_std=0.1), wn.Relu())
    x = _x(3, 2, 5)
    a = wn.serial(wn.repeat(block, 3), wn.GlobalAvgPool(), wn.Dense(1)).kernel(x)
    b = wn.serial(block, block, block, wn.GlobalAvgPool(), wn.Dense(1)).kernel(x)
    assert torch.equal(a.ntk, b.ntk)
    c = wn.serial(wn.repeat(block, 3), wn.Flatten(), wn.Dense(1)).kernel(x)
    d = wn.serial(block, block, block, wn.Flatten(), wn.Dense(1)).kernel(x, layout="full")
    torch.testing.assert_close(c.ntk, d.ntk, rtol=1e-13, atol=0)
