"""wn.predict.solve (issue 18): preconditioned CG against Cholesky, streamed tile-store products,
refusal of damaged stores, resume after SIGKILL, predictions from stores too large for memory."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import widenets as wn

HERE = Path(__file__).parent


def relu_ntk(n, d, depth, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    net = wn.serial(*([wn.Dense(512, w_std=1.4142, b_std=0.05), wn.Relu()] * depth),
                    wn.Dense(1))
    return net, x


@pytest.fixture(scope="module")
def ill():
    """A depth-3 ReLU NTK of 1000 inputs in 3 dimensions: condition number ~1e5."""
    net, x = relu_ntk(1000, 3, 3)
    k = net.kernel(x, get="ntk")
    y = torch.randn(1000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return k, y


def test_cg_equals_cholesky_and_the_preconditioner_matters(ill):
    k, y = ill
    lam = torch.linalg.eigvalsh(k)
    assert float(lam[-1] / lam[0]) > 1e4                    # really ill-conditioned
    exact = torch.linalg.solve(k, y)                        # independent reference (LU)
    chol = wn.predict.solve(k, y, method="cholesky")
    torch.testing.assert_close(chol.alpha, exact, rtol=1e-6, atol=0)
    tol = 1e-6
    counts = {}
    for pc in ("nystrom", "pivoted_cholesky"):
        sol = wn.predict.solve(k, y, method="cg", preconditioner=pc, rank=100, tol=tol)
        assert sol.converged and sol.method == "cg" and sol.preconditioner == pc
        # The true residual meets the tolerance (a wrong step or preconditioner sign would not).
        assert float(sol.residual.max()) < 10 * tol
        assert sol.residuals.shape == (sol.iterations + 1, 3)
        # Forward error <= cond * residual; compare the residual of the exact solution instead:
        # A (alpha - exact) must be as small as the tolerance (a wrong alpha is not).
        gap = k @ (sol.alpha - exact)
        assert float(torch.linalg.norm(gap) / torch.linalg.norm(y)) < 10 * tol, pc
        counts[pc] = sol.iterations
    # Without a preconditioner, 3x the preconditioned iteration count is not enough.
    budget = 3 * max(counts.values())
    with pytest.raises(wn.predict.SolveError, match="did not reach tol") as info:
        wn.predict.solve(k, y, method="cg", preconditioner=None, tol=tol, max_iter=budget)
    print(f"\niterations to {tol:g}: {counts}; no preconditioner: > {budget} (worst residual "
          f"{float(info.value.solution.residuals[-1].max()):.2g} after {budget})")


def test_well_conditioned_regularized_solve_and_vector_targets(ill):
    k, y = ill
    sol = wn.predict.solve(k, y[:, 0], diag_reg=1e-2, method="cg", tol=1e-10)
    ref = torch.linalg.solve(k + 1e-2 * k.diagonal().mean() * torch.eye(1000,
                                                                         dtype=k.dtype), y[:, 0])
    assert sol.alpha.shape == (1000,)
    torch.testing.assert_close(sol.alpha, ref, rtol=1e-7, atol=1e-9)
    # Well conditioned: fast (64 iterations to 1e-10 with the rank-256 preconditioner's
    # resolved part; about 800 without diag_reg and without a preconditioner).
    assert sol.iterations < 80


def test_singular_kernel_errors_name_diag_reg():
    x = torch.randn(30, 4, dtype=torch.float64)
    k = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1)).kernel(torch.cat([x, x[:3]]),
                                                               get="ntk")
    y = torch.randn(33, dtype=torch.float64)
    for method in ("cholesky", "auto"):
        with pytest.raises(ValueError, match="diag_reg"):
            wn.predict.solve(k, y, method=method)
    with pytest.raises((ValueError, FloatingPointError), match="diag_reg"):
        wn.predict.solve(k, y, method="cg", preconditioner=None, max_iter=200, tol=1e-12)
    with pytest.raises(ValueError, match="solve: method must be one of"):
        wn.predict.solve(k, y, method="lu")
    with pytest.raises(ValueError, match="solve: tol must be"):
        wn.predict.solve(k, y, tol=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A float32 symmetric store of a 300-input depth-3 ReLU NTK (and NNGP), tiles of 100."""
    net, x = relu_ntk(300, 3, 3, seed=2)
    path = tmp_path_factory.mktemp("solve") / "k.zarr"
    wn.tiles.compute(net, x, store=path, batch_size=100, dtype=torch.float32)
    return path, net, x


