"""exp(-ηAt) V and A⁻¹(I - exp(-ηAt)) V by the Lanczos method, for kernels of any size.

The finite-time predictions of MSE gradient descent (Lee et al. 2019, eqs. 9-11) need the two
matrix functions of the regularized train-train kernel A = Θ + ρI

    decay(A) = exp(-ηAt)          (or (I - ηA)^t for discrete gradient descent)
    gain(A)  = A⁻¹ (I - decay(A))

applied to the residual r = f_0(X) - Y. In memory they come from the eigendecomposition; here
only products with A are used (one pass over a tile store per iteration), so kernels larger
than memory are handled. Method and error estimate: docs/math.md §krylov (derivation in
docs/math/solve.md, "Finite t for stores that do not fit"):

* m Lanczos steps from q₁ = v / ||v|| give A Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ with Q_m
  orthonormal (full reorthogonalization) and T_m tridiagonal; then
  f(A) v ≈ ||v|| Q_m f(T_m) e₁ for f = decay, gain (every time t from one basis).
* Error estimate: the change of the approximation over the last `WINDOW` steps,
  ||f_m - f_{m-WINDOW}|| (= the difference of the coefficient vectors, Q_m orthonormal). It
  bounds the error of f_m whenever that error at least halved over those steps.

Several columns of V (and all times) are run in lockstep: one product with A per step serves
every column.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .._memory import memory_budget
from ._linalg import (
    Spectrum,
    as_targets,
    as_times,
    check_diag_reg,
    check_positive,
    time_factors,
)
from .solver import SolveError, _Progress, _rho, as_operator, operator_device

__all__ = ["krylov_dynamics", "KrylovDynamics"]

_FUNC = "krylov_dynamics"
WINDOW = 5      # steps over which the change of the approximation estimates its error


@dataclass
class KrylovDynamics:
    """The result of `krylov_dynamics`.

    Attributes:
        decay: exp(-ηAt) v (or (I - ηA)^t v), shaped like v with a leading time axis when t is
            1-D: (T, n, k), (T, n), (n, k) or (n,).
        gain: A⁻¹ (I - exp(-ηAt)) v, shaped like decay.
        error_decay: (T, k) estimated ||error of decay|| / ||v|| per time and column.
        error_gain: (T, k) estimated ||error of gain|| / ||gain|| per time and column.
        gain_energy: (T, k) gainᵀ A gain per time and column (from T_m, no extra product).
        iterations: Lanczos steps (= products with the kernel) of the longest column.
        converged: whether every estimate is <= tol.
        rho: the ρ added to the diagonal.
        ritz_values: (m,) the Ritz values of the longest column (eigenvalue estimates of A).
        passes: products with the kernel (passes over a store).
        seconds: wall-clock time.

    Example:
        >>> import torch, widenets as wn
        >>> k = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> out = wn.predict.krylov_dynamics(k, torch.ones(3, dtype=torch.float64), 1.0)
        >>> out.decay                                        # exp(-λ t) for t = 1
        tensor([0.3679, 0.1353, 0.0498], dtype=torch.float64)
        >>> out.converged, out.iterations                    # exact after 3 steps
        (True, 3)
    """

    decay: torch.Tensor
    gain: torch.Tensor
    error_decay: torch.Tensor
    error_gain: torch.Tensor
    gain_energy: torch.Tensor
    iterations: int
    converged: bool
    rho: float
    ritz_values: torch.Tensor
    passes: int
    seconds: float


class _Ritz(Spectrum):
    """The Ritz values of one column, as the eigendecomposition `time_factors` expects."""

    def __init__(self, theta: torch.Tensor):
        self.eigenvalues, self.func, self.arg = theta, _FUNC, "k_train"


def _coefficients(alpha, beta, m, norm, tt, rho, learning_rate, discrete):
    """||v|| f(T_m) e₁ for f = decay, gain at every time: (m, T) each, gainᵀ T gain (T,), the
    Ritz values (m,) and the a posteriori bound on the decay error (T,) (docs/math/solve.md)."""
    t_mat = torch.diag(alpha[:m])
    if m > 1:
        off = beta[:m - 1]
        t_mat = t_mat + torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(t_mat)
    zero = theta.abs() <= m * torch.finfo(theta.dtype).eps * float(theta.abs().max())
    theta = torch.where(zero, torch.zeros_like(theta), theta)
    decay, gain = time_factors(_Ritz(theta), tt, learning_rate=learning_rate,
                               discrete=discrete)                       # (T, m) each
    w = norm * s[0]                                                     # ||v|| Sᵀ e₁
    y_decay = s @ (decay * w).T                                         # (m, T)
    y_gain = s @ (gain * w).T
    energy = ((gain * w) ** 2 * theta).sum(1)                           # yᵀ T y
    # ||e^{-ηAt} v - Q y_decay|| <= β_m ∫ e^{-ρ(τ-s)} |e_mᵀ y(s)| ds (docs/math/solve.md)
    bound = float(beta[m - 1]) * _residual_integral(norm * s[m - 1] * s[0], theta, tt, rho,
                                                    learning_rate, discrete)
    return y_decay, y_gain, energy, theta, bound


_GAUSS = tuple(torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(8))
_PANELS = 64            # geometric panels of the s-integral (8 Gauss-Legendre nodes each)
_STEPS = 2048           # discrete steps summed term by term (the tail by the triangle inequality)


def _residual_integral(coef, theta, tt, rho, eta, discrete):
    """(T,) ∫_0^τ e^{-ρ(τ-s)} |Σ_i coef_i e^{-θ_i s}| ds, τ = ηt (continuous), or
    η Σ_{s<t} c^{t-1-s} |Σ_i coef_i (1 - ηθ_i)^s| with c = max(|1 - ηρ|, |1 - ηθ_i|).

    The modulus is integrated, not bounded term by term: the terms cancel (e_mᵀ e^{-sT} e₁
    is tiny for small s) and a term-by-term bound is off by orders of magnitude.
    """
    out = torch.zeros(tt.numel(), dtype=torch.float64)
    if discrete:
        a = 1.0 - eta * theta
        c = max(abs(1.0 - eta * rho), float(a.abs().max()))
        for i, t in enumerate(tt.tolist()):
            n_s = int(min(t, _STEPS))
            steps = torch.arange(n_s, dtype=torch.float64)
            phi = (coef[:, None] * a[:, None] ** steps[None, :]).sum(0).abs()
            if math.isinf(t):
                if c < 1:
                    continue                       # decay(∞) = 0, its approximation too
                total = float(phi.sum())
                tail = (coef.abs() * a.abs() ** n_s / (1 - a.abs())).sum()
            else:
                total = float((c ** (t - 1 - steps) * phi).sum())
                rest = t - n_s                     # steps n_s .. t-1, term by term
                aa = a.abs()
                same = (c - aa).abs() <= 1e-12
                geo = torch.where(same, rest * c ** max(rest - 1, 0),
                                  (c ** rest - aa ** rest) /
                                  torch.where(same, torch.ones_like(aa), c - aa))
                tail = (coef.abs() * aa ** n_s * geo).sum() if rest > 0 else 0.0
            out[i] = eta * (total + float(tail))
        return out
    lo_theta = float(theta[theta > 0].min()) if bool((theta > 0).any()) else 0.0
    hi_theta = float(theta.max()) if theta.numel() else 0.0
    x, w = _GAUSS
    for i, t in enumerate(tt.tolist()):
        tau = eta * t
        if tau == 0 or hi_theta <= 0:
            continue
        if math.isinf(tau):
            if rho > 0:
                continue                           # decay(∞) = 0, its approximation too
            if lo_theta <= 0:
                out[i] = math.inf
                continue
            upper = 60.0 / lo_theta                # then the rest is bounded term by term
        else:
            upper = tau
        first = min(upper / 2, 1e-3 / hi_theta)
        edges = torch.cat([torch.zeros(1, dtype=torch.float64),
                           torch.logspace(math.log10(first), math.log10(upper), _PANELS,
                                          dtype=torch.float64)])
        left, right = edges[:-1, None], edges[1:, None]
        nodes = (left + (right - left) * (x[None, :] + 1) / 2).reshape(-1)
        weights = ((right - left) / 2 * w[None, :]).reshape(-1)
        phi = (coef[:, None] * torch.exp(-theta[:, None] * nodes[None, :])).sum(0).abs()
        if not math.isinf(tau):
            phi = phi * torch.exp(-rho * (tau - nodes))
        total = float((weights * phi).sum())
        if math.isinf(tau):
            total += float((coef.abs() * torch.exp(-theta * upper) / theta).sum())
        out[i] = total
    return out


def _default_max_iter(n: int, k: int, device=None) -> int:
    """min(n, 500), fewer if the Lanczos vectors would take over half the memory budget
    (`widenets._memory.memory_budget`) of the device they live on, a quarter of its available
    memory."""
    fit = int(memory_budget(device=device) // 2 // max(1, 8 * n * k)) - 1
    return max(1, min(n, 500, fit))


def krylov_dynamics(k_train, v, t, *, learning_rate: float = 1.0, diag_reg: float = 0.0,
                    diag_reg_absolute: bool = False, discrete: bool = False,
                    kernel: str = "ntk", tol: float = 1e-8, max_iter: int | None = None,
                    client=None, progress: bool = False,
                    check_store: str | None = "crc") -> KrylovDynamics:
    """exp(-ηAt) v and A⁻¹(I - exp(-ηAt)) v (A = K + ρI) by Lanczos, for kernels of any size.

    These are the two factors of the finite-time MSE predictions (docs/math.md §krylov):
    `gradient_descent_mse` uses them for tile stores too large for the eigendecomposition.
    Only products with the kernel are needed: a store is streamed, one pass per step.

    Args:
        k_train: the (n, n) kernel: a tensor, numpy array, `wn.Kernel` (its `kernel` field), a
            tile store (directory or `wn.tiles.open` array) or a `wn.tiles.StoreOperator`.
        v: (n,) or (n, k) vectors (all columns in one pass per step).
        t: a number or 1-D tensor of times (steps when discrete; inf allowed: gain = A⁻¹ v,
            the conjugate-gradient solution).
        learning_rate: η.
        diag_reg: ρ added to the diagonal, relative to the mean diagonal unless
            diag_reg_absolute.
        diag_reg_absolute: True to add diag_reg itself.
        discrete: (I - ηA)^t instead of exp(-ηAt).
        kernel: which kernel of a Kernel / a two-kernel store.
        tol: stop when every error estimate (decay relative to ||v||, gain relative to
            ||gain||) is <= tol.
        max_iter: most Lanczos steps (default min(n, 500), fewer if the n x k x steps Lanczos
            vectors would not fit in a quarter of the memory).
        client: a `dask.distributed.Client` for stores.
        progress: print the step, the worst error estimate and an ETA to stderr.
        check_store: "crc", "complete" or None (see `wn.predict.solve`).

    Returns:
        A `KrylovDynamics` (decay, gain, error estimates, iterations).

    Raises:
        SolveError: the estimate did not reach tol in max_iter steps (`.solution` holds the
            last approximation, a KrylovDynamics).
        ValueError: bad arguments; t = inf with a singular kernel (names diag_reg); Lanczos
            vectors that do not fit in memory.
        FloatingPointError: discrete gradient descent at a divergent learning rate.

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.randn(40, 3, dtype=torch.float64)
        >>> k = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1)).kernel(x, get="ntk")
        >>> v = torch.randn(40, dtype=torch.float64)
        >>> out = wn.predict.krylov_dynamics(k, v, torch.tensor([0.1, 1.0]), tol=1e-10)
        >>> lam, vec = torch.linalg.eigh(k)
        >>> exact = vec @ (torch.exp(-lam * 1.0) * (vec.T @ v))
        >>> bool(torch.allclose(out.decay[1], exact, atol=1e-9)), out.decay.shape
        (True, torch.Size([2, 40]))
    """
    start = time.perf_counter()
    learning_rate = check_positive(learning_rate, func=_FUNC, arg="learning_rate")
    diag_reg = check_diag_reg(diag_reg, func=_FUNC)
    if not isinstance(discrete, bool):
        raise TypeError(f"{_FUNC}: discrete must be True or False, got {discrete!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"{_FUNC}: tol must be a number in (0, 1), got {tol!r}")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int)
                                 or max_iter < 1):
        raise ValueError(f"{_FUNC}: max_iter must be a positive int or None, got {max_iter!r}")
    tt, scalar = as_times(t, func=_FUNC, discrete=discrete)
    op, _ = as_operator(k_train, kernel=kernel, func=_FUNC, client=client, check=check_store)
    n = op.shape[0]
    # the n-vectors on an in-memory kernel's device; the small tridiagonal problem on the CPU
    b, vector = as_targets(v, func=_FUNC, n=n, arg="v", device=operator_device(op))
    dev = b.device
    k = b.shape[1]
    steps = _default_max_iter(n, k, dev) if max_iter is None else min(max_iter, n)
    need = (steps + 1) * n * k * 8
    if need > memory_budget(device=dev):
        raise ValueError(f"{_FUNC}: max_iter={steps} Lanczos steps keep {steps + 1} blocks of "
                         f"{n} x {k} vectors ({need / 1e9:.2f} GB), more than the memory "
                         f"budget (half of the available memory); lower max_iter or pass fewer "
                         f"columns of v")
    rho = _rho(op.diagonal(), diag_reg, diag_reg_absolute)
    passes0 = op.passes

    norms_dev = torch.linalg.norm(b, dim=0)
    norms = norms_dev.cpu()
    live = norms > 0
    basis = torch.empty(steps + 1, n, k, dtype=torch.float64, device=dev)  # pages touched as used
    basis[0] = b / torch.where(norms_dev > 0, norms_dev, torch.ones_like(norms_dev))
    alpha = torch.zeros(steps, k, dtype=torch.float64)
    beta = torch.zeros(steps, k, dtype=torch.float64)
    size = torch.zeros(k, dtype=torch.long)          # Lanczos steps in each column's T
    exhausted = ~live                                # invariant subspace reached (exact)
    n_t = tt.numel()
    err_d = torch.zeros(n_t, k, dtype=torch.float64)
    err_g = torch.zeros(n_t, k, dtype=torch.float64)
    bar = _Progress(progress, tol)
    ok = torch.zeros(k, dtype=torch.bool)
    every, t_est, worst = 1, 0.0, math.inf
    for j in range(steps):
        q = basis[j]
        t_prod = time.perf_counter()
        w = op.matmul(q) + rho * q                   # one pass over the kernel, all columns
        a_dev = (q * w).sum(0)
        w = w - a_dev * q
        a = a_dev.cpu()
        if j:
            w = w - beta[j - 1].to(dev) * basis[j - 1]
        for _ in range(2):                           # full reorthogonalization, twice
            c = torch.einsum("jnk,nk->jk", basis[:j + 1], w)
            w = w - torch.einsum("jnk,jk->nk", basis[:j + 1], c)
        bt_dev = torch.linalg.norm(w, dim=0)
        bt = bt_dev.cpu()
        grow = ~exhausted
        alpha[j] = torch.where(grow, a, alpha[j])
        size = size + grow.long()
        scale = torch.maximum(alpha[:j + 1].abs().max(0).values, beta[:j + 1].max(0).values)
        stop = grow & (bt <= 1e-13 * torch.where(scale > 0, scale, torch.ones_like(scale)))
        exhausted = exhausted | stop
        beta[j] = torch.where(exhausted, torch.zeros_like(bt), bt)
        basis[j + 1] = torch.where(exhausted.to(dev), torch.zeros_like(w),
                                   w / torch.where(bt_dev > 0, bt_dev, torch.ones_like(bt_dev)))
        t_prod = time.perf_counter() - t_prod
        if (j + 1) % every and j + 1 < steps and not bool(exhausted.all()):
            continue
        # The estimates cost O(k m³): checked every `every` steps, so that they take at most
        # ~10% of the time of the products (every step for a store; fewer in memory).
        t_est = time.perf_counter()
        err_d, err_g = _estimates(alpha, beta, size, exhausted, norms, tt, rho,
                                  learning_rate, discrete)
        t_est = time.perf_counter() - t_est
        every = max(1, min(WINDOW, math.ceil(t_est / max(0.1 * t_prod, 1e-9))))
        ok = ((err_d <= tol) & (err_g <= tol)).all(0)
        worst = float(torch.cat([err_d.reshape(-1), err_g.reshape(-1)]).max())
        bar.update(j + 1, worst)
        if bool(ok.all()):
            break
    bar.update(int(size.max()), worst, final=True)

    decay = torch.zeros(n_t, n, k, dtype=torch.float64, device=dev)
    gain = torch.zeros(n_t, n, k, dtype=torch.float64, device=dev)
    energy = torch.zeros(n_t, k, dtype=torch.float64)
    ritz = torch.zeros(0, dtype=torch.float64)
    for c in range(k):
        m = int(size[c])
        if m == 0:
            continue
        y_d, y_g, en, theta, _ = _coefficients(alpha[:, c], beta[:, c], m, norms[c], tt,
                                               rho, learning_rate, discrete)
        decay[:, :, c] = (basis[:m, :, c].T @ y_d.to(dev)).T       # Q_m y: (T, n)
        gain[:, :, c] = (basis[:m, :, c].T @ y_g.to(dev)).T
        energy[:, c] = en
        if m >= ritz.numel():
            ritz = theta
    def shaped(x):
        x = x[..., 0] if vector else x
        return x[0] if scalar else x

    result = KrylovDynamics(
        decay=shaped(decay), gain=shaped(gain),
        error_decay=err_d, error_gain=err_g, gain_energy=energy,
        iterations=int(size.max()), converged=bool(ok.all()), rho=rho, ritz_values=ritz,
        passes=op.passes - passes0, seconds=time.perf_counter() - start)
    if not result.converged:
        raise SolveError(
            f"{_FUNC}: the Lanczos approximation did not reach tol={tol:g} in {steps} steps "
            f"(worst error estimate {worst:.3g}); raise max_iter (memory: n x k x 8 bytes per "
            f"step), ask for smaller times (the steps needed grow like sqrt(η t λ_max)), or "
            f"pass diag_reg > 0", result)
    return result


def _estimates(alpha, beta, size, exhausted, norms, tt, rho, learning_rate, discrete):
    """(T, k) error estimates of decay (relative to ||v||) and gain (relative to ||gain||)."""
    k = alpha.shape[1]
    n_t = tt.numel()
    err_d = torch.zeros(n_t, k, dtype=torch.float64)
    err_g = torch.zeros(n_t, k, dtype=torch.float64)
    for c in range(k):
        m = int(size[c])
        if float(norms[c]) == 0 or bool(exhausted[c]):
            # v = 0, or the Krylov space is invariant under A: the approximation is exact.
            continue
        if m <= WINDOW:
            err_d[:, c] = err_g[:, c] = math.inf
            continue
        y_d, y_g, _, _, bound = _coefficients(alpha[:, c], beta[:, c], m, norms[c], tt,
                                              rho, learning_rate, discrete)
        p_d, p_g, _, _, _ = _coefficients(alpha[:, c], beta[:, c], m - WINDOW, norms[c], tt,
                                          rho, learning_rate, discrete)
        d_d = y_d.clone()
        d_d[:m - WINDOW] -= p_d
        d_g = y_g.clone()
        d_g[:m - WINDOW] -= p_g
        # decay: the larger of the change and the a posteriori bound (which holds even
        # before the Ritz values reach the small eigenvalues, where the change is ~0).
        err_d[:, c] = torch.maximum(torch.linalg.norm(d_d, dim=0), bound) / norms[c]
        g_norm = torch.linalg.norm(y_g, dim=0)
        err_g[:, c] = torch.linalg.norm(d_g, dim=0) / torch.where(g_norm > 0, g_norm,
                                                                  torch.ones_like(g_norm))
    return err_d, err_g
