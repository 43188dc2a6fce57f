"""Shared argument checks and linear algebra for `widenets.predict`.

Everything that turns a user's kernel argument into a matrix, regularizes it, factorizes it, or
checks times and targets lives here, once, so that every predictor reports bad input the same
way:

* `as_kernel_matrix` is the single place that accepts a kernel argument (a `wn.Kernel`, a torch
  tensor or a numpy array). Other kernel containers (an on-disk kernel store) are added here.
* `regularize` adds `diag_reg` to the diagonal, relative to the mean diagonal by default.
* `SymmetricEig` is the eigendecomposition Θ = V diag(λ) Vᵀ that serves every time t, with the
  positive-(semi)definiteness checks; `cholesky` is the factorization of the one-shot solves.
* `time_factors` evaluates the spectral functions exp(-ηλt) (or (1-ηλ)^t) and
  (1 - exp(-ηλt))/λ for many times at once, stably as λ → 0 (Lee et al. 2019, eqs. 8-11).
"""

from __future__ import annotations

import math
import os
from numbers import Real

import torch

from .._checks import as_tensor, check_finite_values, check_positive
from ..kernel import Kernel

__all__ = ["as_kernel_matrix", "as_targets", "as_outputs", "check_diag_reg", "check_positive",
           "regularize", "Spectrum", "SymmetricEig", "cholesky", "check_not_near_singular",
           "source_eps", "cho_solve", "is_store", "as_times", "time_factors",
           "restore_targets_shape"]

KERNEL_NAMES = ("nngp", "ntk")


def _to_tensor(x, *, func: str, arg: str, what: str) -> torch.Tensor:
    return as_tensor(x, func=func, arg=arg, what=what, allow_lists=True)


def _check_finite(x: torch.Tensor, *, func: str, arg: str) -> None:
    check_finite_values(x, func=func, arg=arg,
                        hint="a kernel or target must be finite (recompute it in float64)")


def is_store(k) -> bool:
    """Whether a kernel argument is a tile store (a directory or `wn.tiles.open`'s array)."""
    return (isinstance(k, (str, os.PathLike)) and os.path.isdir(k)) or \
        hasattr(k, "_widenets_source")