def test_streamed_product_reads_each_tile_once_and_equals_dense(store, monkeypatch):
    path, net, x = store
    k = torch.from_numpy(np.asarray(wn.tiles.open(path, get="ntk"), dtype=np.float64))
    op = wn.tiles.StoreOperator(path, get="ntk")
    import widenets.tiles.matvec as mv

    reads = []
    real = mv.read_block
    monkeypatch.setattr(mv, "read_block", lambda *a: reads.append(a[3:5]) or real(*a))
    v = torch.randn(300, 4, dtype=torch.float64)
    # float64 accumulation of the float32 tiles: equal to the dense product to rounding.
    torch.testing.assert_close(op.matmul(v), k @ v, rtol=1e-12, atol=1e-12)
    # 3 x 3 tiles, upper triangle 6, each read exactly once (symmetry used).
    assert sorted(reads) == sorted((i, j) for i in range(3) for j in range(i, 3))
    # Many columns (a Nyström sketch) go 256 rows at a time: the same product.
    wide = torch.randn(300, 40, dtype=torch.float64)
    torch.testing.assert_close(op.matmul(wide), k @ wide, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.columns([0, 99, 100, 299]), k[:, [0, 99, 100, 299]])
    torch.testing.assert_close(op.diagonal(), k.diagonal())


def test_store_solve_equals_cholesky_of_the_loaded_kernel(store):
    path, _, _ = store
    k = wn.tiles.load_kernel(path, get="ntk").double()
    y = torch.randn(300, 2, dtype=torch.float64)
    ref = torch.linalg.solve(k + 1e-4 * k.diagonal().mean() * torch.eye(300, dtype=k.dtype), y)
    sol = wn.predict.solve(path, y, diag_reg=1e-4, method="cg", rank=50, tol=1e-9)
    assert sol.passes == sol.iterations + 2                # sketch + iterations + true residual
    torch.testing.assert_close(sol.alpha, ref, rtol=1e-6, atol=1e-8)
    sol2 = wn.predict.solve(path, y, diag_reg=1e-4, method="auto")   # fits: Cholesky
    assert sol2.method == "cholesky"
    torch.testing.assert_close(sol2.alpha, ref, rtol=1e-9, atol=1e-10)


def test_damaged_or_incomplete_store_is_refused_before_solving(tmp_path):
    net, x = relu_ntk(40, 3, 2, seed=3)
    y = torch.randn(40, dtype=torch.float64)
    path = tmp_path / "d.zarr"
    wn.tiles.compute(net, x, store=path, batch_size=16, get="ntk")
    from widenets.tiles.store import read_metadata

    lay, _ = read_metadata(path, func="test")
    chunk = lay.chunk("ntk", 0, 1)
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0x10                                       # one flipped bit
    chunk.write_bytes(bytes(data))
    with pytest.raises(wn.tiles.TileStoreError, match=r"damaged tile.*\(0, 1\)"):
        wn.predict.solve(path, y, method="cg")
    os.unlink(lay.record(1, 2))                             # a missing tile
    with pytest.raises(wn.tiles.IncompleteStoreError, match="incomplete"):
        wn.predict.solve(path, y, method="cg")


def test_resume_after_sigkill_reaches_the_same_answer(store, tmp_path):
    path, _, _ = store
    y = np.random.default_rng(5).normal(size=(300, 2))
    np.save(tmp_path / "y.npy", y)
    ckpt = tmp_path / "cg.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(HERE / "solve_killme.py"), str(path),
                             str(tmp_path / "y.npy"), str(ckpt)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the subprocess made no progress"
            if ckpt.exists() and int(np.load(ckpt)["iteration"]) >= 5:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "FINISHED" not in out
    saved = int(np.load(ckpt)["iteration"])
    yt = torch.from_numpy(y)
    kw = dict(method="cg", preconditioner=None, tol=1e-8, diag_reg=1e-1)
    resumed = wn.predict.solve(path, yt, checkpoint=ckpt, **kw)
    assert resumed.resumed_from == saved >= 5
    fresh = wn.predict.solve(path, yt, **kw)
    # The same CG recurrence continued: the same iterations and the same answer.
    assert resumed.iterations == fresh.iterations
    torch.testing.assert_close(resumed.alpha, fresh.alpha, rtol=1e-9, atol=1e-12)
    k = wn.tiles.load_kernel(path, get="ntk").double()
    k = k + 1e-1 * k.diagonal().mean() * torch.eye(300, dtype=k.dtype)
    # tol 1e-8 on the residual, condition number ~10: forward error ~1e-7.
    torch.testing.assert_close(resumed.alpha, torch.linalg.solve(k, yt), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="belongs to a different solve"):
        wn.predict.solve(path, 2 * yt, checkpoint=ckpt, **kw)


