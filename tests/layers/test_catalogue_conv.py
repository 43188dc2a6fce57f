"""ConvTranspose and ConvLocal: torch's shapes, brute-force kernels with explicit loops over
position pairs, the exact kernel of the finite linear layer (its Jacobian), Monte Carlo."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import widenets as wn


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _jacobian_kernel(mod, x, y):
    """Σ_θ ∂f_0(x)(o)/∂θ ∂f_0(y)(o')/∂θ for output channel 0 of a single linear layer in the
    NTK parameterization: exactly its NNGP (= NTK) at any weights. (n1, n2, *S, *S)."""
    params = list(mod.parameters())

    def jac(z):
        out = mod(z)[:, 0]                               # (n, *S_out)
        rows = []
        for v in out.reshape(-1):
            g = torch.autograd.grad(v, params, retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
        return torch.stack(rows).reshape(*out.shape, -1), out.shape[1:]

    jx, spatial = jac(x)
    jy, _ = jac(y)
    npos = math.prod(spatial)
    k = torch.einsum("ipq,jrq->ijpr", jx.reshape(x.shape[0], npos, -1),
                     jy.reshape(y.shape[0], npos, -1))
    return k.reshape(x.shape[0], y.shape[0], *spatial, *spatial)


# ------------------------------------------------------------------ ConvTranspose
@pytest.mark.parametrize("n, k, s, p", [(5, 3, 2, 0), (4, 2, 3, 0), (6, 4, 2, 1), (3, 3, 1, 2),
                                        (5, 1, 2, 0)])
def test_conv_transpose_matches_torch_shapes_and_values(n, k, s, p):
    x = _x(2, 3, n)
    layer = wn.ConvTranspose(4, k, stride=s, padding=p, w_std=1.3, b_std=0.4)
    mod = layer.module((3, n), seed=0, dtype=torch.float64)
    ref = torch.nn.ConvTranspose1d(3, 4, k, stride=s, padding=p).double()(x)
    y = mod(x)
    assert y.shape == ref.shape
    expect = F.conv_transpose1d(x, mod.weight, stride=s, padding=p) * mod.w_scale \
        + (mod.bias * 0.4)[:, None]
    torch.testing.assert_close(y, expect, rtol=1e-14, atol=1e-14)
    # 2-D and 3-D shapes as torch's
    for dim, cls in ((2, torch.nn.ConvTranspose2d), (3, torch.nn.ConvTranspose3d)):
        shape = (2,) + (n,) * dim
        got = wn.ConvTranspose(3, k, stride=s, padding=p).module(shape)(torch.zeros(1, *shape))
        assert got.shape == cls(2, 3, k, stride=s, padding=p)(torch.zeros(1, *shape)).shape


@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR"])
def test_conv_transpose_nt_shapes(padding):
    for n, k, s in [(5, 3, 2), (4, 2, 3), (3, 4, 1), (4, 5, 2)]:
        out = wn.ConvTranspose(2, k, stride=s, padding=padding).module((1, n))(
            torch.zeros(1, 1, n)).shape[-1]
        assert out == (n * s + max(k - s, 0) if padding == "VALID" else n * s), (n, k, s)


def _brute_transpose(kin, n, k, s, p, w2, b2):
    """torch's definition y(o) = Σ_{i, d: s·i + d - p = o} W_d x(i): loops over every output
    pair, offset and input pair. kin (n1, n2, n, n) -> (n1, n2, L, L)."""
    out = (n - 1) * s + k - 2 * p
    res = torch.zeros(*kin.shape[:2], out, out, dtype=kin.dtype)
    for o, o2 in itertools.product(range(out), repeat=2):
        for d in range(k):
            for i, i2 in itertools.product(range(n), repeat=2):
                if s * i + d - p == o and s * i2 + d - p == o2:
                    res[:, :, o, o2] += kin[:, :, i, i2]
    return res * w2 / k + b2


@pytest.mark.parametrize("k, s, p", [(3, 2, 0), (2, 3, 0), (4, 2, 1), (3, 1, 1)])
def test_conv_transpose_kernel_equals_brute_force(k, s, p):
    x, y = _x(3, 2, 4), _x(2, 2, 4, seed=1)
    up = wn.serial(wn.Conv(3, 3, w_std=1.3, b_std=0.2), wn.Relu())
    kin = up.kernel(x, y, layout="full")
    w, b = 1.4, 0.3
    kout = wn.serial(up, wn.ConvTranspose(3, k, stride=s, padding=p, w_std=w, b_std=b)).kernel(
        x, y, layout="full")
    ref = _brute_transpose(kin.nngp, 4, k, s, p, w * w, b * b)
    torch.testing.assert_close(kout.nngp, ref, rtol=1e-13, atol=1e-13)
    # NTK parameterization: Θ' = K' + σw²/|D| Σ Θ
    ref_ntk = ref + _brute_transpose(kin.ntk, 4, k, s, p, w * w, 0.0)
    torch.testing.assert_close(kout.ntk, ref_ntk, rtol=1e-13, atol=1e-13)
    # the diagonal layout is the diagonal of the full one
    kd = wn.serial(up, wn.ConvTranspose(3, k, stride=s, padding=p, w_std=w, b_std=b)).kernel(
        x, y, layout="diagonal")
    torch.testing.assert_close(kd.nngp, kout.nngp.diagonal(dim1=2, dim2=3), rtol=1e-14,
                               atol=1e-15)


@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR", 1])
@pytest.mark.parametrize("dims", [1, 2])
def test_conv_transpose_kernel_equals_finite_linear_layer(padding, dims):
    """A single linear layer's NNGP is its weight-gradient Gram at any weights: the kernel of
    the raw input map equals the finite module's Jacobian Gram exactly (geometry included)."""
    shape = (2, 4) if dims == 1 else (2, 3, 4)
    ks, st = (3, 2) if dims == 1 else ((3, 2), (2, 3))
    layer = wn.ConvTranspose(3, ks, stride=st, padding=padding, w_std=1.2, b_std=0.5)
    x, y = _x(2, *shape), _x(2, *shape, seed=1)
    ref = _jacobian_kernel(layer.module(shape, seed=0, dtype=torch.float64), x, y)
    k = layer.kernel(x, y, layout="full")
    torch.testing.assert_close(k.nngp, ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(k.ntk, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.slow
def test_conv_transpose_monte_carlo(mc_check):
    x = _x(4, 2, 4)

    def make(c, o):
        return wn.serial(wn.Conv(c, 3, w_std=1.4, b_std=0.1), wn.Relu(),
                         wn.ConvTranspose(c, 3, stride=2, padding="SAME", w_std=1.3, b_std=0.2),
                         wn.Relu(), wn.Flatten(), wn.Dense(o, w_std=1.1, b_std=0.1))
    mc_check(make, x, (2, 4))


@pytest.mark.slow
def test_conv_transpose_2d_standard_monte_carlo(mc_check):
    x = _x(4, 2, 3, 3)

    def make(c, o):
        return wn.serial(
            wn.ConvTranspose(c, 2, stride=2, padding="VALID", w_std=1.3, b_std=0.2,
                             parameterization="standard"), wn.Erf(),
            wn.ConvTranspose(c, 3, padding="CIRCULAR", w_std=1.2, parameterization="standard"),
            wn.Relu(), wn.GlobalAvgPool(), wn.Dense(o, parameterization="standard"))
    mc_check(make, x, (2, 3, 3))


def test_conv_transpose_errors():
    with pytest.raises(ValueError, match=r"^ConvTranspose: stride must be an int >= 1"):
        wn.ConvTranspose(3, 2, stride=0)
    with pytest.raises(ValueError, match=r"^ConvTranspose: out_channels must be a positive int"):
        wn.ConvTranspose(0, 2)
    with pytest.raises(ValueError, match=r"^ConvTranspose.kernel: padding 3 on spatial axis 0"):
        wn.ConvTranspose(3, 2, padding=3).kernel(_x(2, 1, 2))
    with pytest.raises(ValueError, match=r"^ConvTranspose.kernel: input must be channels-first"):
        wn.ConvTranspose(3, 2).kernel(_x(2, 4))


# ------------------------------------------------------------------ ConvLocal
@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
def test_conv_local_kernel_brute_force(padding):
    x, y = _x(3, 2, 5), _x(2, 2, 5, seed=1)
    up = wn.serial(wn.Conv(3, 3, w_std=1.3, b_std=0.2), wn.Relu())
    kin = up.kernel(x, y, layout="full")
    w, b, k, s = 1.2, 0.4, 3, 2
    net = wn.serial(up, wn.ConvLocal(3, k, stride=s, padding=padding, w_std=w, b_std=b))
    kout = net.kernel(x, y, layout="full")
    n = 5
    out = (n - k) // s + 1 if padding == "VALID" else -(-n // s)
    left = 0 if padding == "VALID" else max((out - 1) * s + k - n, 0) // 2
    for name, extra in (("nngp", b * b), ("ntk", None)):
        t = getattr(kin, name)
        ref = torch.zeros(3, 2, out, out, dtype=torch.float64)
        for o, o2 in itertools.product(range(out), repeat=2):
            if o != o2:
                continue                          # unshared weights: zero between positions
            acc = torch.zeros(3, 2, dtype=torch.float64)
            for d in range(k):
                i = s * o + d - left
                if padding == "CIRCULAR":
                    i %= n
                elif not 0 <= i < n:
                    continue
                acc += t[:, :, i, i]
            ref[:, :, o, o] = acc * w * w / k
        if name == "nngp":
            ref += torch.eye(out, dtype=torch.float64) * extra
            k_nngp = ref
        else:                                    # Θ' = K' + σw²/|D| Σ Θ
            ref = ref + k_nngp
        torch.testing.assert_close(getattr(kout, name), ref, rtol=1e-13, atol=1e-14)
    # on the diagonal: the shared-weight conv's kernel
    shared = wn.serial(up, wn.Conv(3, k, stride=s, padding=padding, w_std=w, b_std=b)).kernel(
        x, y, layout="diagonal")
    local = net.kernel(x, y, layout="diagonal")
    torch.testing.assert_close(local.ntk, shared.ntk, rtol=0, atol=0)


@pytest.mark.parametrize("dims", [1, 2])
def test_conv_local_module_is_locally_connected(dims):
    shape = (2, 5) if dims == 1 else (2, 4, 3)
    layer = wn.ConvLocal(3, 2, stride=1, padding="SAME", w_std=1.3, b_std=0.2)
    x, y = _x(2, *shape), _x(3, *shape, seed=1)
    mod = layer.module(shape, seed=0, dtype=torch.float64)
    n_pos = math.prod(shape[1:])
    assert mod.weight.shape == (n_pos, 3, 2 * 2 ** dims) and mod.bias.shape == (3, *shape[1:])
    ref = _jacobian_kernel(mod, x, y)
    k = layer.kernel(x, y, layout="full")
    torch.testing.assert_close(k.nngp, ref, rtol=1e-12, atol=1e-13)
    # with all position filters equal, it is the shared-weight Conv (same weight layout)
    conv = wn.Conv(3, 2, padding="SAME", w_std=1.3, b_std=0.2).module(shape, seed=0,
                                                                      dtype=torch.float64)
    with torch.no_grad():
        mod.weight.copy_(conv.weight.reshape(1, 3, -1).expand_as(mod.weight))
        mod.bias.copy_(conv.bias.reshape(3, *([1] * dims)).expand_as(mod.bias))
    torch.testing.assert_close(mod(x), conv(x), rtol=1e-13, atol=1e-13)


@pytest.mark.slow
def test_conv_local_monte_carlo(mc_check):
    x = _x(4, 2, 5)

    def make(c, o):
        return wn.serial(wn.ConvLocal(c, 3, padding="SAME", w_std=1.4, b_std=0.2), wn.Relu(),
                         wn.ConvLocal(c, 2, w_std=1.2, b_std=0.1), wn.Erf(),
                         wn.AvgPool(2, stride=1), wn.Flatten(), wn.Dense(o))
    mc_check(make, x, (2, 5))
