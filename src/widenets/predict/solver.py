"""(K + ρI)⁻¹ Y for kernels of any size: Cholesky in memory, preconditioned CG otherwise.

`solve(k_train, y, ...)` is the one linear solver behind the predictions of infinite time
(`gp_inference`, `gradient_descent_mse(t=None)`). Its only access to the kernel in the iterative
method is matrix products, so a kernel stored on disk by `wn.tiles` is streamed tile by tile
(`wn.tiles.StoreOperator`, optionally across Dask workers) and never held in memory.

Method (docs/math.md §solvers):

* Cholesky: A = K + ρI = L Lᵀ, X = L⁻ᵀ L⁻¹ Y, with the positive-definiteness and
  near-singularity checks of `widenets.predict` (errors name diag_reg).
* Preconditioned conjugate gradients on A X = Y, one independent CG recurrence per column of Y
  run in lockstep, so one product with K (one pass over a store) serves every column per
  iteration. Stops when every column's relative residual ||y - A x|| / ||y|| <= tol.
* Preconditioners from a rank-r approximation K ≈ U Λ Uᵀ (U orthonormal n × r):
  "nystrom" (randomized Nyström, Frangella, Tropp & Udell 2023: one product K Ω with a Gaussian
  sketch Ω, i.e. one pass over a store; only the eigenpairs above the sketch's resolution
  (tr K - Σ λ̂)/r are kept) or "pivoted_cholesky" (greedy partial Cholesky on the
  largest residual diagonal, columns of K read in blocks). Both apply
  P⁻¹ = (λ_r + ρ) U (Λ + ρI)⁻¹ Uᵀ + (I - U Uᵀ).
* A checkpoint file (x, r, p, the preconditioner) written atomically every
  `checkpoint_seconds` lets a killed solve resume exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import torch

from .._checks import check_choice, check_int
from .._memory import memory_budget
from ._linalg import (
    KERNEL_NAMES,
    _check_symmetric,
    as_kernel_matrix,
    as_targets,
    check_diag_reg,
    cholesky,
    is_store,
    restore_targets_shape,
    source_eps,
)

__all__ = ["solve", "Solution", "SolveError"]

METHODS = ("auto", "cholesky", "cg")
PRECONDITIONERS = ("nystrom", "pivoted_cholesky", None)
_FUNC = "solve"


class SolveError(FloatingPointError):
    """The iterative solve did not reach the tolerance; `.solution` holds where it got to.

    Example:
        >>> import torch, widenets as wn
        >>> k = torch.tensor([[1.0, 0.0], [0.0, 1e-12]], dtype=torch.float64)
        >>> try:
        ...     wn.predict.solve(k, torch.ones(2, dtype=torch.float64), method="cg",
        ...                      preconditioner=None, max_iter=1, tol=1e-12)
        ... except wn.predict.SolveError as e:
        ...     print(e.solution.iterations)
        1
    """

    def __init__(self, message: str, solution: Solution | None = None):
        super().__init__(message)
        self.solution = solution


@dataclass
class Solution:
    """The result of `solve`.

    Attributes:
        alpha: (K + ρI)⁻¹ y, shaped like y ((n,) or (n, k)), float64.
        method: "cholesky" or "cg".
        iterations: CG iterations made (0 for Cholesky), counting those before a resume.
        residuals: (iterations + 1, k) relative residual ||y - A x|| / ||y|| of each column per
            iteration (CG's recursive residual; one row for Cholesky).
        residual: (k,) the true relative residual of the returned alpha, from one extra product.
        converged: whether every column reached tol.
        preconditioner, rank: the preconditioner used (None for none or Cholesky) and its rank.
        rho: the ρ added to the diagonal.
        seconds: wall-clock time; seconds_per_iteration: mean time of one CG iteration.
        resumed_from: the iteration the solve continued from (0 if it started afresh).
        passes: products with K made (each a full pass over a store's tiles).

    Example:
        >>> import torch, widenets as wn
        >>> k = torch.eye(3, dtype=torch.float64) * 2
        >>> sol = wn.predict.solve(k, torch.ones(3, dtype=torch.float64), method="cg")
        >>> sol.alpha, sol.iterations, sol.converged
        (tensor([0.5000, 0.5000, 0.5000], dtype=torch.float64), 1, True)
    """

    alpha: torch.Tensor
    method: str
    iterations: int
    residuals: torch.Tensor
    residual: torch.Tensor
    converged: bool
    preconditioner: str | None
    rank: int
    rho: float
    seconds: float
    seconds_per_iteration: float = math.nan
    resumed_from: int = 0
    passes: int = 0
    setup_seconds: float = 0.0
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ operators
class DenseOperator:
    """An in-memory (n, n) kernel as an operator (the interface of `wn.tiles.StoreOperator`).

    Args:
        k: the (n, n) float64 tensor.
    """

    def __init__(self, k: torch.Tensor):
        self.k = k
        self.shape = tuple(k.shape)
        self.passes = 0
        self.symmetric = True
        self.nbytes = k.numel() * k.element_size()

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return self.k @ v

    def diagonal(self) -> torch.Tensor:
        return self.k.diagonal().clone()

    def columns(self, idx) -> torch.Tensor:
        return self.k[:, torch.as_tensor(np.asarray(idx), dtype=torch.long)]

    def load(self) -> torch.Tensor:
        return self.k


def as_operator(k_train, *, kernel: str = "ntk", func: str = _FUNC, client=None,
                check: str | None = "crc"):
    """A kernel argument as an operator: a `DenseOperator` in memory, a store streamed.

    Args:
        k_train: a `wn.Kernel`, tensor, numpy array, a store directory or `wn.tiles.open`'s lazy
            array, or an operator (anything with `matmul`, `diagonal`, `columns`, `shape`).
        kernel: which kernel of a Kernel / a two-kernel store.
        func: the public function, for errors.
        client: a Dask client for stores.
        check: the store check (see `wn.tiles.StoreOperator`).

    Returns:
        (operator, is_store).
    """
    if all(hasattr(k_train, a) for a in ("matmul", "diagonal", "columns", "shape")) and \
            not isinstance(k_train, (torch.Tensor, np.ndarray)):
        return k_train, not isinstance(k_train, DenseOperator)
    if is_store(k_train):
        from ..tiles import StoreOperator

        store = k_train if isinstance(k_train, (str, os.PathLike)) else k_train.store
        from ..tiles.store import read_metadata

        _, meta = read_metadata(store, func=func)
        get = kernel if kernel in meta["get"] else (meta["get"][0] if len(meta["get"]) == 1
                                                    else kernel)
        op = StoreOperator(store, get=get, client=client, check=check)
        if op.shape[0] != op.shape[1] or not op.symmetric:
            raise ValueError(f"{func}: k_train must be a symmetric train-train kernel, but the "
                             f"store {os.fspath(store)!r} holds a {op.shape} kernel of two input "
                             f"sets; compute it with x2=None")
        return op, True
    k = as_kernel_matrix(k_train, func=func, arg="k_train", which=kernel)
    eps = source_eps(k)
    k = _check_symmetric(k, func=func, arg="k_train")
    op = DenseOperator(k)
    op.source_eps = eps
    return op, False


# ------------------------------------------------------------------------------ preconditioners
class LowRankPreconditioner:
    """P⁻¹ = (λ_r + ρ) U (Λ + ρI)⁻¹ Uᵀ + (I - U Uᵀ) from K ≈ U diag(λ) Uᵀ (docs/math.md
    §Iterative solvers, "preconditioners")."""

    def __init__(self, u: torch.Tensor, lam: torch.Tensor, rho: float):
        keep = lam > 0
        self.u, self.lam, self.rho = u[:, keep], lam[keep], rho
        self.rank = int(self.lam.numel())
        if self.rank:
            lam_r = float(self.lam.min())
            self.scale = (lam_r + rho) / (self.lam + rho) - 1.0     # (r,)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        if not self.rank:
            return r
        return r + self.u @ (self.scale[:, None] * (self.u.T @ r))


def _nystrom(op, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomized Nyström K ≈ U diag(λ) Uᵀ (Frangella, Tropp & Udell 2023, Alg. 2.1).

    Memory: about two n × r float64 arrays at once (Ω and Y during the product; Y_ν formed in
    place; then B and its Q; then Q and U): the thin SVD of B goes through B = QR (Householder,
    so U stays orthonormal to rounding) and the r × r SVD of R, instead of an n × r SVD of B
    with its workspace next to Ω, Y and Y_ν (at n = 50,000 and r = 256: 0.2 GB at a time
    against ~0.6 GB).
    """
    n = op.shape[0]
    g = torch.Generator().manual_seed(seed)         # drawn on the CPU: the same Ω on any device
    omega, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64).to(
        operator_device(op)))
    y = op.matmul(omega)                                       # one pass over the kernel
    nu = math.sqrt(n) * torch.finfo(torch.float64).eps * float(torch.linalg.norm(y))
    y.add_(omega, alpha=nu)                                    # Y_ν = Y + νΩ (stability)
    w = omega.T @ y
    del omega
    w = (w + w.T) / 2
    c, info = torch.linalg.cholesky_ex(w)
    if int(info) != 0:
        c, _ = torch.linalg.cholesky_ex(w + 1e-10 * float(w.diagonal().abs().max()) *
                                        torch.eye(rank, dtype=w.dtype, device=w.device))
    b = torch.linalg.solve_triangular(c, y.T, upper=False).T   # B = Y_ν C⁻ᵀ
    del y
    q, r = torch.linalg.qr(b)
    del b
    ur, s, _ = torch.linalg.svd(r)                             # B = (Q U_R) Σ Wᵀ
    u = q @ ur
    lam = torch.clamp(s ** 2 - nu, min=0.0)
    # Keep the eigenpairs the sketch resolves (docs/math.md §solvers, "resolution"): K - K̂ is
    # positive semi-definite, so E = tr K - Σ λ̂_i = tr(K - K̂) is exact, and the spectral error
    # of a Gaussian sketch of rank r is typically about E / r. Directions with λ̂_i <= E / r
    # are mixtures of eigenvectors; scaling them by λ̂_r / λ̂_i spreads the clusters CG would
    # otherwise handle in a few steps (rank 256 took 50 iterations against 29 without a
    # preconditioner on a kernel of 3,000 inputs in 300 dimensions, tests/predict; and more
    # iterations than none on the 20,000- and 50,000-input stores of benchmarks/solve.py).
    resolution = max(float(op.diagonal().to(torch.float64).sum()) - float(lam.sum()), 0.0) / rank
    keep = lam > resolution
    return u[:, keep].contiguous(), lam[keep].clone()


