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

from typing import NamedTuple

import torch

from ._linalg import (
    as_kernel_matrix,
    as_targets,
    check_diag_reg,
    cho_solve,
    cholesky,
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
                 kernel: str = "nngp", diag_reg: float = 0.0,
                 diag_reg_absolute: bool = False) -> Gaussian:
    """Posterior mean and covariance on test inputs: NNGP (eq. 13) or NTK-GP (eq. 16).

    Args:
        k_train_train: (n, n) train-train kernel. A `wn.Kernel` (from `net.kernel(x_train)`)
            or a tensor / numpy array holding the kernel named by `kernel`. The NTK covariance
            also needs the NNGP, so pass Kernel objects there.
        y_train: (n,) or (n, k) targets.
        k_test_train: (m, n) test-train kernel, a Kernel or a matrix as above.
        k_test_test: None (no covariance) or the (m, m) test-test kernel: a Kernel (its NNGP is
            used: the prior covariance of the outputs) or the NNGP matrix itself.
        kernel: "nngp" (default): the exact Bayesian posterior of the infinitely wide network
            (also: training only the readout layer to convergence). "ntk": the distribution of
            infinitely many infinitely wide networks trained to convergence by gradient descent
            on MSE (all layers).
        diag_reg: ρ added to the diagonal of the train-train kernel that is inverted (K for
            "nngp", Θ for "ntk"), relative by default: ρ = diag_reg · mean(diagonal). For
            "nngp" this is Gaussian observation noise of variance ρ.
        diag_reg_absolute: True to add diag_reg itself.

    Returns:
        `Gaussian(mean, covariance)`: mean (m, k) (or (m,)), covariance (m, m) or None.

    Raises:
        ValueError: a kernel that is not positive definite (suggests diag_reg), missing Kernel
            fields, wrong shapes, non-finite values.

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> x_train, x_test, y_train = torch.randn(6, 3), torch.randn(2, 3), torch.randn(6, 1)
        >>> k_train, k_test_train = net.kernel(x_train), net.kernel(x_test, x_train)
        >>> gp = wn.predict.gp_inference(k_train, y_train, k_test_train, net.kernel(x_test),
        ...                             kernel="nngp")
        >>> gp.mean.shape, gp.covariance.shape
        (torch.Size([2, 1]), torch.Size([2, 2]))
    """
    func = "gp_inference"
    kernel = check_kernel_name(kernel, func=func)
    diag_reg = check_diag_reg(diag_reg, func=func)
    k_dd = as_kernel_matrix(k_train_train, func=func, arg="k_train_train", which=kernel)
    n = k_dd.shape[0]
    y, vector = as_targets(y_train, func=func, n=n, dtype=k_dd.dtype, device=k_dd.device)
    k_td = as_kernel_matrix(k_test_train, func=func, arg="k_test_train", which=kernel,
                            shape=(None, n)).to(k_dd.device)
    chol = cholesky(k_dd, diag_reg=diag_reg, absolute=diag_reg_absolute, func=func,
                    arg="k_train_train")
    # eq. 13 / eq. 16 mean: k(x, X) k⁻¹ Y.
    mean = restore_targets_shape(k_td @ cho_solve(chol, y), vector)
    if k_test_test is None:
        return Gaussian(mean, None)
    m = k_td.shape[0]
    k_tt = as_kernel_matrix(k_test_test, func=func, arg="k_test_test", which="nngp",
                            shape=(m, m)).to(k_dd.device)
    if kernel == "nngp":
        # eq. 13: Σ = K(x, x) - K(x, X) K⁻¹ K(X, x).
        cov = k_tt - k_td @ cho_solve(chol, k_td.T)
    else:
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
                              shape=(n, n)).to(k_dd.device)
        kt = as_kernel_matrix(k_test_train, func=func, arg="k_test_train", which="nngp",
                              shape=(m, n)).to(k_dd.device)
        a = cho_solve(chol, k_td.T).T                      # Θ(x, X) Θ⁻¹: (m, n)
        cross = a @ kt.T                                   # Θ(x, X) Θ⁻¹ K(X, x)
        # eq. 16: K(x,x) + Θ(x,X) Θ⁻¹ K Θ⁻¹ Θ(X,x) - (Θ(x,X) Θ⁻¹ K(X,x) + h.c.)
        cov = k_tt + a @ kk @ a.T - (cross + cross.T)
    cov = 0.5 * (cov + cov.T)
    return Gaussian(mean, cov)
