"""A tiled kernel equals the in-memory kernel: symmetric and rectangular, non-dividing tiles."""

import numpy as np
import pytest
import torch
from tiles_helpers import chunk, dyadic, relu_net

import widenets as wn


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_symmetric_tiles_equal_in_memory_exactly(tmp_path, net, dtype):
    x = dyadic(37, dtype=dtype)  # 37 = 3 * 10 + 7: the last row/column of tiles is smaller
    run = wn.tiles.compute(net, x, store=tmp_path / "k.zarr", batch_size=10, dtype=dtype)
    assert (run.tiles_total, run.tiles_computed, run.tiles_skipped) == (10, 10, 0)  # 4*5/2
    nngp, ntk = wn.tiles.open(tmp_path / "k.zarr")
    ref_nngp, ref_ntk = net.kernel(x, get=("nngp", "ntk"), dtype=dtype)
    # Only the upper triangle was computed: the lower one is the reader's mirror.
    assert sorted(p.name for p in chunk(tmp_path / "k.zarr", "ntk", 3, 3).parent.iterdir()) == ["3"]
    for lazy, ref in ((nngp, ref_nngp), (ntk, ref_ntk)):
        got = lazy.load()
        assert got.dtype == dtype and got.shape == (37, 37)
        assert torch.equal(got, ref)
        assert torch.equal(torch.from_numpy(lazy.compute()), ref)  # the dask graph too
        assert torch.equal(torch.from_numpy(lazy[5:31, 12:].compute()), ref[5:31, 12:])


def test_rectangular_tiles_equal_in_memory_exactly(tmp_path, net):
    x1, x2 = dyadic(29, seed=1), dyadic(23, seed=2)
    run = wn.tiles.compute(net, x1, x2, store=tmp_path / "r.zarr", batch_size=(8, 5), get="ntk")
    assert run.tiles_total == 4 * 5
    ref = net.kernel(x1, x2, get="ntk")
    got = wn.tiles.open(tmp_path / "r.zarr")
    assert torch.equal(got.load(), ref)
    assert torch.equal(torch.from_numpy(got.compute()), ref)
    assert torch.equal(wn.tiles.load_kernel(tmp_path / "r.zarr"), ref)


def test_several_threads_and_numpy_inputs(tmp_path, net):
    x1, x2 = dyadic(19, seed=9), dyadic(14, seed=10)
    run = wn.tiles.compute(net, x1.numpy(), x2.numpy(), store=tmp_path / "t.zarr",
                           batch_size=(np.int64(4), 3), get="nngp", threads=3)
    assert run.tiles_computed == 5 * 5
    assert torch.equal(run.load(), net.kernel(x1, x2, get="nngp"))


def test_tile_larger_than_kernel_and_single_row(tmp_path, net):
    x1, x2 = dyadic(6, seed=3), dyadic(1, seed=4)
    run = wn.tiles.compute(net, x1, x2, store=tmp_path / "s.zarr", batch_size=100, get="nngp")
    assert run.tiles_total == 1
    assert torch.equal(run.load(), net.kernel(x1, x2, get="nngp"))


def test_general_inputs_match_up_to_blas_rounding(tmp_path):
    # Gaussian inputs: sub-block matrix products round differently from the full product
    # (MKL picks size-dependent kernels), by a few ulps of the Gram entries (~1e-16 relative in
    # float64); 1e-12 allows that and fails on any indexing or mirroring error (O(1) changes).
    net = relu_net(2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(41, 30, generator=g, dtype=torch.float64)
    wn.tiles.compute(net, x, store=tmp_path / "g.zarr", batch_size=16)
    for got, ref in zip(wn.tiles.load_kernel(tmp_path / "g.zarr"),
                        net.kernel(x, get=("nngp", "ntk")), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
        assert torch.equal(got, got.T)  # the mirrored store is exactly symmetric


def test_callable_kernel_fn_monte_carlo(tmp_path):
    # A Monte Carlo kernel (fixed seeds: the same finite networks for every tile) through a
    # plain callable with a description; equal to the in-memory estimate up to BLAS rounding
    # of the finite forward passes (1e-12 relative; a wrong tile would differ at O(1)).
    net = wn.serial(wn.Dense(64, w_std=1.5, b_std=0.1), wn.Erf(), wn.Dense(2))
    x1, x2 = dyadic(13, d=8, seed=6), dyadic(9, d=8, seed=7)

    def mc(a, b, get):
        return wn.monte_carlo_kernel(net, a, b, n_samples=2, seed=3, get=get)

    run = wn.tiles.compute(mc, x1, x2, store=tmp_path / "mc.zarr", batch_size=(5, 4),
                           description="monte_carlo_kernel(erf net, n_samples=2, seed=3)")
    assert run.tiles_computed == 9
    for got, ref in zip(run.load(), mc(x1, x2, get=("nngp", "ntk")), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


def test_open_get_selection(tmp_path, net):
    x = dyadic(12)
    wn.tiles.compute(net, x, store=tmp_path / "k.zarr", batch_size=5, get=("ntk", "nngp"))
    # The order of get does not matter for resuming.
    assert wn.tiles.compute(net, x, store=tmp_path / "k.zarr", batch_size=5).tiles_computed == 0
    ntk = wn.tiles.open(tmp_path / "k.zarr", get="ntk")
    both = wn.tiles.open(tmp_path / "k.zarr", get=("ntk", "nngp"))
    assert torch.equal(ntk.load(), net.kernel(x, get="ntk"))
    assert torch.equal(both[1].load(), net.kernel(x, get="nngp"))
    assert ntk.metadata["description"] == repr(net)


def test_callable_kernel_fn_empirical_ntk(tmp_path):
    # An empirical-NTK closure over a finite torch module (explicit Jacobians); equal to the
    # in-memory empirical NTK up to BLAS rounding of the Jacobian products (1e-12 relative).
    from widenets.empirical import empirical_ntk

    model = wn.serial(wn.Dense(32, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(3)).module(
        (8,), seed=0, dtype=torch.float64)
    x = dyadic(11, d=8, seed=8)

    def entk(a, b, get):
        return empirical_ntk(model, a, b, implementation="jacobian")

    run = wn.tiles.compute(entk, x, store=tmp_path / "e.zarr", batch_size=4, get="ntk",
                           description="jacobian empirical NTK of a 32-wide relu module, seed 0")
    torch.testing.assert_close(run.load(), empirical_ntk(model, x, implementation="jacobian"),
                               rtol=1e-12, atol=1e-14)


def test_kernel_array_pickles_and_computes_like_dask(tmp_path, net):
    import pickle

    x = dyadic(9)
    wn.tiles.compute(net, x, store=tmp_path / "k.zarr", batch_size=4, get="nngp")
    lazy = wn.tiles.open(tmp_path / "k.zarr")
    again = pickle.loads(pickle.dumps(lazy))
    ref = net.kernel(x, get="nngp")
    assert torch.equal(torch.from_numpy(again.compute()), ref)
    assert float((lazy * 2).sum().compute()) == pytest.approx(2 * float(ref.sum()), rel=1e-12)