def as_kernel_matrix(k, *, func: str, arg: str, which: str, shape: tuple | None = None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Turn a kernel argument into a (n1, n2) `dtype` tensor.

    Args:
        k: a `wn.Kernel` (its `which` field is used), any object with `nngp`/`ntk` attributes,
            a torch tensor, a numpy array, or a tile store written by `wn.tiles.compute` (its
            directory path, or the lazy array `wn.tiles.open` returns), loaded into memory if
            it fits (else `wn.tiles.KernelTooLargeError` says so).
        func, arg: names for error messages.
        which: "nngp" or "ntk": the field taken from a Kernel.
        shape: the expected (n1, n2); an entry None matches any size.
        dtype: result dtype (float64 by default: solves and eigendecompositions need it).

    Raises:
        TypeError: not a kernel, a matrix or floating point.
        ValueError: wrong rank or shape, a Kernel lacking the field, non-finite entries.
    """
    if (isinstance(k, (str, os.PathLike)) and os.path.isdir(k)) \
            or hasattr(k, "_widenets_source"):
        # A tile store: the store format lives in wn.tiles (imported only here, when used).
        from ..tiles import load_kernel

        store = k if isinstance(k, (str, os.PathLike)) else k.store
        k = load_kernel(store, get=which)
        arg = f"{arg} (the {which!r} kernel of tile store {os.fspath(store)!r})"
    elif isinstance(k, Kernel) or (hasattr(k, "nngp") and hasattr(k, "ntk")):
        mat = getattr(k, which)
        if mat is None:
            raise ValueError(f"{func}: {arg} is a Kernel without its {which!r} field (it was "
                             f"computed with get={'nngp' if which == 'ntk' else 'ntk'!r}); "
                             f"compute it with get=None or get={which!r}")
        k = mat
        arg = f"{arg}.{which}"
    k = _to_tensor(k, func=func, arg=arg,
                   what="a wn.Kernel, a torch tensor or a numpy array (a kernel matrix), or "
                        "the directory of a wn.tiles store")
    if k.ndim != 2:
        raise ValueError(f"{func}: {arg} must be a kernel matrix of shape (n1, n2), got shape "
                         f"{tuple(k.shape)}" + ("; kernels with spatial axes are not supported, "
                                                "end the network with a readout"
                                                if k.ndim > 2 else ""))
    if shape is not None:
        for got, want in zip(k.shape, shape, strict=True):
            if want is not None and got != want:
                want_s = ", ".join("n" if s is None else str(s) for s in shape)
                raise ValueError(f"{func}: {arg} must have shape ({want_s}), got "
                                 f"{tuple(k.shape)}")
    src = k.dtype
    k = k.to(dtype)
    _check_finite(k, func=func, arg=arg)
    if src.is_floating_point and torch.finfo(src).eps > torch.finfo(dtype).eps:
        k.widenets_source_eps = float(torch.finfo(src).eps)    # read by source_eps
    return k


def as_targets(y, *, func: str, n: int | None = None, arg: str = "y_train",
               dtype: torch.dtype = torch.float64, device=None) -> tuple[torch.Tensor, bool]:
    """Targets as an (n, k) tensor, and whether they came as a vector (n,).

    Raises:
        TypeError / ValueError: not numeric, wrong rank, wrong length, non-finite.
    """
    y = _to_tensor(y, func=func, arg=arg, what="a tensor or numpy array of targets")
    if y.ndim not in (1, 2):
        raise ValueError(f"{func}: {arg} must have shape (n,) or (n, outputs), got shape "
                         f"{tuple(y.shape)}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{func}: {arg} must have one row per training input ({n}), got "
                         f"shape {tuple(y.shape)}")
    y = y.to(dtype=dtype, device=device)
    _check_finite(y, func=func, arg=arg)
    vector = y.ndim == 1
    return (y[:, None] if vector else y), vector


def as_outputs(f, *, func: str, arg: str, shape: tuple[int, int], vector: bool,
               dtype: torch.dtype, device) -> torch.Tensor:
    """Network outputs at t = 0 (a scalar or a tensor shaped like the targets) as (n, k)."""
    if isinstance(f, Real) and not isinstance(f, bool):
        if not math.isfinite(f):
            raise ValueError(f"{func}: {arg} must be finite, got {f!r}")
        return torch.full(shape, float(f), dtype=dtype, device=device)
    f = _to_tensor(f, func=func, arg=arg, what="a number or a tensor of network outputs")
    f = f.to(dtype=dtype, device=device)
    want = (shape[0],) if vector else shape
    if f.ndim == 0:
        f = f.expand(shape)
    elif tuple(f.shape) == want:
        f = f.reshape(shape)
    else:
        raise ValueError(f"{func}: {arg} must be a number or have shape {want} (like the "
                         f"targets), got shape {tuple(f.shape)}")
    _check_finite(f, func=func, arg=arg)
    return f


def restore_targets_shape(out: torch.Tensor, vector: bool) -> torch.Tensor:
    """Drop the output axis again when the targets were a vector."""
    return out[..., 0] if vector else out


def check_diag_reg(diag_reg, *, func: str) -> float:
    if isinstance(diag_reg, bool) or not isinstance(diag_reg, Real) or \
            not math.isfinite(diag_reg) or diag_reg < 0:
        raise ValueError(f"{func}: diag_reg must be a finite number >= 0, got {diag_reg!r}")
    return float(diag_reg)


def regularize(k: torch.Tensor, diag_reg: float, *, absolute: bool) -> tuple[torch.Tensor, float]:
    """k + ρ I with ρ = diag_reg · mean(diag k) (default) or ρ = diag_reg (absolute=True).

    Returns the regularized copy and ρ.
    """
    rho = float(diag_reg) if absolute else float(diag_reg) * float(k.diagonal().mean())
    if rho == 0.0:
        return k, 0.0
    k = k.clone()
    k.diagonal().add_(rho)
    return k, rho


def _check_symmetric(k: torch.Tensor, *, func: str, arg: str) -> torch.Tensor:
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"{func}: {arg} must be square (n, n) (the train-train kernel), got "
                         f"shape {tuple(k.shape)}")
    scale = float(k.detach().abs().max()) if k.numel() else 0.0
    asym = float((k - k.T).detach().abs().max()) if k.numel() else 0.0
    if asym > 1e-8 * max(scale, 1e-300):
        raise ValueError(f"{func}: {arg} must be symmetric (a train-train kernel), but "
                         f"max|k - kᵀ| = {asym:.3g} relative to max|k| = {scale:.3g}; pass "
                         f"net.kernel(x_train) (x2=None), not a test-train kernel")
    return 0.5 * (k + k.T)


def _not_pd_message(func: str, arg: str, lam_min: float, lam_max: float, what: str) -> str:
    if lam_min < -1e-6 * max(abs(lam_max), 1e-300):
        hint = (f"pass diag_reg (absolute) > {-lam_min:.3g} to shift it, but a kernel this "
                f"indefinite is usually a bug (a test-train block, or a float32 kernel)")
    else:
        hint = ("pass diag_reg > 0 (e.g. diag_reg=1e-6, relative to the mean diagonal) to "
                "regularize it, or check that the training inputs have no duplicates")
    return (f"{func}: {arg} is not {what} (smallest eigenvalue {lam_min:.3g}, largest "
            f"{lam_max:.3g}); {hint}")


class Spectrum:
    """Ascending eigenvalues of a kernel (`eigenvalues`), for the error messages and checks
    that `time_factors` needs; `func`/`arg` name the caller and its kernel argument."""

    eigenvalues: torch.Tensor
    func: str
    arg: str
    _near_singular: str | None = None

    @property
    def lam_min(self) -> float:
        return float(self.eigenvalues[0])

    @property
    def lam_max(self) -> float:
        return float(self.eigenvalues[-1])

    def require_definite(self, why: str) -> None:
        """Raise the diag_reg error unless every eigenvalue is positive (invertible kernel)."""
        if self.eigenvalues.numel() and self.lam_min <= 0.0:
            raise ValueError(_not_pd_message(self.func, self.arg, self.lam_min, self.lam_max,
                                             f"positive definite, as {why} needs"))
        if self._near_singular is not None:
            raise ValueError(self._near_singular + f" ({why} needs an invertible kernel)")


class SymmetricEig(Spectrum):
    """Θ = V diag(λ) Vᵀ of a symmetric positive semi-definite kernel, computed once.

    Eigenvalues within `tol` = n · eps · max|λ| of zero are numerically zero (kept as zero:
    finite-time predictions have a limit there, t = ∞ needs them positive).

    Attributes:
        eigenvalues: (n,) ascending, exact zeros where numerically zero.
        eigenvectors: (n, n) orthonormal columns.
        reg: the ρ added to the diagonal.
        tol: the zero threshold.
    """

    def __init__(self, k: torch.Tensor, *, diag_reg: float, absolute: bool, func: str,
                 arg: str):
        self.func, self.arg = func, arg
        eps = source_eps(k)
        k = _check_symmetric(k, func=func, arg=arg)
        k, self.reg = regularize(k, diag_reg, absolute=absolute)
        # Near-singularity matters only for t = ∞ (require_definite): keep the error for then.
        try:
            check_not_near_singular(k, func=func, arg=arg, eps=eps)
            self._near_singular = None
        except ValueError as e:
            self._near_singular = str(e)
        lam, vec = torch.linalg.eigh(k)
        if not (torch.isfinite(lam).all() and torch.isfinite(vec).all()):
            raise FloatingPointError(f"{func}: the eigendecomposition of {arg} produced "
                                     f"non-finite values; the kernel is too ill-conditioned "
                                     f"for its dtype; pass diag_reg > 0")
        n = k.shape[0]
        lam_max_abs = float(lam.abs().max()) if n else 0.0
        self.tol = max(n, 1) * torch.finfo(lam.dtype).eps * lam_max_abs
        lam_min = float(lam[0]) if n else 0.0
        if lam_min < -self.tol:
            raise ValueError(_not_pd_message(func, arg, lam_min, float(lam[-1]),
                                             "positive semi-definite"))
        self.eigenvalues = torch.where(lam.abs() <= self.tol, torch.zeros_like(lam), lam)
        self.eigenvectors = vec



def source_eps(k: torch.Tensor) -> float:
    """Machine epsilon of the precision the kernel was computed in.

    `as_kernel_matrix` converts kernels to float64 and records the dtype they arrived in
    (a float32 kernel keeps float32's accuracy after the conversion).
    """
    return float(getattr(k, "widenets_source_eps", torch.finfo(k.dtype).eps))


def check_not_near_singular(k: torch.Tensor, *, func: str, arg: str, eps: float | None = None,
                            block: int = 1024) -> None:
    """Refuse a (regularized) train-train kernel with two numerically identical inputs.

    For inputs i != j the feature-space distance relative to their norms is
    g_ij = (k_ii + k_jj - 2 k_ij) / (k_ii + k_jj)  (0 for duplicated inputs). A pair with
    g_ij < √eps gives an eigenvalue below g_ij · k_ii, at the level of the kernel's own
    rounding error near c = 1 (arccos-type kernels lose half the digits there), so a solve would
    amplify that error to O(1): garbage (docs/math.md §near-singular). The same check
    serves every kernel ("nngp" and "ntk") and every exact solver (Cholesky, eigh at t = ∞).

    Raises:
        ValueError: naming the pair and diag_reg.
    """
    eps = source_eps(k) if eps is None else eps
    tau = math.sqrt(eps)
    n = k.shape[0]
    d = k.diagonal()
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        s = d[r0:r1, None] + d[None, :]
        g = (s - 2.0 * k[r0:r1]) / torch.where(s > 0, s, torch.ones_like(s))
        g = torch.where(s > 0, g, torch.zeros_like(g))
        rows = torch.arange(r0, r1, device=k.device)
        g[rows - r0, rows] = math.inf
        val, where = g.reshape(-1).min(0)
        if float(val) < tau:
            i, j = r0 + int(where) // n, int(where) % n
            raise ValueError(
                f"{func}: {arg} is numerically singular: training inputs {i} and {j} are the "
                f"same input as far as the kernel can tell (relative feature distance "
                f"{float(val):.2g} < {tau:.2g}, the accuracy of a kernel computed with eps "
                f"{eps:.2g}), so the solve would return noise; remove duplicated inputs or pass "
                f"diag_reg > 0 (e.g. diag_reg=1e-6, relative to the mean diagonal)")


def cholesky(k: torch.Tensor, *, diag_reg: float, absolute: bool, func: str,
             arg: str) -> torch.Tensor:
    """Lower Cholesky factor of the regularized symmetric kernel, with the diag_reg errors.

    Refuses kernels that are not positive definite and near-singular ones
    (`check_not_near_singular`).
    """
    eps = source_eps(k)
    k = _check_symmetric(k, func=func, arg=arg)
    k, _ = regularize(k, diag_reg, absolute=absolute)
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) != 0:
        lam = torch.linalg.eigvalsh(k)
        raise ValueError(_not_pd_message(func, arg, float(lam[0]), float(lam[-1]),
                                         "positive definite"))
    check_not_near_singular(k, func=func, arg=arg, eps=eps)
    return chol


def cho_solve(chol: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """k⁻¹ b from the Cholesky factor of k."""
    return torch.cholesky_solve(b, chol)


def as_times(t, *, func: str, discrete: bool, allow_inf: bool = True,
             dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, bool]:
    """Training times as a 1-D tensor, and whether `t` was a scalar.

    `t=None` and `t=inf` mean infinite time. With `discrete`, finite times are step counts and
    must be whole numbers.
    """
    if t is None:
        t = math.inf
    if isinstance(t, bool):
        raise TypeError(f"{func}: t must be a number, a 1-D tensor of times or None, got {t!r}")
    if isinstance(t, Real):
        tt, scalar = torch.tensor([float(t)], dtype=dtype), True
    else:
        tt = _to_tensor(t, func=func, arg="t", what="a number, a 1-D tensor of times or None")
        if tt.ndim > 1:
            raise ValueError(f"{func}: t must be a scalar or a 1-D tensor of times, got shape "
                             f"{tuple(tt.shape)}")
        scalar = tt.ndim == 0
        tt = tt.reshape(-1).to(dtype=dtype, device="cpu")
    if torch.isnan(tt).any() or (tt < 0).any():
        raise ValueError(f"{func}: t must be >= 0 (None for infinity), got "
                         f"{tt.tolist() if tt.numel() < 8 else 'a tensor with bad entries'}")
    if not allow_inf and torch.isinf(tt).any():
        raise ValueError(f"{func}: t must be finite here (t=None/inf is not supported)")
    if discrete:
        fin = tt[torch.isfinite(tt)]
        if (fin != fin.round()).any():
            raise ValueError(f"{func}: with discrete=True, t counts gradient-descent steps and "
                             f"must be whole numbers, got {fin[fin != fin.round()][:4].tolist()}")
    return tt, scalar


def time_factors(eig: SymmetricEig, t: torch.Tensor, *, learning_rate: float,
                 discrete: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral factors of the MSE dynamics for every time (Lee et al. 2019, eqs. 8-11).

    With λ the eigenvalues of Θ and η the learning rate:

        decay[t, i] = exp(-η λ_i t)      (continuous)   or (1 - η λ_i)^t   (discrete=True)
        gain[t, i]  = (1 - decay[t, i]) / λ_i            (→ η t as λ_i → 0)

    so that e^{-ηΘt} = V diag(decay) Vᵀ and Θ⁻¹(I - e^{-ηΘt}) = V diag(gain) Vᵀ.

    Args:
        eig: the eigendecomposition.
        t: (T,) times (continuous) or step counts (discrete); inf allowed.

    Returns:
        decay, gain: (T, n) tensors.

    Raises:
        ValueError: t = ∞ with a singular kernel (suggests diag_reg), or discrete t = ∞ with a
            learning rate at which gradient descent does not converge.
        FloatingPointError: discrete gradient descent at a finite t > 0 with a learning rate
            above the largest stable one, 2 / lambda_max (the outputs diverge).
    """
    lam = eig.eigenvalues
    eta = learning_rate
    t = t.to(device=lam.device, dtype=lam.dtype)[:, None]
    inf = torch.isinf(t)
    if bool(inf.any()):
        eig.require_definite("t = None (infinite training time)")
        if discrete and float((eta * lam).max()) >= 2.0:
            raise ValueError(f"{eig.func}: discrete gradient descent diverges at t = inf: "
                             f"learning_rate * lambda_max = {eta * eig.lam_max:.4g} >= 2; "
                             f"use learning_rate < max_learning_rate(k_train_train) = "
                             f"{2.0 / eig.lam_max:.4g}")
    if discrete and eig.lam_max > 0 and eta * eig.lam_max > 2.0 * (1.0 + 1e-12) and \
            bool((t[~inf] > 0).any()):
        # |1 - ηλ_max| > 1: the mode λ_max grows like |1 - ηλ_max|^t (Lee et al. 2019 §2.4).
        raise FloatingPointError(
            f"{eig.func}: discrete gradient descent diverges at this learning rate: "
            f"learning_rate * lambda_max = {eta * eig.lam_max:.4g} > 2, so the outputs grow "
            f"like {abs(1 - eta * eig.lam_max):.4g}^t; the largest stable learning rate is "
            f"2 / lambda_max = {2.0 / eig.lam_max:.4g} (wn.predict.max_learning_rate) and the "
            f"critical rate 2 / (lambda_min + lambda_max) = "
            f"{2.0 / (eig.lam_min + eig.lam_max):.4g}")
    t_fin = torch.where(inf, torch.zeros_like(t), t)
    zero = lam == 0
    lam_safe = torch.where(zero, torch.ones_like(lam), lam)
    if discrete:
        base = 1.0 - eta * lam
        pos = base > 0
        log_base = torch.log1p(-eta * torch.where(pos, lam, torch.zeros_like(lam)))
        # (1 - ηλ)^t = exp(t log1p(-ηλ)) keeps all digits for small ηλ; a negative base
        # (ηλ > 1, oscillating) takes the integer power directly.
        one_minus = torch.where(pos, -torch.expm1(t_fin * log_base), 1.0 - base ** t_fin)
        decay = torch.where(pos, torch.exp(t_fin * log_base), base ** t_fin)
    else:
        one_minus = -torch.expm1(-eta * lam * t_fin)
        decay = torch.exp(-eta * lam * t_fin)
    gain = torch.where(zero, eta * t_fin, one_minus / lam_safe)
    decay = torch.where(inf, torch.zeros_like(decay), decay)
    gain = torch.where(inf, (1.0 / lam_safe).expand_as(gain), gain)
    return decay, gain
