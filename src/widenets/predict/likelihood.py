"""Fit a network's kernel to data: marginal likelihood, cross-validation, gradient-based fits.

The NNGP (or NTK) of a widenets network is a torch computation of its hyperparameters (σw, σb,
activation parameters; `widenets.hyperparameters`), so the Gaussian-process evidence

    log p(y | X) = -½ Σ_c y_cᵀ (K + σ²I)⁻¹ y_c - (k/2) log det(K + σ²I) - (nk/2) log 2π

(k output columns sharing one kernel; docs/math.md §marginal-likelihood) is differentiable in
them and in the noise variance σ², and can be maximized by L-BFGS or Adam instead of a grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..hyperparameters import (
    hyperparameter_domains,
    hyperparameter_groups,
    hyperparameters,
    match_names,
)
from ..layers.base import Layer, as_number
from ._linalg import KERNEL_NAMES, SymmetricEig, as_targets, time_factors

__all__ = ["marginal_likelihood", "cv_log_likelihood", "fit_hyperparameters", "FitResult"]

LOG_2PI = math.log(2 * math.pi)


def _check_net(net, func: str) -> Layer:
    if not isinstance(net, Layer):
        raise TypeError(f"{func}: net must be a widenets network (wn.serial(...)), got "
                        f"{type(net).__name__}")
    return net


def _check_kernel(kernel, func: str) -> str:
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"{func}: kernel must be one of {KERNEL_NAMES}, got {kernel!r}")
    return kernel


def _check_noise(noise, func: str):
    if isinstance(noise, torch.Tensor):
        if noise.ndim != 0 or not torch.is_floating_point(noise) or \
                not bool(torch.isfinite(noise.detach())) or not bool(noise.detach() >= 0):
            raise ValueError(f"{func}: noise must be a finite 0-d tensor >= 0 (a variance), got "
                             f"{noise!r}")
        return noise
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or \
            not math.isfinite(noise) or noise < 0:
        raise ValueError(f"{func}: noise must be a finite number >= 0 (the observation noise "
                         f"variance σ²), got {noise!r}")
    return float(noise)


class _GaussianLogLikelihood(torch.autograd.Function):
    """log N(Y | 0, A) for a symmetric positive-definite A from its Cholesky factor, with the
    closed-form gradients (Rasmussen & Williams 2006, eq. 5.9):

        ∂/∂A = ½ (α αᵀ - c A⁻¹),    ∂/∂Y = -α,    α = A⁻¹ Y,

    instead of autograd through the factorization and the triangular solves (about 3x
    cheaper at n = 2000: one `cholesky_inverse` replaces the Cholesky backward)."""

    @staticmethod
    def forward(ctx, a, y, chol):
        alpha = torch.cholesky_solve(y, chol)
        n, c = y.shape
        out = -0.5 * (y * alpha).sum() - c * torch.log(chol.diagonal()).sum() \
            - 0.5 * n * c * LOG_2PI
        ctx.save_for_backward(alpha, chol)
        ctx.c = c
        return out

    @staticmethod
    def backward(ctx, grad):
        alpha, chol = ctx.saved_tensors
        grad_a = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_a = (alpha @ alpha.T - ctx.c * torch.cholesky_inverse(chol)) * (0.5 * grad)
        if ctx.needs_input_grad[1]:
            grad_y = -grad * alpha
        return grad_a, grad_y, None


def gaussian_log_likelihood(k: torch.Tensor, y: torch.Tensor, noise, *, func: str,
                            arg: str = "kernel") -> torch.Tensor:
    """log N(y | 0, k + σ² I) summed over the columns of y (n, c), by Cholesky in k's dtype;
    differentiable in k, y and σ² (closed-form gradients, docs/math.md §marginal-likelihood)."""
    n = k.shape[0]
    a = 0.5 * (k + k.T) + noise * torch.eye(n, dtype=k.dtype, device=k.device)
    chol, info = torch.linalg.cholesky_ex(a.detach())
    if int(info) != 0:
        lam = torch.linalg.eigvalsh(a.detach())
        raise ValueError(f"{func}: the {arg} plus noise is not positive definite (smallest "
                         f"eigenvalue {float(lam[0]):.3g}, largest {float(lam[-1]):.3g}); "
                         f"increase noise (the observation noise variance) or remove "
                         f"duplicated inputs")
    out = _GaussianLogLikelihood.apply(a, y, chol)
    if not bool(torch.isfinite(out.detach())):
        raise FloatingPointError(f"{func}: the log likelihood is not finite ({float(out)}); the "
                                 f"kernel is too ill-conditioned: increase noise")
    return out


def _targets(y, n: int, func: str) -> torch.Tensor:
    y, _ = as_targets(y, func=func, n=n, arg="y", dtype=torch.float64,
                      device=torch.device("cpu"))
    return y


def marginal_likelihood(net: Layer, x, y, *, kernel: str = "ntk", noise,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Exact log marginal likelihood log p(y | x) of the GP with the network's kernel.

    Args:
        net: a widenets network; hyperparameters given as tensors with requires_grad make the
            result differentiable in them (`net.with_hyperparameters`).
        x: (n, ...) inputs.
        y: (n,) or (n, k) targets; the k columns are independent GPs sharing the kernel.
        kernel: "ntk" (default, as every `wn.predict` function) or "nngp": the prior
            covariance of the outputs is this kernel of the infinitely wide network.
        noise: σ², the observation noise variance added to the diagonal (absolute; a number
            or a 0-d tensor, which may require grad).
        dtype: precision of the kernel and the Cholesky factorization (float64).

    Returns:
        A 0-d tensor: Σ_c log N(y_c | 0, K + σ²I) (docs/math.md §marginal-likelihood).

    Raises:
        ValueError: K + σ²I not positive definite (names noise), bad shapes or arguments.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(16, w_std=1.5), wn.Erf(), wn.Dense(1, w_std=1.5))
        >>> x, y = torch.randn(20, 3), torch.randn(20)
        >>> float(wn.predict.marginal_likelihood(net, x, y, kernel="nngp", noise=0.1)) < 0
        True
    """
    func = "marginal_likelihood"
    _check_net(net, func)
    _check_kernel(kernel, func)
    noise = _check_noise(noise, func)
    k = net.kernel(x, get=kernel, dtype=dtype)
    return gaussian_log_likelihood(k, _targets(y, k.shape[0], func).to(k.dtype), noise,
                                   func=func, arg=f"{kernel} kernel")