def test_predictions_from_a_store_too_large_for_memory(store, monkeypatch, tmp_path):
    path, net, x = store
    g = torch.Generator().manual_seed(9)
    xt = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.randn(300, 2, generator=g, dtype=torch.float64)
    test_path = tmp_path / "t.zarr"
    wn.tiles.compute(net, xt, x, store=test_path, batch_size=100, dtype=torch.float32)
    kd = wn.tiles.load_kernel(path)                         # both kernels, float32, in memory
    kt = wn.tiles.load_kernel(test_path)
    ktt = net.kernel(xt, get="nngp")
    kw = dict(diag_reg=1e-3)
    refs = {kernel: wn.predict.gp_inference(
        SimpleNamespace(nngp=kd[0].double(), ntk=kd[1].double()), y,
        SimpleNamespace(nngp=kt[0].double(), ntk=kt[1].double()), ktt, kernel=kernel, **kw)
        for kernel in ("nngp", "ntk")}
    mse_ref = wn.predict.gradient_descent_mse(kd[1].double(), y, **kw)(None, 0.0, 0.0,
                                                                       kt[1].double())
    import widenets.predict.solver as solver

    monkeypatch.setattr(solver, "_fits_in_memory", lambda op: False)   # no kernel "fits"
    opts = dict(tol=1e-11)
    for kernel in ("nngp", "ntk"):
        gp = wn.predict.gp_inference(path, y, test_path, ktt, kernel=kernel,
                                     solve_options=opts, **kw)
        torch.testing.assert_close(gp.mean, refs[kernel].mean, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(gp.covariance, refs[kernel].covariance, rtol=1e-6,
                                   atol=1e-8)
    pred = wn.predict.gradient_descent_mse(path, y, solve_options=opts, **kw)
    train, test = pred(None, 0.0, 0.0, test_path)
    torch.testing.assert_close(test, mse_ref[1], rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(train, mse_ref[0], rtol=1e-7, atol=1e-8)
    assert pred.eig is None                     # the iterative path (solve, Lanczos)
    # A finite t: Lanczos over the store (tested in depth in test_predict_krylov.py).
    finite = wn.predict.gradient_descent_mse(kd[1].double(), y, **kw)(10.0, 0.0, 0.0,
                                                                      kt[1].double())
    got = pred(10.0, 0.0, 0.0, test_path)
    torch.testing.assert_close(got[1], finite[1], rtol=1e-7, atol=1e-8)


def test_dask_workers_split_the_tiles_and_give_the_same_solve(store):
    distributed = pytest.importorskip("distributed")
    path, _, _ = store
    y = torch.randn(300, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    local = wn.predict.solve(path, y, diag_reg=1e-2, method="cg", rank=30, tol=1e-9)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        op = wn.tiles.StoreOperator(path, get="ntk", client=client)
        parts = list(op._parts.values())
        assert len(parts) == 2 and all(parts)                  # both workers hold tiles
        assert sorted(sum(parts, [])) == sorted(op.tiles)       # each tile on one worker
        dist = wn.predict.solve(path, y, diag_reg=1e-2, method="cg", rank=30, tol=1e-9,
                                client=client)
    # Partial products summed in another order: the same iterates up to rounding (an
    # iteration more or less at the threshold); residual 1e-9 at condition ~1e2 -> 1e-7.
    assert abs(dist.iterations - local.iterations) <= 2 and dist.converged
    assert float(dist.residual.max()) < 1e-8
    torch.testing.assert_close(dist.alpha, local.alpha, rtol=1e-6, atol=1e-8)


def test_cli_solve_writes_alpha_with_progress(store, tmp_path):
    from widenets.cli import main

    path, _, _ = store
    y = np.random.default_rng(7).normal(size=(300, 2))
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "alpha.npy"
    code = main(["solve", str(path), "--y", str(tmp_path / "y.npy"), "--out", str(out),
                 "--diag-reg", "1e-2", "--method", "cg", "--tol", "1e-9"])
    assert code == 0
    k = wn.tiles.load_kernel(path, get="ntk").double().numpy()
    ref = np.linalg.solve(k + 1e-2 * np.mean(np.diag(k)) * np.eye(300), y)
    np.testing.assert_allclose(np.load(out), ref, rtol=1e-6, atol=1e-8)
    assert np.load(tmp_path / "alpha.residuals.npy").shape[1] == 2
    assert main(["solve", str(path), "--y", str(tmp_path / "nope.npy"), "--out",
                 str(out)]) == 2
    np.save(tmp_path / "short.npy", y[:10])
    assert main(["solve", str(path), "--y", str(tmp_path / "short.npy"), "--out",
                 str(out)]) == 2


@pytest.mark.parametrize("pc", ["nystrom", "pivoted_cholesky"])
def test_preconditioner_factor_is_the_low_rank_approximation(pc, tmp_path):
    """U diag(λ) Uᵀ read back from a checkpoint: exact for a kernel of rank < r, U orthonormal,
    and for a full-rank kernel below K (K - K̂ positive semi-definite, Weyl: λ̂_i <= λ_i)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(400, 20, generator=g, dtype=torch.float64)
    y = torch.randn(400, 2, generator=g, dtype=torch.float64)
    full, _ = relu_ntk(400, 20, 2, seed=5)
    for k, exact in ((x @ x.T, True), (full.kernel(x, get="ntk"), False)):
        ck = tmp_path / f"{pc}{exact}.npz"
        wn.predict.solve(k, y, diag_reg=1e-3, method="cg", preconditioner=pc, rank=40,
                         tol=1e-8, checkpoint=ck, checkpoint_seconds=0)
        with np.load(ck) as z:
            u, lam = torch.from_numpy(z["u"]), torch.from_numpy(z["lam"])
        r = lam.shape[0]        # the rank of K (20) when exact; Nyström keeps resolved pairs
        assert u.shape == (400, r) and (20 if exact else 2) <= r <= 40
        # Orthonormal U (a Q·U_R product in the wrong order, or U from B without its QR, is not).
        torch.testing.assert_close(u.T @ u, torch.eye(r, dtype=u.dtype), rtol=0, atol=1e-10)
        approx = u @ torch.diag(lam) @ u.T
        scale = float(torch.linalg.eigvalsh(k)[-1])
        if exact:
            # Rank 20 < 40: the approximation is K itself (with a missing C⁻ᵀ or λ = σ instead
            # of σ² it is not; the stabilizing shift ν ~ 1e-13 ||Y|| is below this tolerance).
            torch.testing.assert_close(approx, k, rtol=0, atol=1e-9 * scale)
        else:
            gap = torch.linalg.eigvalsh(k - approx)
            assert float(gap.min()) > -1e-10 * scale                    # K̂ ⪯ K
            true = torch.linalg.eigvalsh(k).flip(0)[:r]
            assert bool((lam <= true + 1e-10 * scale).all())
            # and a useful one: the top eigenvalue within 10% (4% here: the spectrum of inputs
            # in 20 dimensions has a heavy tail; a sketch of the wrong matrix, e.g. K², or
            # λ = σ instead of σ², is off by orders of magnitude).
            assert abs(float(lam[0] / true[0]) - 1) < 0.1


def test_unresolved_sketch_directions_are_dropped():
    """Inputs of dimension d >> 1: K ≈ a 11ᵀ + b XXᵀ/d + c I (plus a quadratic part) has d
    eigenvalues in a cluster over a flat bulk of large total mass, which a rank-256 sketch does
    not resolve (docs/math.md §solvers). Using all 256 sketched directions took 33 iterations
    against 28 without a preconditioner (50 against 29 at n = 3000, d = 300); the
    preconditioner keeps only the eigenpairs above the sketch's resolution (tr K - Σ λ̂)/r
    (21 iterations here) and must not be slower than none."""
    g = torch.Generator().manual_seed(0)
    n, d = 2000, 200
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    b, c = 30 * 6.5 * d / n, 6.5                   # cluster ≈ 30 x the bulk, as at n = 50,000
    gram = x @ x.T / d
    k = 3.0 + b * gram + 0.5 * gram ** 2 + c * torch.eye(n, dtype=torch.float64)
    y = torch.randn(n, 10, generator=g, dtype=torch.float64)
    none = wn.predict.solve(k, y, method="cg", preconditioner=None, tol=1e-6)
    pre = wn.predict.solve(k, y, method="cg", preconditioner="nystrom", rank=256, tol=1e-6)
    # Independent check of the premise: the spectrum has d + 1 eigenvalues above the bulk.
    lam = torch.linalg.eigvalsh(k).flip(0)
    assert float(lam[d]) > 10 * float(lam[d + 1]) and float(lam[d + 1] / lam[-1]) < 3
    # Keeping all 256 directions (the mutation) takes 33 iterations; dropped: 21 <= none (28).
    assert pre.converged and pre.iterations <= none.iterations, (pre.iterations,
                                                                 none.iterations)
    assert 0 < pre.rank < 256
