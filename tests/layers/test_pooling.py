"""AvgPool, GlobalAvgPool, Flatten; the layouts (diagonal vs full) and blocked computation."""

import pytest
import torch

import widenets as wn
import widenets._memory as memory
from widenets.layers import _blocks


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.slow
def test_avgpool_same_and_valid_mc(mc_check):
    x = _x(4, 2, 5, 5)

    def make(c, o):
        return wn.serial(wn.Conv(c, 3, w_std=1.5, b_std=0.1), wn.Relu(),
                         wn.AvgPool(2, stride=1, padding="SAME"),
                         wn.Conv(c, 2, padding="VALID", w_std=1.3), wn.Relu(),
                         wn.AvgPool(2), wn.Flatten(), wn.Dense(o, w_std=1.1, b_std=0.1))
    mc_check(make, x, (2, 5, 5))


@pytest.mark.slow
def test_residual_conv_block_mc(mc_check):
    x = _x(4, 2, 4, 4)

    def make(c, o):
        block = wn.serial(wn.Relu(), wn.Conv(c, 3, w_std=1.2, b_std=0.1))
        return wn.serial(wn.Conv(c, 3, w_std=1.4, b_std=0.1),
                         wn.FanOut(2), wn.parallel(block, wn.Identity()), wn.FanInSum(),
                         wn.Relu(), wn.GlobalAvgPool(), wn.Dense(o))
    mc_check(make, x, (2, 4, 4))


def test_pooling_exact_on_linear_net():
    """Without nonlinearity every map is linear in the input kernel: compare with the
    kernel of the explicit linear operator (finite module with identity-like weights)."""
    x = _x(3, 1, 6)
    pool = wn.AvgPool(3, stride=2, padding="SAME")
    k = wn.serial(pool, wn.Flatten()).kernel(x, layout="full")
    y = pool.module((1, 6))(x)                     # (3, 1, 3): one channel, no weights
    ref = y.flatten(1) @ y.flatten(1).T / y[0].numel()
    torch.testing.assert_close(k.nngp, ref, rtol=1e-12, atol=1e-14)
    g = wn.GlobalAvgPool().kernel(x).nngp
    m = x.mean(dim=(1, 2))
    torch.testing.assert_close(g, m[:, None] * m[None, :], rtol=1e-12, atol=1e-14)


def _net_no_readout():
    return wn.serial(wn.Conv(4, 3, w_std=1.3, b_std=0.1), wn.Relu(),
                     wn.Conv(4, (2, 3), stride=(2, 1), padding="CIRCULAR", w_std=1.2), wn.Erf(),
                     wn.Conv(4, 3, padding="VALID", b_std=0.2), wn.Gelu())


@pytest.mark.parametrize("two_sets", [False, True])
def test_diagonal_layout_is_diagonal_of_full_layout(two_sets):
    x, y = _x(3, 2, 8, 5), (_x(2, 2, 8, 5, seed=1) if two_sets else None)
    net = _net_no_readout()
    kd = net.kernel(x, y, layout="diagonal")
    kf = net.kernel(x, y, layout="full")
    assert kd.diagonal_spatial and not kf.diagonal_spatial
    assert kf.nngp.shape[2:] == (2, 3, 2, 3) and kd.nngp.shape[2:] == (2, 3)
    for name in ("nngp", "ntk"):
        diag = getattr(kf, name).diagonal(dim1=2, dim2=4).diagonal(dim1=2, dim2=3)
        assert torch.equal(diag, getattr(kd, name)), name
    # auto: a Flatten readout runs on the diagonal, and gives the same numbers
    flat = wn.serial(net, wn.Flatten(), wn.Dense(1))
    ka, kff = flat.kernel(x, y), flat.kernel(x, y, layout="full")
    torch.testing.assert_close(ka.ntk, kff.ntk, rtol=1e-14, atol=0)


@pytest.mark.parametrize("two_sets", [False, True])
def test_blocked_equals_unblocked(two_sets):
    x, y = _x(5, 1, 4, 4), (_x(3, 1, 4, 4, seed=1) if two_sets else None)
    net = wn.serial(wn.Conv(4, 3, w_std=1.3, b_std=0.1), wn.Relu(), wn.AvgPool(2, stride=1),
                    wn.Conv(4, 3), wn.Relu())       # spatial output, full layout
    k = net.kernel(x, y, batch_size=8)
    for b in (1, 2, 3):
        kb = net.kernel(x, y, batch_size=b)
        for name in ("nngp", "ntk", "cov1", "cov2"):
            a, c = getattr(k, name), getattr(kb, name)
            if a is None:
                assert c is None
                continue
            torch.testing.assert_close(c, a, rtol=1e-13, atol=1e-15, msg=f"{name}, b={b}")
    gap = wn.serial(net, wn.GlobalAvgPool(), wn.Dense(1))
    torch.testing.assert_close(gap.kernel(x, y, batch_size=2).ntk, gap.kernel(x, y).ntk,
                               rtol=1e-13, atol=1e-15)


def test_full_layout_memory_errors(monkeypatch):
    net = wn.serial(wn.Conv(4, 3), wn.Relu(), wn.GlobalAvgPool())
    x = _x(4, 1, 8, 8)
    per_pair = _blocks.full_layout_bytes_per_pair((8, 8), torch.float64, True)
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 2 * 5 * per_pair)
    with pytest.raises(MemoryError, match=r"batch_size=4 would need .* use batch_size <= 2"):
        net.kernel(x, batch_size=4)
    k = net.kernel(x)                                 # automatic blocks fit
    torch.testing.assert_close(k.ntk, net.kernel(x, batch_size=1).ntk)
    monkeypatch.setattr(memory, "available_memory", lambda device=None: per_pair)
    with pytest.raises(MemoryError, match="even one pair at a time.*Flatten readout"):
        net.kernel(x)