def _pivoted_cholesky(op, rank: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy pivoted partial Cholesky K ≈ L Lᵀ, then L = U diag(√λ) Wᵀ (thin SVD).

    Pivots are taken `block` at a time (the largest residual diagonal entries), so a store
    is read about rank / block times; within a block every step is an exact Cholesky step.
    """
    n = op.shape[0]
    d = op.diagonal().to(torch.float64)
    scale = float(d.max()) if n else 0.0
    lmat = torch.zeros(n, rank, dtype=torch.float64, device=d.device)
    m = 0
    chosen = torch.zeros(n, dtype=torch.bool, device=d.device)
    while m < rank:
        cand = torch.where(chosen, torch.full_like(d, -math.inf), d)
        s = min(block, rank - m)
        idx = torch.topk(cand, s).indices
        idx = idx[cand[idx] > 1e-14 * scale]
        if idx.numel() == 0:
            break
        cols = op.columns(idx.cpu().numpy()).to(torch.float64)  # (n, s)
        for t, p in enumerate(idx.tolist()):
            col = cols[:, t] - lmat[:, :m] @ lmat[p, :m]
            piv = float(col[p])
            chosen[p] = True
            if piv <= 1e-14 * scale:
                continue
            lmat[:, m] = col / math.sqrt(piv)
            d = d - lmat[:, m] ** 2
            m += 1
            if m == rank:
                break
    u, s, _ = torch.linalg.svd(lmat[:, :m], full_matrices=False)
    return u, s ** 2


# ------------------------------------------------------------------------------ checkpoints
def _fingerprint(op, b: torch.Tensor, rho: float, precond, rank: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(b.detach().cpu().numpy()).view(np.uint8).reshape(-1).data)
    if hasattr(op, "meta"):
        what = {"store": op.meta.get("uuid"), "name": op.name}
    else:
        k = op.load()
        sample = np.ascontiguousarray(k.reshape(-1)[::max(1, k.numel() // 4096)].cpu().numpy())
        h.update(sample.view(np.uint8).data)
        h.update(np.ascontiguousarray(k.diagonal().cpu().numpy()).view(np.uint8).data)
        what = {"dense": list(k.shape)}
    return json.dumps({"kernel": what, "rhs_sha256": h.hexdigest(), "rho": rho,
                       "preconditioner": precond, "rank": rank, "seed": seed}, sort_keys=True)


def _save_checkpoint(path: str, state: dict) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **state)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_checkpoint(path: str, fingerprint: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{_FUNC}: the checkpoint {path!r} is unreadable ({e}); delete it to "
                         f"start the solve afresh") from e
    if str(state["fingerprint"]) != fingerprint:
        raise ValueError(f"{_FUNC}: the checkpoint {path!r} belongs to a different solve "
                         f"(kernel, right-hand side, diag_reg or preconditioner differ); pass "
                         f"another checkpoint path or delete it")
    return state


# ------------------------------------------------------------------------------ progress
class _Progress:
    """One status line on stderr: iteration, worst residual, time per iteration, ETA."""

    def __init__(self, enabled: bool, tol: float, stream=None):
        self.enabled, self.tol = enabled, tol
        self.stream = stream or sys.stderr
        self.history: list[tuple[float, float]] = []

    def eta(self, res: float) -> float:
        """Seconds left, from the recent geometric rate of the residual."""
        h = self.history[-20:]
        if len(h) < 3 or res <= self.tol:
            return math.nan
        (t0, r0), (t1, r1) = h[0], h[-1]
        if r1 >= r0 or r1 <= 0:
            return math.nan
        rate = (math.log(r0) - math.log(r1)) / (len(h) - 1)     # log decrease per iteration
        per_it = (t1 - t0) / (len(h) - 1)
        return math.log(res / self.tol) / rate * per_it

    def update(self, it: int, res: float, final: bool = False) -> None:
        self.history.append((time.perf_counter(), max(res, 1e-300)))
        if not self.enabled:
            return
        now = self.history[-1][0]
        if not final and now - getattr(self, "_shown", -math.inf) < 1.0:
            return                                  # at most one line a second
        self._shown = now
        eta = self.eta(res)
        per = (self.history[-1][0] - self.history[0][0]) / max(len(self.history) - 1, 1)
        eta_s = "?" if math.isnan(eta) else f"{eta:.0f} s"
        line = (f"solve: iteration {it}  residual {res:.2e} (tol {self.tol:.0e})  "
                f"{per:.2f} s/iteration  ETA {eta_s}")
        self.stream.write("\r" + line.ljust(90) + ("\n" if final else ""))
        self.stream.flush()


# ------------------------------------------------------------------------------ checks
def _fits_in_memory(op) -> bool:
    """Room for the kernel, its regularized copy and the factor within the memory budget
    (`widenets._memory.memory_budget`: half of the memory available now)."""
    return 3 * op.shape[0] ** 2 * 8 <= memory_budget()


# ------------------------------------------------------------------------------ the solver
def solve(k_train, y, *, diag_reg: float = 0.0, diag_reg_absolute: bool = False,
          kernel: str = "ntk", method: str = "auto", preconditioner: str | None = "nystrom",
          rank: int | None = None, tol: float = 1e-6, max_iter: int | None = None,
          client=None, progress: bool = False, checkpoint=None,
          checkpoint_seconds: float = 30.0, seed: int = 0,
          check_store: str | None = "crc") -> Solution:
    """(K + ρI)⁻¹ y by Cholesky or preconditioned conjugate gradients, for any kernel size.

    Args:
        k_train: the (n, n) train-train kernel: a `wn.Kernel` (its `kernel` field), a tensor or
            numpy array, a tile-store directory or `wn.tiles.open`'s lazy array (any size: the
            iterative method streams it from disk), or a `wn.tiles.StoreOperator`.
        y: (n,) or (n, k) right-hand sides (targets): all columns are solved in one pass over
            the kernel per iteration.
        diag_reg: ρ added to the diagonal, relative to the mean diagonal unless
            diag_reg_absolute. A singular kernel with diag_reg=0 is an error naming diag_reg.
        diag_reg_absolute: True to add diag_reg itself.
        kernel: "ntk" (default) or "nngp": which kernel of a Kernel or a two-kernel store.
        method: "auto" (Cholesky when the kernel fits in memory with a margin, else CG),
            "cholesky" or "cg".
        preconditioner: "nystrom" (randomized Nyström, default; `Solution.rank` is the number
            of its eigenpairs above the sketch's resolution, the ones kept),
            "pivoted_cholesky" or None.
        rank: the preconditioner's rank (default min(n // 2, 256)). For inputs of high
            dimension d the spectrum is flat beyond its top d + 1 eigenvalues, which a sketch
            of affordable rank does not resolve: a larger rank then does not pay
            (docs/math.md §solvers).
        tol: stop when every column's relative residual ||y - (K + ρI) x|| / ||y|| <= tol.
        max_iter: most CG iterations (default max(1000, n)).
        client: a `dask.distributed.Client`: a store's tiles are split across its workers.
        progress: print the iteration, residual, time per iteration and ETA to stderr.
        checkpoint: a file path: the CG state is saved there every `checkpoint_seconds` (and at
            the end), and a solve started with the same problem and path continues from it.
        checkpoint_seconds: seconds between checkpoint writes (0: every iteration).
        seed: seed of the Nyström sketch.
        check_store: for stores: "crc" (completeness and every tile's CRC-32, checked before
            the solve starts), "complete" or None.

    Returns:
        A `Solution` (alpha, residual history, iterations, ...).

    Raises:
        ValueError / TypeError: bad arguments; a kernel that is not positive definite or is
            near-singular (names diag_reg).
        SolveError: CG did not reach tol in max_iter iterations (a FloatingPointError; its
            `.solution` is the last iterate).
        wn.tiles.IncompleteStoreError / TileStoreError: a store with missing or damaged tiles.

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.randn(50, 3, dtype=torch.float64)
        >>> k = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1)).kernel(x)
        >>> y = torch.randn(50, 2, dtype=torch.float64)
        >>> sol = wn.predict.solve(k, y, diag_reg=1e-3, method="cg", tol=1e-10)
        >>> exact = torch.linalg.solve(k.ntk + 1e-3 * k.ntk.diagonal().mean() * torch.eye(50,
        ...                            dtype=torch.float64), y)
        >>> bool(torch.allclose(sol.alpha, exact, rtol=1e-6, atol=1e-8)), sol.converged
        (True, True)
    """
    start = time.perf_counter()
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"{_FUNC}: kernel must be 'nngp' or 'ntk', got {kernel!r}")
    diag_reg = check_diag_reg(diag_reg, func=_FUNC)
    check_choice(method, METHODS, func=_FUNC, arg="method")
    check_choice(preconditioner, PRECONDITIONERS, func=_FUNC, arg="preconditioner")
    rank = check_int(rank, func=_FUNC, arg="rank", allow_none=True)
    max_iter = check_int(max_iter, func=_FUNC, arg="max_iter", allow_none=True)
    if isinstance(tol, bool) or not isinstance(tol, Real) or not 0 < tol < 1:
        raise ValueError(f"{_FUNC}: tol must be a number in (0, 1), got {tol!r}")
    if isinstance(checkpoint_seconds, bool) or not isinstance(checkpoint_seconds, Real) or \
            checkpoint_seconds < 0:
        raise ValueError(f"{_FUNC}: checkpoint_seconds must be a number >= 0, got "
                         f"{checkpoint_seconds!r}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"{_FUNC}: checkpoint must be a file path or None, got "
                        f"{type(checkpoint).__name__}")

    op, is_store = as_operator(k_train, kernel=kernel, client=client, check=check_store)
    n = op.shape[0]
    # on an in-memory kernel's device (stores are read to the CPU)
    b, vector = as_targets(y, func=_FUNC, n=n, device=operator_device(op))
    if method == "auto":
        method = "cholesky" if (not is_store or _fits_in_memory(op)) and client is None \
            else "cg"
    if method == "cholesky":
        if is_store and not _fits_in_memory(op):
            raise ValueError(f"{_FUNC}: method='cholesky' needs the {n} x {n} kernel in memory "
                             f"(about {3 * n * n * 8 / 1e9:.1f} GB with its factor), more than "
                             f"is available; use method='cg' (or 'auto')")
        k = op.load()
        eps = getattr(op, "source_eps", None)
        if eps is None and hasattr(op, "dtype"):
            eps = float(np.finfo(op.dtype).eps)
        if eps is not None and eps > torch.finfo(k.dtype).eps:
            k.widenets_source_eps = eps
        chol = cholesky(k, diag_reg=diag_reg, absolute=diag_reg_absolute, func=_FUNC,
                        arg="k_train")
        rho = _rho(k.diagonal(), diag_reg, diag_reg_absolute)
        alpha = torch.cholesky_solve(b, chol)
        res = _true_residual(lambda v: k @ v, alpha, b, rho)
        return Solution(restore_targets_shape(alpha, vector), "cholesky", 0, res[None], res,
                        True, None, 0, rho, time.perf_counter() - start, passes=0)

    diag = op.diagonal()
    if not bool(torch.isfinite(diag).all()) or bool((diag < 0).any()):
        raise ValueError(f"{_FUNC}: k_train has a negative or non-finite diagonal entry; it is "
                         f"not a kernel (covariance) matrix")
    rho = _rho(diag, diag_reg, diag_reg_absolute)
    rank = min(n // 2, 256) if rank is None else min(rank, n)
    max_iter = max(1000, n) if max_iter is None else max_iter
    if preconditioner is None:
        rank = 0
    ckpt = None if checkpoint is None else os.fspath(checkpoint)
    fp = _fingerprint(op, b, rho, preconditioner, rank, seed)
    state = None if ckpt is None else _load_checkpoint(ckpt, fp)

    passes0 = op.passes
    t_setup = time.perf_counter()
    if state is not None:
        u, lam = (torch.from_numpy(state[k]).to(b.device) for k in ("u", "lam"))
    elif preconditioner == "nystrom":
        u, lam = _nystrom(op, rank, seed)
    elif preconditioner == "pivoted_cholesky":
        u, lam = _pivoted_cholesky(op, rank, block=max(1, min(rank, 64) if is_store else 1))
    else:
        u, lam = b.new_zeros(n, 0), b.new_zeros(0)
    precond = LowRankPreconditioner(u, lam, rho)
    setup = time.perf_counter() - t_setup

    def apply_a(v):
        out = op.matmul(v)
        return out + rho * v if rho else out

    bnorm = torch.linalg.norm(b, dim=0)
    live = bnorm > 0
    safe = torch.where(live, bnorm, torch.ones_like(bnorm))
    if state is not None:
        x, r, p, rz = (torch.from_numpy(state[k]).to(b.device) for k in ("x", "r", "p", "rz"))
        history = [torch.from_numpy(row).to(b.device) for row in state["history"]]
        it0 = int(state["iteration"])
    else:
        x = torch.zeros_like(b)
        r = b.clone()
        z = precond(r)
        p = z.clone()
        rz = (r * z).sum(0)
        history = [torch.linalg.norm(r, dim=0) / safe]
        it0 = 0
    bar = _Progress(progress, tol)
    last_save = time.perf_counter()
    it = it0
    t_iter = time.perf_counter()
    while True:
        res = history[-1]
        done = (res <= tol) | ~live
        bar.update(it, float(res[live].max()) if bool(live.any()) else 0.0)
        if bool(done.all()) or it >= max_iter:
            break
        q = apply_a(p)
        pq = (p * q).sum(0)
        active = ~done
        if bool((pq[active] <= 0).any()):
            raise ValueError(f"{_FUNC}: k_train + diag_reg is not positive definite (conjugate "
                             f"gradients found pᵀAp = {float(pq[active].min()):.3g} <= 0 at "
                             f"iteration {it}); pass diag_reg > 0 (e.g. diag_reg=1e-6, relative "
                             f"to the mean diagonal), or check the kernel")
        step = torch.where(active, rz / torch.where(active, pq, torch.ones_like(pq)),
                           torch.zeros_like(pq))
        x = x + step * p
        r = r - step * q
        z = precond(r)
        rz_new = (r * z).sum(0)
        beta = torch.where(active, rz_new / torch.where(rz == 0, torch.ones_like(rz), rz),
                           torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
        it += 1
        history.append(torch.linalg.norm(r, dim=0) / safe)
        if not bool(torch.isfinite(history[-1]).all()):
            raise FloatingPointError(f"{_FUNC}: conjugate gradients produced non-finite "
                                     f"residuals at iteration {it}; pass diag_reg > 0")
        if ckpt is not None and time.perf_counter() - last_save >= checkpoint_seconds:
            _save_checkpoint(ckpt, _state(fp, x, r, p, rz, history, it, u, lam))
            last_save = time.perf_counter()
    per_iter = (time.perf_counter() - t_iter) / max(it - it0, 1)
    final = _true_residual(op.matmul, x, b, rho)
    bar.update(it, float(history[-1][live].max()) if bool(live.any()) else 0.0, final=True)
    if ckpt is not None:
        _save_checkpoint(ckpt, _state(fp, x, r, p, rz, history, it, u, lam))
    converged = bool(((history[-1] <= tol) | ~live).all())
    sol = Solution(restore_targets_shape(x, vector), "cg", it, torch.stack(history), final,
                   converged, preconditioner, precond.rank, rho, time.perf_counter() - start,
                   seconds_per_iteration=per_iter, resumed_from=it0,
                   passes=op.passes - passes0, setup_seconds=setup)
    if not converged:
        raise SolveError(
            f"{_FUNC}: conjugate gradients did not reach tol={tol:g} in max_iter={max_iter} "
            f"iterations (worst relative residual {float(history[-1].max()):.3g}); the kernel is "
            f"ill-conditioned: raise max_iter, use a preconditioner with a larger rank, or pass "
            f"diag_reg > 0" + (f" (the state is saved in {ckpt!r}: rerun to continue)"
                               if ckpt else ""), sol)
    return sol


def _rho(diag: torch.Tensor, diag_reg: float, absolute: bool) -> float:
    return float(diag_reg) if absolute else float(diag_reg) * float(diag.mean())


def _true_residual(matmul, x: torch.Tensor, b: torch.Tensor, rho: float) -> torch.Tensor:
    """||b - (K + ρI) x|| / ||b|| per column, from one product."""
    r = b - (matmul(x) + rho * x)
    bnorm = torch.linalg.norm(b, dim=0)
    return torch.linalg.norm(r, dim=0) / torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))


def _state(fp, x, r, p, rz, history, it, u, lam) -> dict:
    host = lambda t: t.detach().cpu().numpy()      # noqa: E731  (checkpoints live on disk)
    return {"fingerprint": np.array(fp), "x": host(x), "r": host(r), "p": host(p),
            "rz": host(rz), "history": host(torch.stack(history)),
            "iteration": np.array(it), "u": host(u), "lam": host(lam)}


def operator_device(op) -> torch.device:
    """Where the solve runs: an in-memory kernel's device; stores are read to the CPU."""
    k = getattr(op, "k", None)
    return k.device if isinstance(k, torch.Tensor) else torch.device("cpu")
