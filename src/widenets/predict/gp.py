"""Gaussian-process posteriors of infinitely wide networks (Lee et al. 2019, seed 002, §2.3).

* kernel="nngp", exact Bayesian inference with the NNGP K (eq. 13):
      μ(x) = K(x, X) K⁻¹ Y,   Σ = K(x, x) - K(x, X) K⁻¹ K(X, x)
* kernel="ntk", the infinite ensemble of infinitely wide networks trained to convergence by
  gradient descent on MSE (eq. 16):
      μ(x) = Θ(x, X) Θ⁻¹ Y,
      Σ = K(x, x) + Θ(x, X) Θ⁻¹ K Θ⁻¹ Θ(X, x) - (Θ(x, X) Θ⁻¹ K(X, x) + transpose)
One Cholesky factorization of the (regularized) train-train kernel serves the mean and the
covariance.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from ._linalg import (
    as_kernel_matrix,
    as_targets,
    check_diag_reg,
    cho_solve,
    cholesky,
    is_store,
    restore_targets_shape,
)

__all__ = ["Gaussian", "gp_inference", "KERNELS"]

KERNELS = ("nngp", "ntk")


class Gaussian(NamedTuple):
    """A Gaussian over network outputs.

    Attributes:
        mean: (m, k) mean outputs ((m,) for vector targets); a leading time axis (T, ...)
            where the prediction was asked for several times.
        covariance: (m, m) covariance over inputs, shared by every output column (the output
            units are independent and identically distributed), or None when not asked for;
            with a time axis (T, m, m) likewise.

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> x_train, x_test, y_train = torch.randn(6, 3), torch.randn(2, 3), torch.randn(6, 1)
        >>> k_train, k_test_train = net.kernel(x_train), net.kernel(x_test, x_train)
        >>> gp = wn.predict.gp_inference(k_train, y_train, k_test_train, net.kernel(x_test),
        ...                             kernel="ntk")
        >>> isinstance(gp, wn.predict.Gaussian), gp.mean.shape
        (True, torch.Size([2, 1]))
    """

    mean: torch.Tensor
    covariance: torch.Tensor | None


def check_kernel_name(kernel, *, func: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"{func}: kernel must be 'nngp' (Bayesian posterior / readout-only "
                         f"training) or 'ntk' (gradient descent on all layers), got {kernel!r}")
    return kernel


def gp_inference(k_train_train, y_train, k_test_train, k_test_test=None, *,
                 kernel: str = "ntk", diag_reg: float = 0.0,
                 diag_reg_absolute: bool = False, solve_options: dict | None = None
                 ) -> Gaussian:
    """Posterior mean and covariance on test inputs: NTK-GP (eq. 16) or NNGP (eq. 13).

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1))
        >>> x_train = torch.randn(20, 3, dtype=torch.float64)
        >>> x_test = torch.randn(4, 3, dtype=torch.float64)
        >>> y_train = torch.randn(20, dtype=torch.float64)
        >>> gp = wn.predict.gp_inference(net.kernel(x_train), y_train,
        ...                              net.kernel(x_test, x_train), net.kernel(x_test))
        >>> gp.mean.shape, gp.covariance.shape
        (torch.Size([4]), torch.Size([4, 4]))

    Args:
        k_train_train: (n, n) train-train kernel. A `wn.Kernel` (from `net.kernel(x_train)`)
            or a tensor / numpy array holding the kernel named by `kernel`, or a tile store
            (its directory or `wn.tiles.open`'s array) of any size: stores go through
            `wn.predict.solve` (Cholesky when the kernel fits in memory, else preconditioned
            conjugate gradients streaming the tiles). The NTK covariance also needs the NNGP,
            so pass Kernel objects (or a store holding both kernels) there.
        y_train: (n,) or (n, k) targets.
        k_test_train: (m, n) test-train kernel, a Kernel, a matrix or a store as above.
        k_test_test: None (no covariance) or the (m, m) test-test kernel: a Kernel (its NNGP is
            used: the prior covariance of the outputs) or the NNGP matrix itself. It must be a
            covariance: symmetric with a non-negative diagonal. With a store for
            k_train_train, the covariance costs one solve with m right-hand sides: ask for it
            on a test subset.
        kernel: "ntk" (default): the distribution of infinitely many infinitely wide networks
            trained to convergence by gradient descent on MSE (all layers). "nngp": the exact
            Bayesian posterior of the infinitely wide network (also: training only the readout
            layer to convergence).
        diag_reg: ρ added to the diagonal of the train-train kernel that is inverted (K for
            "nngp", Θ for "ntk"), relative by default: ρ = diag_reg · mean(diagonal). For
            "nngp" this is Gaussian observation noise of variance ρ. With 0 (default) a
            singular or near-singular kernel (duplicated inputs) is an error naming diag_reg.
        diag_reg_absolute: True to add diag_reg itself.
        solve_options: for stores, keyword arguments of `wn.predict.solve` (tol, method,
            preconditioner, rank, max_iter, client, progress, checkpoint).

    Returns:
        `Gaussian(mean, covariance)`: mean (m, k) (or (m,)), covariance (m, m) or None.

    Raises:
        ValueError: a kernel that is not positive definite or near-singular (suggests
            diag_reg), a k_test_test that is not a covariance or not consistent with the other
            kernels (negative posterior variances), missing Kernel fields, wrong shapes,
            non-finite values.
    """
    func = "gp_inference"
    kernel = check_kernel_name(kernel, func=func)
    diag_reg = check_diag_reg(diag_reg, func=func)
    if solve_options is not None and not isinstance(solve_options, dict):
        raise TypeError(f"{func}: solve_options must be a dict of wn.predict.solve keyword "
                        f"arguments or None, got {type(solve_options).__name__}")
    if is_store(k_train_train):
        return _gp_store(k_train_train, y_train, k_test_train, k_test_test, kernel=kernel,
                         diag_reg=diag_reg, diag_reg_absolute=diag_reg_absolute,
                         options=solve_options or {})
    k_dd = as_kernel_matrix(k_train_train, func=func, arg="k_train_train", which=kernel)
    n = k_dd.shape[0]
    y, vector = as_targets(y_train, func=func, n=n, dtype=k_dd.dtype, device=k_dd.device)
    k_td = as_kernel_matrix(k_test_train, func=func, arg="k_test_train", which=kernel,
                            shape=(None, n)).to(k_dd.device)
    m = k_td.shape[0]
    k_tt = None
    if k_test_test is not None:
        k_tt = _check_covariance(k_test_test, m, func).to(k_dd.device)
    chol = cholesky(k_dd, diag_reg=diag_reg, absolute=diag_reg_absolute, func=func,
                    arg="k_train_train")
    # eq. 13 / eq. 16 mean: k(x, X) k⁻¹ Y.
    mean = restore_targets_shape(k_td @ cho_solve(chol, y), vector)
    if k_tt is None:
        return Gaussian(mean, None)
    if kernel == "nngp":
        # eq. 13: Σ = K(x, x) - K(x, X) K⁻¹ K(X, x).
        cov = k_tt - k_td @ cho_solve(chol, k_td.T)
    else:
        kk, kt = _nngp_blocks(k_train_train, k_test_train, n, m, func)
        a = cho_solve(chol, k_td.T).T                      # Θ(x, X) Θ⁻¹: (m, n)
        # eq. 16: K(x,x) + Θ(x,X) Θ⁻¹ K Θ⁻¹ Θ(X,x) - (Θ(x,X) Θ⁻¹ K(X,x) + h.c.)
        cov = _ntk_covariance(k_tt, a, (kk.to(k_dd.device) @ a.T), kt.to(k_dd.device))
    return Gaussian(mean, _checked_posterior(cov, k_tt, func))


def _check_covariance(k_test_test, m: int, func: str) -> torch.Tensor:
    """k_test_test as an (m, m) prior covariance: symmetric, non-negative diagonal."""
    k_tt = as_kernel_matrix(k_test_test, func=func, arg="k_test_test", which="nngp",
                            shape=(m, m))
    diag = k_tt.diagonal()
    scale = float(k_tt.abs().max()) if k_tt.numel() else 0.0
    if bool((diag < 0).any()):
        i = int(torch.argmin(diag))
        raise ValueError(f"{func}: k_test_test must be a covariance (the test-test kernel "
                         f"net.kernel(x_test)), but its diagonal entry {i} is {float(diag[i]):.3g}"
                         f" < 0")
    asym = float((k_tt - k_tt.T).abs().max()) if k_tt.numel() else 0.0
    if asym > 1e-8 * max(scale, 1e-300):
        raise ValueError(f"{func}: k_test_test must be a symmetric covariance (the test-test "
                         f"kernel net.kernel(x_test)), but max|k - kᵀ| = {asym:.3g} relative "
                         f"to max|k| = {scale:.3g}")
    return k_tt


def _checked_posterior(cov: torch.Tensor, k_tt: torch.Tensor, func: str) -> torch.Tensor:
    """Symmetrize; refuse negative variances beyond rounding (inconsistent kernel blocks)."""
    cov = 0.5 * (cov + cov.T)
    scale = float(k_tt.diagonal().abs().max()) if k_tt.numel() else 0.0
    var = cov.diagonal()
    if var.numel() and float(var.min()) < -1e-6 * max(scale, 1e-300):
        i = int(torch.argmin(var))
        raise ValueError(f"{func}: the posterior variance of test input {i} is "
                         f"{float(var[i]):.3g} < 0: k_test_test is not consistent with "
                         f"k_train_train and k_test_train (they must be blocks of one kernel "
                         f"of one network: net.kernel(x_test) with net.kernel(x_train) and "
                         f"net.kernel(x_test, x_train))")
    return cov


def _ntk_covariance(k_tt, a, kk_at, kt):
    """eq. 16 with a = Θ(x,X)Θ⁻¹ (m, n), kk_at = K a ᵀ (n, m), kt = K(x, X) (m, n)."""
    cross = a @ kt.T
    return k_tt + a @ kk_at - (cross + cross.T)


def _nngp_blocks(k_train_train, k_test_train, n, m, func):
    missing = [name for name, obj in (("k_train_train", k_train_train),
                                      ("k_test_train", k_test_train))
               if getattr(obj, "nngp", None) is None]
    if missing:
        raise ValueError(f"{func}: the NTK covariance (eq. 16) needs the NNGP as well as "
                         f"the NTK; pass wn.Kernel objects with both fields for "
                         f"{' and '.join(missing)} (net.kernel(x_train) and "
                         f"net.kernel(x_test, x_train)), or k_test_test=None for the "
                         f"mean only")
    kk = as_kernel_matrix(k_train_train, func=func, arg="k_train_train", which="nngp",
                          shape=(n, n))
    kt = as_kernel_matrix(k_test_train, func=func, arg="k_test_train", which="nngp",
                          shape=(m, n))
    return kk, kt


def _gp_store(k_train_train, y_train, k_test_train, k_test_test, *, kernel, diag_reg,
              diag_reg_absolute, options):
    """gp_inference with a tile store for k_train_train, through `solve`."""
    from .solver import as_operator, solve

    func = "gp_inference"
    client = options.get("client")
    op, _ = as_operator(k_train_train, kernel=kernel, func=func, client=client,
                        check=options.get("check_store", "crc"))
    n = op.shape[0]
    y, vector = as_targets(y_train, func=func, n=n)
    k = y.shape[1]
    if is_store(k_test_train):
        test_op, _ = _test_operator(k_test_train, kernel, func, client)
        if test_op.shape[1] != n:
            raise ValueError(f"{func}: k_test_train must have shape (m, {n}), got "
                             f"{test_op.shape}")
    else:
        test_op = None
        k_td = as_kernel_matrix(k_test_train, func=func, arg="k_test_train", which=kernel,
                                shape=(None, n))
    m = test_op.shape[0] if test_op is not None else k_td.shape[0]
    opts = {key: v for key, v in options.items() if key != "check_store"}
    opts["check_store"] = None                       # op was checked when made
    if k_test_test is None:
        alpha = solve(op, y, diag_reg=diag_reg, diag_reg_absolute=diag_reg_absolute, **opts)
        alpha = alpha.alpha if alpha.alpha.ndim == 2 else alpha.alpha[:, None]
        mean = test_op.matmul(alpha) if test_op is not None else k_td @ alpha
        return Gaussian(restore_targets_shape(mean, vector), None)
    k_tt = _check_covariance(k_test_test, m, func)
    if test_op is not None:
        k_td = test_op.load()                        # (m, n): a test subset
    sol = solve(op, torch.cat([y, k_td.T], 1), diag_reg=diag_reg,
                diag_reg_absolute=diag_reg_absolute, **opts).alpha
    alpha, b = sol[:, :k], sol[:, k:]                # k⁻¹ Y and k⁻¹ k(X, x)
    mean = restore_targets_shape(k_td @ alpha, vector)
    if kernel == "nngp":
        cov = k_tt - k_td @ b                        # eq. 13
    else:
        nngp_op, _ = as_operator(k_train_train, kernel="nngp", func=func, client=client,
                                 check=None)
        if getattr(nngp_op, "name", "nngp") != "nngp":
            raise ValueError(f"{func}: the NTK covariance (eq. 16) needs the NNGP as well as "
                             f"the NTK; the store of k_train_train holds only the NTK")
        if test_op is not None:
            kt = _test_operator(k_test_train, "nngp", func, None)[0].load()
        elif getattr(k_test_train, "nngp", None) is None:
            raise ValueError(f"{func}: the NTK covariance (eq. 16) needs the NNGP as well as "
                             f"the NTK; pass a wn.Kernel with both fields for k_test_train "
                             f"(net.kernel(x_test, x_train)), or k_test_test=None for the "
                             f"mean only")
        else:
            kt = as_kernel_matrix(k_test_train, func=func, arg="k_test_train", which="nngp",
                                  shape=(m, n))
        a = b.T                                      # Θ(x, X) Θ⁻¹
        cov = _ntk_covariance(k_tt, a, nngp_op.matmul(a.T.contiguous()), kt)   # eq. 16
    return Gaussian(mean, _checked_posterior(cov, k_tt, func))


def _test_operator(k, kernel, func, client):
    from ..tiles import StoreOperator

    store = k if isinstance(k, (str, os.PathLike)) else k.store
    try:
        return StoreOperator(store, get=kernel, client=client), True
    except ValueError as e:
        raise ValueError(f"{func}: k_test_train: {e}") from e