def test_full_layout_blocks_on_an_accelerator_fill_its_memory(monkeypatch):
    """On a GPU the blocks are as large as the device's budget allows (every op is one launch;
    no cache to fit), on the CPU they stay at the cache-sized target. Simulated with a fake
    device budget (mutation caught: the CPU's 16 MiB target used on the GPU gives b = 22 here,
    the CPU's RAM as the GPU's budget gives a different b)."""
    per_pair = _blocks.full_layout_bytes_per_pair((8, 8), torch.float64, True)
    monkeypatch.setattr(memory, "available_memory",
                        lambda device=None: 2 * 10_000 * per_pair if device is not None
                        else 2 * 400 * per_pair)
    b_gpu, _ = _blocks.full_layout_plan((8, 8), torch.float64, True, None, threads=1,
                                        fname="f", device="meta")
    b_cpu, _ = _blocks.full_layout_plan((8, 8), torch.float64, True, None, threads=1,
                                        fname="f")
    assert b_gpu == 100                   # isqrt(10_000 pairs of the device budget)
    assert b_cpu == 20                    # the RAM budget's isqrt(400) caps the speed target


def test_flatten_of_1x1_images_equals_gap_and_errors():
    x = _x(4, 3, 1, 1)
    a = wn.serial(wn.Conv(5, 1), wn.Relu(), wn.Flatten(), wn.Dense(2)).kernel(x)
    b = wn.serial(wn.Conv(5, 1), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(2)).kernel(x)
    torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-13, atol=0)
    assert wn.Flatten().module((3, 2, 2))(torch.zeros(1, 3, 2, 2)).shape == (1, 12)
    with pytest.raises(ValueError, match="GlobalAvgPool.kernel: input must be channels-first"):
        wn.serial(wn.Dense(3), wn.GlobalAvgPool()).kernel(_x(2, 4))
    with pytest.raises(ValueError, match="window must be an int"):
        wn.AvgPool(0)


@pytest.mark.parametrize("layout", ["full", "diagonal"])
def test_input_kernel_both_channel_paths_match_definition(layout):
    """Few channels: elementwise passes; many (> 32): matrix products. Both equal
    Σ_c x_c(p) x'_c(p') / C written as an einsum."""
    from widenets.layers.base import input_kernel

    for c in (3, 40):
        x, y = _x(3, c, 4, 5), _x(2, c, 4, 5, seed=1)
        k = input_kernel(x, y, want_ntk=False, layout=layout)
        if layout == "full":
            ref = torch.einsum("ichw,jcab->ijhwab", x, y) / c
            ref1 = torch.einsum("ichw,icab->ihwab", x, x) / c
        else:
            ref = torch.einsum("ichw,jchw->ijhw", x, y) / c
            ref1 = (x * x).sum(1) / c
        torch.testing.assert_close(k.nngp, ref, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(k.cov1, ref1, rtol=1e-13, atol=1e-14)


def _spatial_nets():
    return {
        "gap": wn.serial(wn.Conv(4, 3, w_std=1.3, b_std=0.1), wn.Relu(),
                         wn.Conv(4, 3, stride=2), wn.Gelu(), wn.GlobalAvgPool(), wn.Dense(2)),
        "flatten_1d": wn.serial(wn.Conv(4, 3, padding="CIRCULAR"), wn.Erf(),
                                wn.Conv(4, 2, padding="VALID"), wn.Relu(), wn.Flatten(),
                                wn.Dense(2)),
        "pool_tanh": wn.serial(wn.Conv(4, 3), wn.Elementwise(torch.tanh, degree=16,
                                                             name="tanh"),
                               wn.AvgPool(2, stride=1, padding="SAME"), wn.Conv(4, 3),
                               wn.LayerNorm(), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(2)),
    }


@pytest.mark.parametrize("name", list(_spatial_nets()))
@pytest.mark.parametrize("batch_size", [None, 2])
def test_spatial_invariants(name, batch_size):
    """k(x) is exactly symmetric, equals k(x, x) (which runs the asymmetric code path) and is
    positive semi-definite; blocks do not change that. k(x, x) evaluates arccos at c ~ 1 on
    its diagonal, which loses half the digits (sqrt(eps) ~ 1.5e-8), hence rtol 1e-7 there."""
    net = _spatial_nets()[name]
    shape = {"flatten_1d": (2, 6), "gap": (2, 5, 5), "pool_tanh": (2, 3, 4)}[name]
    x = _x(5, *shape)
    k = net.kernel(x, batch_size=batch_size)
    k2 = net.kernel(x, x.clone(), batch_size=batch_size)
    for t, t2 in ((k.nngp, k2.nngp), (k.ntk, k2.ntk)):
        assert torch.equal(t, t.T)
        # quadrature (degree 16, kept low for speed) is accurate to ~1e-4 and not symmetric
        # in (x1, x2); k(x) symmetrizes it, k(x, x) does not
        rtol = 1e-3 if name == "pool_tanh" else 1e-7
        torch.testing.assert_close(t2, t, rtol=rtol, atol=1e-12)
        assert torch.linalg.eigvalsh(t).min() > -1e-10 * t.diagonal().max()
