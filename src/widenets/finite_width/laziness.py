"""Laziness: how far training moves weights and kernels (Chizat & Bach, seed 001; seed 002 Fig. 1).

* `relative_change(record)`: ||W_t - W_0|| / ||W_0|| per parameter tensor, and the relative
  Frobenius change of the recorded NTK and NNGP.
* `kappa(model, x, y)`: the inverse relative scale κ = ||y(w0) - ȳ|| ||∇²y|| / ||∇y||²
  (docs/math.md §laziness) with operator norms from Hessian- and Jacobian-vector products only.
* `scaled(model, alpha)`: α (f(x; w) - f(x; w0)); trained with the loss divided by α², it goes
  lazy as α grows.
* `width_sweep(build, widths, measure=...)`: log-log slopes against width, with confidence
  intervals over seeds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass

import numpy as np
import torch
from scipy import stats
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn
from torch.func import jvp

from .._checks import check_positive
from . import _core
from ._core import check_model, check_x
from .training import ScaledModelBase, TrainRecord

__all__ = ["relative_change", "RelativeChange", "kappa", "KappaResult", "scaled", "ScaledModel",
           "width_sweep", "SweepResult"]


# ------------------------------------------------------------------------- relative change
@dataclass(frozen=True)
class RelativeChange:
    """Relative changes over a training record (T record times).

    Fields:
        weights: {name: (T,)} ||W_t - W_0||_F / ||W_0||_F per trainable parameter tensor.
        ntk: (T,) ||Θ_t - Θ_0||_F / ||Θ_0||_F on the training set, or None.
        nngp: (T,) ||K_t - K_0||_F / ||K_0||_F (readout-feature kernel), or None.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1)).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> rec = wn.finite_width.train(model, x, y, learning_rate=0.5, steps=4, record_every=2)
        >>> rec.times.tolist(), rec.ntk.shape
        ([0.0, 2.0, 4.0], torch.Size([3, 4, 4]))
        >>> change = wn.finite_width.relative_change(rec)
        >>> change.ntk.shape, sorted(change.weights)
        (torch.Size([3]), ['0.bias', '0.weight', '2.bias', '2.weight'])
        >>> isinstance(change, wn.finite_width.RelativeChange)
        True
    """

    weights: dict
    ntk: torch.Tensor | None
    nngp: torch.Tensor | None


def _rel_kernel(k: torch.Tensor | None) -> torch.Tensor | None:
    if k is None:
        return None
    diff = (k - k[0]).flatten(1).norm(dim=1)
    return diff / k[0].norm()


def relative_change(record: TrainRecord) -> RelativeChange:
    """Per-parameter relative weight change and relative NTK / NNGP change over time.

    Args:
        record: a `TrainRecord` from `train` (with "weights" and/or "ntk"/"nngp" recorded).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1)).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> rec = wn.finite_width.train(model, x, y, learning_rate=0.5, steps=4, record_every=2)
        >>> rec.times.tolist(), rec.ntk.shape
        ([0.0, 2.0, 4.0], torch.Size([3, 4, 4]))
        >>> change = wn.finite_width.relative_change(rec)
        >>> change.ntk.shape, sorted(change.weights)
        (torch.Size([3]), ['0.bias', '0.weight', '2.bias', '2.weight'])
    """
    if not isinstance(record, TrainRecord):
        raise TypeError(f"relative_change: record must be the TrainRecord returned by train(), "
                        f"got {type(record).__name__}")
    w = {}
    for k, change in record.weight_changes.items():
        w0 = record.weight_norms[k][0]
        # A tensor initialized at zero (a bias with b_std=0) has no relative scale: nan.
        w[k] = change / w0 if w0 > 0 else torch.full_like(change, float("nan"))
    return RelativeChange(weights=w, ntk=_rel_kernel(record.ntk), nngp=_rel_kernel(record.nngp))


# ----------------------------------------------------------------------------------- kappa
@dataclass(frozen=True)
class KappaResult:
    """The inverse relative scale of Chizat & Bach (docs/math.md §laziness) and its parts (floats).

    Fields:
        kappa: ||y(w0) - ȳ|| · hessian_norm / jacobian_norm².
        residual_norm: ||y(w0) - ȳ|| over all n·O outputs.
        jacobian_norm: operator norm of the (nO × P) Jacobian ∇y.
        hessian_norm: operator norm of the output Hessian ∇²y as the bilinear map
            R^P × R^P → R^{nO}: sup over unit e, u of e·∇²y[u, u].
        n_hvp: Hessian-vector products used.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1)).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> res = wn.finite_width.kappa(model, x, y, tol=1e-3)
        >>> res.kappa > 0, res.n_hvp > 0
        (True, True)
        >>> isinstance(res, wn.finite_width.KappaResult)
        True
    """

    kappa: float
    residual_norm: float
    jacobian_norm: float
    hessian_norm: float
    n_hvp: int


def _to_vec(d: dict) -> np.ndarray:
    return torch.cat([v.reshape(-1) for v in d.values()]).detach().cpu().double().numpy()


def _to_dict(v: np.ndarray, like: dict) -> dict:
    out, i = {}, 0
    for k, t in like.items():
        out[k] = torch.from_numpy(v[i:i + t.numel()]).to(t).reshape(t.shape)
        i += t.numel()
    return out


def _top_eig(matvec, p: int, tol: float, seed: int, maxiter: int, v0=None):
    """Largest-magnitude eigenpair of a symmetric operator by Lanczos (implicitly restarted
    power iteration on the Krylov space, scipy's eigsh), from HVPs only."""
    op = LinearOperator((p, p), matvec=matvec, dtype=np.float64)
    if v0 is None:
        v0 = np.random.default_rng(seed).standard_normal(p)
    if p <= 2:   # eigsh needs k < p; tiny problems use the dense matrix from the same matvecs
        mat = np.stack([matvec(col) for col in np.eye(p)], axis=1)
        vals, vecs = np.linalg.eigh(0.5 * (mat + mat.T))
        i = int(np.argmax(np.abs(vals)))
        return float(vals[i]), vecs[:, i]
    vals, vecs = eigsh(op, k=1, which="LM", v0=v0, tol=tol, maxiter=maxiter)
    return float(vals[0]), vecs[:, 0]


def kappa(model: nn.Module, x, y, *, tol: float = 1e-6, max_outer: int = 20,
          maxiter: int = 1000, seed: int = 0) -> KappaResult:
    """Inverse relative scale κ(w0) = ||y(w0) - ȳ|| ||∇²y(w0)|| / ||∇y(w0)||² (§laziness).

    docs/math.md §laziness.

    Operator norms without dense Jacobians or Hessians: ||∇y||² is the top eigenvalue of
    JᵀJ (jvp then vjp); ||∇²y|| = sup_{|e|=|u|=1} e·∇²y[u, u] by alternating maximization:
    u = top eigenvector of the Hessian of e·y (Lanczos on HVPs), then e ∝ ∇²y[u, u] (a
    second-order forward derivative), until the value stops growing (it never decreases).
    For one scalar output (n = 1) this is exactly the Hessian's spectral norm.

    Args:
        model: any torch module (parameters at w0).
        x: (n, *in_shape) inputs; y: (n, O) or (n,) targets ȳ.
        tol: relative tolerance of the eigen-solves and of the outer alternation.
        max_outer: alternation rounds for the Hessian norm.
        maxiter: Lanczos iterations per eigen-solve.
        seed: seeds the Lanczos start vectors.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1)).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> res = wn.finite_width.kappa(model, x, y, tol=1e-3)
        >>> res.kappa > 0, res.n_hvp > 0
        (True, True)
    """
    func = "kappa"
    check_model(model, func)
    x = check_x(x, func, "x", model)
    params = _core.params_of(model)
    with torch.no_grad():
        out = _core.outputs(model, params, x)
    yv = _core.check_y(y, func, x.shape[0], out.shape[1], out.dtype)
    p = sum(v.numel() for v in params.values())
    count = [0]

    def jtj(v):
        d = _to_dict(v, params)
        return _to_vec(_core.vjp_outputs(model, params, x, _core.jvp_outputs(model, params, x, d)))

    lam_j, _ = _top_eig(jtj, p, tol, seed, maxiter)
    jac_norm = math.sqrt(max(lam_j, 0.0))

    def second_dir(u: dict) -> torch.Tensor:      # ∇²y[u, u]: (n, O)
        def first(q):
            return _core.jvp_outputs(model, q, x, u)
        return jvp(first, (params,), (u,))[1]

    resid = out - yv
    e = resid / resid.norm() if resid.norm() > 0 else torch.ones_like(out) / out.numel() ** 0.5
    best = 0.0
    u = None
    for _ in range(max_outer):
        e_now = e

        def hv(v, e_now=e_now):
            count[0] += 1
            return _to_vec(_core.hvp(model, params, x, e_now, _to_dict(v, params)))

        lam, u = _top_eig(hv, p, tol, seed, maxiter, v0=u)   # warm start from the last u
        z = second_dir(_to_dict(u, params))
        value = max(abs(lam), float(z.norm()))
        if z.norm() > 0:
            e = z / z.norm()
        converged = value <= best * (1 + tol)
        best = max(best, value)
        if converged or out.numel() == 1:
            break
    res = float(resid.norm())
    if not all(math.isfinite(v) for v in (res, jac_norm, best)):
        raise FloatingPointError(f"{func}: non-finite norms; use float64 parameters")
    kap = res * best / jac_norm ** 2 if jac_norm > 0 else float("inf")
    return KappaResult(kappa=kap, residual_norm=res, jacobian_norm=jac_norm, hessian_norm=best,
                       n_hvp=count[0])


# ---------------------------------------------------------------------------------- scaled
class ScaledModel(ScaledModelBase):
    """α (f(x; w) - f(x; w0)) with w trainable and a frozen copy of the model at w0.

    Attributes: model (trainable), reference (frozen copy at w0), alpha.
    `train` divides the loss by α² for it (Chizat & Bach 2019), unless loss_scale is given.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1)).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> lazy = wn.finite_width.scaled(model, alpha=10.0)
        >>> bool(torch.allclose(lazy(x), torch.zeros(4, 1, dtype=torch.float64)))   # centered at w0
        True
        >>> isinstance(lazy, wn.finite_width.ScaledModel)
        True
    """

    def __init__(self, model: nn.Module, alpha: float):
        super().__init__()
        self.model = model
        self.alpha = alpha
        self.reference = copy.deepcopy(model)
        for q in self.reference.parameters():
            q.requires_grad_(False)

    def forward(self, x):
        return self.alpha * (self.model(x) - self.reference(x))


def scaled(model: nn.Module, alpha: float) -> ScaledModel:
    """The output-scaled, centered model α (f(x; w) - f(x; w0)) of lazy training (seed 001).

    Args:
        model: any torch module; its current parameters are w0 (it is not copied: training the
            scaled model trains `model`).
        alpha: the scale α > 0; large α gives the kernel (lazy) regime.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1)).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> lazy = wn.finite_width.scaled(model, alpha=10.0)
        >>> bool(torch.allclose(lazy(x), torch.zeros(4, 1, dtype=torch.float64)))   # centered at w0
        True
    """
    check_model(model, "scaled")
    alpha = check_positive(alpha, func="scaled", arg="alpha")
    return ScaledModel(model, alpha)


# ----------------------------------------------------------------------------- width sweep
@dataclass(frozen=True)
class SweepResult:
    """Log-log fits of measured quantities against width.

    Fields (W widths, S seeds):
        widths: (W,) widths; seeds: the seeds.
        values: {name: (S, W)} measured values.
        slopes: {name: (S,)} per-seed least-squares slope of log(value) on log(width).
        slope: {name: float} mean slope over seeds.
        ci: {name: (low, high)} t-interval of the mean slope at `confidence` (equal to the
            slope when there is one seed).

    Example:
        >>> def build(width, seed):
        ...     torch.manual_seed(seed)
        ...     return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(),
        ...                                torch.nn.Linear(width, 1))
        >>> n_params = lambda m: float(sum(p.numel() for p in m.parameters()))   # 5 width + 1
        >>> res = wn.finite_width.width_sweep(build, [8, 16, 32], measure=n_params, seeds=(0, 1))
        >>> [round(s, 2) for s in res.slope.values()]        # log-log slope close to 1
        [0.99]
        >>> isinstance(res, wn.finite_width.SweepResult)
        True
    """

    widths: torch.Tensor
    seeds: tuple
    values: dict
    slopes: dict
    slope: dict
    ci: dict


def _measure_dict(m) -> dict:
    if is_dataclass(m):
        m = asdict(m)
    if isinstance(m, dict):
        return {k: float(v) for k, v in m.items() if isinstance(v, (int, float, np.floating))
                or (isinstance(v, torch.Tensor) and v.numel() == 1)}
    return {"value": float(m)}


def width_sweep(build: Callable[[int, int], nn.Module], widths: Sequence[int], *,
                measure: Callable[[nn.Module], object], seeds: Sequence[int] = (0, 1, 2),
                confidence: float = 0.95) -> SweepResult:
    """Measure quantities over widths and seeds and fit log-log slopes against width.

    Args:
        build: build(width, seed) -> a freshly initialized module.
        widths: at least two positive widths.
        measure: measure(model) -> a float, a dict of floats, or a dataclass of floats
            (e.g. `lambda m: kappa(m, x, y)`, or a closure that trains and returns
            `relative_change` entries).
        seeds: initialization seeds (intervals need at least two).
        confidence: level of the t-interval for the mean slope.

    Example:
        >>> def build(width, seed):
        ...     torch.manual_seed(seed)
        ...     return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(),
        ...                                torch.nn.Linear(width, 1))
        >>> n_params = lambda m: float(sum(p.numel() for p in m.parameters()))   # 5 width + 1
        >>> res = wn.finite_width.width_sweep(build, [8, 16, 32], measure=n_params, seeds=(0, 1))
        >>> [round(s, 2) for s in res.slope.values()]        # log-log slope close to 1
        [0.99]
    """
    func = "width_sweep"
    if not callable(build) or not callable(measure):
        raise TypeError(f"{func}: build and measure must be callables, got "
                        f"{type(build).__name__} and {type(measure).__name__}")
    widths = list(widths)
    if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                              for w in widths):
        raise ValueError(f"{func}: widths must be at least two positive ints, got {widths!r}")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError(f"{func}: seeds must be a non-empty sequence of ints")
    if not 0 < confidence < 1:
        raise ValueError(f"{func}: confidence must be in (0, 1), got {confidence!r}")
    rows: dict[str, np.ndarray] = {}
    for i, s in enumerate(seeds):
        for j, w in enumerate(widths):
            got = _measure_dict(measure(build(w, s)))
            for k, v in got.items():
                rows.setdefault(k, np.full((len(seeds), len(widths)), np.nan))[i, j] = v
    lw = np.log(np.asarray(widths, dtype=np.float64))
    slopes, slope, ci = {}, {}, {}
    for k, vals in rows.items():
        if not (vals > 0).all():
            continue        # log-log fits need positive values; the values are still returned
        sl = np.array([np.polyfit(lw, np.log(v), 1)[0] for v in vals])
        slopes[k] = torch.from_numpy(sl)
        slope[k] = float(sl.mean())
        if len(sl) > 1:
            half = stats.t.ppf(0.5 + confidence / 2, len(sl) - 1) * sl.std(ddof=1) / len(sl) ** .5
        else:
            half = 0.0
        ci[k] = (slope[k] - half, slope[k] + half)
    return SweepResult(widths=torch.tensor(widths), seeds=seeds,
                       values={k: torch.from_numpy(v) for k, v in rows.items()},
                       slopes=slopes, slope=slope, ci=ci)