def _folds(n: int, folds: int, seed: int, func: str) -> list[torch.Tensor]:
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= n:
        raise ValueError(f"{func}: folds must be an int between 2 and the number of inputs "
                         f"({n}), got {folds!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(torch.tensor_split(perm, folds))


def cv_log_likelihood(net: Layer, x, y, *, kernel: str = "ntk", noise, t=None,
                      learning_rate: float = 1.0, folds: int = 5, seed: int = 0,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """K-fold cross-validated predictive log likelihood of the trained infinite ensemble.

    For each fold, the other folds train the infinitely wide network by MSE gradient flow for
    time t (t=None: to convergence) and the held-out targets are scored under the ensemble's
    predictive Gaussian N(μ_t, Σ_t + σ²I) (Lee et al. 2019, eqs. 14-15; with kernel="nngp"
    only the readout trains, whose t = ∞ limit is the NNGP posterior, eq. 13).

    Args:
        net, x, y, kernel, noise, dtype: as `marginal_likelihood`.
        t: training time (learning-rate-scaled gradient flow, as `wn.predict`), None = ∞.
        learning_rate: η of the flow.
        folds: number of folds (2 <= folds <= n); seed: the random split.

    Returns:
        0-d tensor: the summed held-out log likelihood, differentiable in tensor
        hyperparameters and noise.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(16), wn.Erf(), wn.Dense(1))
        >>> x, y = torch.randn(20, 3), torch.randn(20)
        >>> bool(torch.isfinite(wn.predict.cv_log_likelihood(net, x, y, noise=0.1, t=10.0)))
        True
    """
    func = "cv_log_likelihood"
    _check_net(net, func)
    _check_kernel(kernel, func)
    noise = _check_noise(noise, func)
    # the NTK only when it is the trained kernel: the NNGP path needs K alone
    kern = net.kernel(x, dtype=dtype, get=("nngp", "ntk") if kernel == "ntk" else "nngp")
    nngp, theta = kern if kernel == "ntk" else (kern, kern)
    n = nngp.shape[0]
    yy = _targets(y, n, func).to(nngp.dtype)
    tt = torch.tensor([math.inf if t is None else float(t)], dtype=nngp.dtype)
    total = nngp.new_zeros(())
    for val in _folds(n, folds, seed, func):
        train = torch.ones(n, dtype=torch.bool)
        train[val] = False
        tr = train.nonzero()[:, 0]
        k_tt = nngp[val][:, val]
        th_dd = theta[tr][:, tr]
        th_td = theta[val][:, tr]
        eig = SymmetricEig(th_dd, diag_reg=0.0, absolute=True, func=func,
                           arg=f"{kernel} kernel of the training folds")
        _, gain = time_factors(eig, tt, learning_rate=learning_rate, discrete=False)
        v = eig.eigenvectors
        g = (v * gain[0]) @ v.T                       # Θ⁻¹(I - e^{-ηΘt})
        a = th_td @ g                                  # Θ(x, X) G_t
        mean = a @ yy[tr]                              # eq. 14
        kt = nngp[val][:, tr]
        cross = a @ kt.T
        cov = k_tt + a @ nngp[tr][:, tr] @ a.T - (cross + cross.T)      # eq. 15
        total = total + gaussian_log_likelihood(cov, yy[val] - mean, noise, func=func,
                                                arg="held-out predictive covariance")
    return total


@dataclass
class FitResult:
    """What `fit_hyperparameters` returns.

    Attributes:
        net: the fitted network (float hyperparameters).
        noise: the fitted (or fixed) observation noise variance σ².
        hyperparameters: the fitted values by name (`wn.hyperparameters(net)`).
        objective: the final objective value (log likelihood, higher is better).
        record: one dict per evaluation of the objective (L-BFGS line-search trials included;
            the last entry is the result): {"step", "objective", "noise", **values}.

    Example:
        >>> net = wn.serial(wn.Dense(8), wn.Erf(), wn.Dense(1))
        >>> x = torch.randn(12, 2, dtype=torch.float64); y = x[:, 0]
        >>> fit = wn.predict.fit_hyperparameters(net, x, y, kernel="nngp", steps=2)
        >>> isinstance(fit, wn.predict.FitResult), fit.record[-1]["objective"] == fit.objective
        (True, True)
    """

    net: Layer
    noise: float
    hyperparameters: dict
    objective: float
    record: list = field(default_factory=list)


class _Transform:
    """Unconstrained u -> the hyperparameter: exp for positive, an affine sigmoid within
    bounds, the identity for real ones."""

    def __init__(self, domain: str, bounds, name: str, func: str):
        self.domain, self.bounds = domain, bounds
        if bounds is not None:
            lo, hi = (float(b) for b in bounds)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or \
                    (domain == "positive" and lo < 0):
                raise ValueError(f"{func}: bounds for {name} must be (low, high) with "
                                 f"low < high{' and low >= 0' if domain == 'positive' else ''}, "
                                 f"got {bounds!r}")
            self.lo, self.hi = lo, hi

    def inverse(self, value: float) -> float:
        if self.bounds is not None:
            p = min(max((value - self.lo) / (self.hi - self.lo), 1e-6), 1 - 1e-6)
            return math.log(p / (1 - p))
        if self.domain == "positive":
            return math.log(max(value, 1e-4))      # a zero σ starts at 1e-4 (log transform)
        return value

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        if self.bounds is not None:
            return self.lo + (self.hi - self.lo) * torch.sigmoid(u)
        return torch.exp(u) if self.domain == "positive" else u


def fit_hyperparameters(net: Layer, x, y, *, kernel: str = "ntk", names=None, tied=False,
                        noise: float = 0.1, learn_noise: bool = True,
                        objective: str = "marginal_likelihood", t=None,
                        learning_rate: float = 1.0, folds: int = 5, seed: int = 0,
                        optimizer: str = "lbfgs", steps: int = 50, lr: float = 0.05,
                        bounds: dict | None = None,
                        dtype: torch.dtype = torch.float64) -> FitResult:
    """Maximize the marginal likelihood (or the cross-validated likelihood) over hyperparameters.

    Positive hyperparameters (σ's) and the noise are optimized through log transforms (a zero
    starting value starts at 1e-4), bounded ones through a scaled sigmoid, real ones directly.

    Args:
        net: the network whose `wn.hyperparameters` are the starting point.
        x, y: training inputs and targets (n,) or (n, k).
        kernel: "ntk" (default) or "nngp".
        names: which hyperparameters to fit: None (all), a name, a glob, or a list of them.
        tied: False (each free), True (one value per attribute name: every w_std shares one),
            or a dict label -> glob pattern tying the matches.
        noise: observation noise variance σ² (start value if learn_noise).
        learn_noise: fit σ² too.
        objective: "marginal_likelihood" (evidence) or "cv" (`cv_log_likelihood`, with t,
            learning_rate, folds, seed).
        optimizer: "lbfgs" (strong Wolfe line search) or "adam" (with lr).
        steps: optimizer iterations (L-BFGS: at most 2·steps objective evaluations).
        bounds: dict name-or-glob -> (low, high) for constrained hyperparameters.
        dtype: precision of the kernels (float64).

    Returns:
        `FitResult` with the fitted network, noise, values, objective and the record.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(16, w_std=1.0, b_std=0.1), wn.Erf(), wn.Dense(1))
        >>> x = torch.randn(30, 2); y = torch.sin(2 * x[:, 0])
        >>> fit = wn.predict.fit_hyperparameters(net, x, y, kernel="nngp", tied=True, steps=5)
        >>> fit.objective >= fit.record[0]["objective"]
        True
    """
    func = "fit_hyperparameters"
    _check_net(net, func)
    _check_kernel(kernel, func)
    noise = _check_noise(noise, func)
    if objective not in ("marginal_likelihood", "cv"):
        raise ValueError(f"{func}: objective must be 'marginal_likelihood' or 'cv', got "
                         f"{objective!r}")
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"{func}: optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{func}: steps must be a positive int, got {steps!r}")
    if not hasattr(x, "shape") or len(x.shape) < 2:
        raise ValueError(f"{func}: x must be an (n, ...) tensor or array of inputs, got "
                         f"{type(x).__name__} of shape {getattr(x, 'shape', None)}")
    _targets(y, x.shape[0], func)       # bad targets are named here, before any kernel
    groups = hyperparameter_groups(net, names=names, tied=tied, func=func)
    if not groups and not learn_noise:
        raise ValueError(f"{func}: nothing to fit: names selects no hyperparameter and "
                         f"learn_noise=False")
    domains = hyperparameter_domains(net)
    start = hyperparameters(net)
    bound_of = {}
    for pat, hits in match_names(domains, (bounds or {}).keys(), func=func,
                                 arg="bounds").items():
        for h in hits:
            bound_of[h] = bounds[pat]
    transforms, params = {}, {}
    for label, members in groups.items():
        first = members[0]
        tr = _Transform(domains[first], bound_of.get(first), first, func)
        transforms[label] = tr
        v0 = float(as_number(start[first]))
        params[label] = torch.tensor(tr.inverse(v0), dtype=dtype, requires_grad=True)
    noise_tr = _Transform("positive", None, "noise", func)
    u_noise = torch.tensor(noise_tr.inverse(float(noise)), dtype=dtype,
                           requires_grad=learn_noise)

    def current():
        vals = {}
        for label, members in groups.items():
            value = transforms[label](params[label])
            vals.update({m: value for m in members})
        return vals, noise_tr(u_noise) if learn_noise else noise

    def evaluate():
        vals, nz = current()
        fitted = net.with_hyperparameters(vals)
        if objective == "cv":
            return cv_log_likelihood(fitted, x, y, kernel=kernel, noise=nz, t=t,
                                     learning_rate=learning_rate, folds=folds, seed=seed,
                                     dtype=dtype)
        return marginal_likelihood(fitted, x, y, kernel=kernel, noise=nz, dtype=dtype)

    leaves = list(params.values()) + ([u_noise] if learn_noise else [])
    record = []

    def snapshot(step: int, value: float) -> None:
        vals, nz = current()
        nz = float(as_number(nz))
        record.append({"step": step, "objective": value, "noise": nz,
                       **{k: float(v.detach()) for k, v in vals.items()}})

    def closure():
        opt.zero_grad()
        loss = -evaluate()
        loss.backward()
        for p in leaves:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise FloatingPointError(f"{func}: non-finite gradient of the objective; "
                                         f"bound the hyperparameters (bounds=) or raise noise")
        with torch.no_grad():
            snapshot(len(record), -float(loss))          # the iterate just evaluated
        return loss

    if optimizer == "lbfgs":
        # one L-BFGS run of `steps` iterations, its curvature memory kept across them; the
        # record has one entry per objective evaluation (line-search trials included)
        opt = torch.optim.LBFGS(leaves, lr=1.0, max_iter=steps, max_eval=2 * steps,
                                tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20,
                                line_search_fn="strong_wolfe")
        opt.step(closure)
    else:
        opt = torch.optim.Adam(leaves, lr=lr)
        for _ in range(steps):
            opt.step(closure)
    with torch.no_grad():
        final = float(evaluate())
    snapshot(len(record), final)
    vals, nz = current()
    plain = {k: float(v.detach()) for k, v in vals.items()}
    fitted = net.with_hyperparameters(plain)
    return FitResult(net=fitted, noise=float(as_number(nz)),
                     hyperparameters=hyperparameters(fitted), objective=final, record=record)
