"""wn.predict reads kernels from a tile store (wn.tiles) when they fit in memory."""

import pytest
import torch

import widenets as wn


@pytest.fixture
def problem(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 5, generator=g, dtype=torch.float64)
    xt = torch.randn(4, 5, generator=g, dtype=torch.float64)
    y = torch.randn(13, 2, generator=g, dtype=torch.float64)
    net = wn.serial(wn.Dense(64, w_std=1.4, b_std=0.1), wn.Relu(), wn.Dense(1, w_std=1.4))
    wn.tiles.compute(net, x, store=tmp_path / "train.zarr", batch_size=5)
    wn.tiles.compute(net, xt, x, store=tmp_path / "test.zarr", batch_size=3)
    return net, x, xt, y, tmp_path


def test_store_paths_and_lazy_arrays_equal_in_memory_kernels(problem):
    net, x, xt, y, tmp = problem
    k, kt = net.kernel(x), net.kernel(xt, x)
    ref = wn.predict.gradient_descent_mse(k.ntk, y)(2.0, 0.0, 0.0, kt.ntk)
    for train, test in [(tmp / "train.zarr", tmp / "test.zarr"),
                        (wn.tiles.open(tmp / "train.zarr", get="ntk"),
                         wn.tiles.open(tmp / "test.zarr", get="ntk"))]:
        got = wn.predict.gradient_descent_mse(train, y)(2.0, 0.0, 0.0, test)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    gp = wn.predict.gp_inference(str(tmp / "train.zarr"), y, str(tmp / "test.zarr"),
                                 kernel="nngp", diag_reg=1e-6)
    gp_ref = wn.predict.gp_inference(k, y, kt, kernel="nngp", diag_reg=1e-6)
    torch.testing.assert_close(gp.mean, gp_ref.mean, rtol=1e-12, atol=1e-12)


def test_store_too_large_goes_through_lanczos_or_is_a_clear_error(problem, monkeypatch):
    net, x, xt, y, tmp = problem
    import widenets._memory as memory
    import widenets.predict.solver as solver

    ref = wn.predict.gradient_descent_mse(net.kernel(x).ntk, y, diag_reg=1e-6)
    monkeypatch.setattr(solver, "_fits_in_memory", lambda op: False)
    # Too large for the eigendecomposition: t = None goes through wn.predict.solve (tested in
    # test_predict_solve.py), a finite t through Lanczos (test_predict_krylov.py).
    pred = wn.predict.gradient_descent_mse(tmp / "train.zarr", y, diag_reg=1e-6,
                                           solve_options=dict(tol=1e-10))
    assert pred.eig is None
    torch.testing.assert_close(pred(1.0), ref(1.0), rtol=1e-8, atol=1e-9)
    # Lanczos vectors that would not fit either: a clear error, before any product.
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 100)
    with pytest.raises(ValueError, match="krylov_dynamics: .*Lanczos steps keep"):
        pred(1.0)
