"""The Neural Tangent Hierarchy (Huang & Yau 2020, seed 000; docs/math.md §nth).

With r = f(X) - Y and gradient flow dθ/dt = -η ∇θ L (time t counts gradient-descent steps of
learning rate η, as in Lee et al. 2019), the outputs and kernels obey (seed 000, eqs. 9-10)

    d/dt f(x_a)         = -c Σ_b K2_t(x_a, x_b) r_b
    d/dt K_r(a1..ar)    = -c Σ_b K_{r+1}(a1..ar, b) r_b,       r >= 2,
    K_{r+1}(a1..ar, b)  = ⟨∇θ K_r(a1..ar), ∇θ f(x_b)⟩,

with c = η/n for the seed's loss (1/2n) Σ r² (convention "mean") and c = η for the total loss
(1/2) Σ r² of seed 002 (convention "sum"). So with η = 1 and "mean", t is the seed-000 time; with
"sum", t is the number of GD steps of Lee et al. (f_lin_t = Y + e^{-ηΘt}(f_0 - Y)).

K3(a, b, c) = g_bᵀ H_a g_c + g_aᵀ H_b g_c (g = ∇θ f, H_a = ∇²θ f(x_a)) is computed from
Hessian-vector products: for each direction g_c, one forward-over-reverse pass gives all rows
H_a g_c; contracting with the Jacobian gives the (a, b) slice. K4 is the forward derivative of
that whole computation along g_d (its directions g_c move with θ too).

Truncating at level p (d/dt K_p = 0, seed 000 eq. 15) and integrating K2..K_{p-1} in closed form:
    p = 2:  K2_t = K2_0                              (frozen NTK, the linearized dynamics)
    p = 3:  K2_t = K2_0 - c K3_0 ·R,                  R(t) = ∫_0^t r ds
    p = 4:  K2_t = K2_0 - c K3_0 ·R + c² K4_0 ·S,     S_cd(t) = ∫_0^t r_c R_d ds
with dr/dt = -c K2_t r; test outputs follow eq. 22 (kernels with the first slot at the test point).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import nn
from torch.func import jvp, vmap

from .._checks import check_batch_size, check_positive
from ..deprecation import renamed_arguments
from . import _core, _discrete, _mlp
from ._core import check_convention, check_model, check_x, flow_rate

__all__ = ["IMPLEMENTATIONS", "higher_order_kernel", "nth_kernels", "truncated_nth",
           "NTHKernels", "NTHResult", "k3_hvp_count"]

_DEFAULT_BUDGET = 512 * 2 ** 20   # bytes for the (batch, n, P) block of Hessian-vector products


def _flat(d: dict, lead: int) -> torch.Tensor:
    return torch.cat([v.reshape(*v.shape[:lead], -1) for v in d.values()], dim=-1)


def _n_params(params: dict) -> int:
    return sum(v.numel() for v in params.values())


def k3_hvp_count(n: int, n_extra: int = 0) -> int:
    """Per-example Hessian-vector products for K3 on n points (+ n_extra first-slot points).

    Cost model: one HVP per (row point a, direction c): (n + n_extra)·n HVPs, each about the
    cost of 2-3 per-example forward+backward passes; plus contractions of 2·(n + n_extra)·n²·P
    multiply-adds (P = number of trainable parameters); memory: batch_size·(n + n_extra)·P
    floats.

    Example:
        >>> wn.finite_width.k3_hvp_count(64)                   # n² per-example HVPs
        4096
    """
    return (n + n_extra) * n


def _k3(model: nn.Module, params: dict, x: torch.Tensor, x_extra: torch.Tensor | None,
        batch_size: int | None, implementation: str = "auto") -> torch.Tensor:
    """K3(a, b, c), a over [x; x_extra], b and c over x: (n + n_extra, n, n).

    "structured" (chosen by "auto" for widenets serial MLPs): forward derivative of the
    structured NTK formula along each g_c (see `_mlp`). "hvp" (any module):
    A[a, b, c] = (H_a g_c)·g_b, computed batch by batch over the directions c; then
    K3 = A + (g_a·H_b g_c) (seed 000, eq. 10 with r = 2).
    """
    n = x.shape[0]
    rows = n + (0 if x_extra is None else x_extra.shape[0])
    itemsize = torch.finfo(x.dtype).bits // 8
    if implementation != "hvp":
        plan = _mlp.mlp_plan(model)
        if plan is not None:   # memory per direction: the direction and its tangents, ~4 P
            m = batch_size or max(1, min(n, _DEFAULT_BUDGET // (4 * _n_params(params)
                                                                * itemsize)))
            return _mlp.k3_mlp(plan, params, x, x_extra, m)
    batch_size = batch_size or _batch_for(params, rows, x.dtype, _DEFAULT_BUDGET, n)
    z = x if x_extra is None else torch.cat([x, x_extra])
    jz = _core.jacobian(model, params, z)                       # dict (nz, *shape)
    jz = {k: v.reshape(v.shape[0], -1) for k, v in jz.items()}   # per tensor (nz, P_k)

    def hvp_rows(v):
        v = {k: t.reshape(params[k].shape) for k, t in v.items()}
        out = jvp(lambda p: _core.jacobian(model, p, z), (params,), (v,))[1]
        return {k: t.reshape(t.shape[0], -1) for k, t in out.items()}

    m = n if batch_size is None else batch_size
    out = []
    for s in range(0, n, m):
        dirs = {k: v[s:s + m] for k, v in jz.items()}            # g_c for c in the batch
        hd = vmap(hvp_rows)(dirs)                                # per tensor (mc, nz, P_k)
        # Contract tensor by tensor (no concatenated copy of the (mc, nz, P) block).
        a1 = sum(torch.einsum("caP,bP->abc", hd[k], jz[k][:n]) for k in hd)  # (H_a g_c)·g_b
        if x_extra is None:
            out.append(a1 + a1.transpose(0, 1))
        else:
            a2 = sum(torch.einsum("aP,cbP->abc", jz[k], hd[k][:, :n]) for k in hd)
            out.append(a1 + a2)                                  # + g_a·(H_b g_c)
    return torch.cat(out, dim=2)


def _k4(model: nn.Module, params: dict, x: torch.Tensor, x_extra: torch.Tensor | None,
        batch_size: int | None, implementation: str = "auto") -> torch.Tensor:
    """K4(a, b, c, d) = ⟨∇θ K3(a, b, c), ∇θ f(x_d)⟩: forward derivative of K3 along g_d.

    (n + n_extra, n, n, n); a over [x; x_extra], b, c, d over x.
    """
    n = x.shape[0]
    jx = _core.jacobian(model, params, x)

    def k3_along(v):
        return jvp(lambda p: _k3(model, p, x, x_extra, None, implementation), (params,),
                   (v,))[1]

    m = n if batch_size is None else batch_size
    out = []
    for s in range(0, n, m):
        dirs = {k: v[s:s + m] for k, v in jx.items()}
        out.append(vmap(k3_along)(dirs).permute(1, 2, 3, 0))
    return torch.cat(out, dim=3)


def _check_scalar_output(model, x, func):
    with torch.no_grad():
        out = model(x[:1])
    if out.numel() != 1:
        raise ValueError(f"{func}: the Neural Tangent Hierarchy needs a scalar-output model "
                         f"(one output per input), got outputs of shape {tuple(out.shape)} for one "
                         f"input; train one output at a time or end the network in Dense(1)")


def _batch_for(params: dict, rows: int, dtype: torch.dtype, budget: int, n: int) -> int:
    per = 2 * rows * _n_params(params) * torch.finfo(dtype).bits // 8   # hd and its tangent
    return int(max(1, min(n, budget // max(per, 1))))


IMPLEMENTATIONS = ("auto", "hvp", "structured")


def _check_implementation(implementation, model, func: str) -> str:
    if implementation == "mlp":
        warnings.warn(f"{func}: implementation='mlp' is deprecated since 0.2; use "
                      f"implementation='structured' (the same algorithm)", FutureWarning,
                      stacklevel=3)
        implementation = "structured"
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{func}: implementation must be one of {IMPLEMENTATIONS}, got "
                         f"{implementation!r}")
    if implementation == "structured" and _mlp.mlp_plan(model) is None:
        raise ValueError(f"{func}: implementation='structured' needs a widenets serial MLP "
                         f"(Dense, activation, ..., Dense(1), all parameters trainable); use "
                         f"'hvp'")
    return implementation


@renamed_arguments(since="0.2", chunk_size="batch_size")
def higher_order_kernel(model: nn.Module, xs, order: int = 3, *, x_first=None,
                        batch_size: int | None = None,
                        implementation: str = "auto") -> torch.Tensor:
    """Higher-order kernels of the Neural Tangent Hierarchy (seed 000, eq. 10).

    K2(a, b) = ⟨g_a, g_b⟩ (the empirical NTK), K3(a, b, c) = ⟨∇θ K2(a, b), g_c⟩,
    K4(a, b, c, d) = ⟨∇θ K3(a, b, c), g_d⟩, with g = ∇θ f over the trainable parameters.
    Computed by Hessian-vector products (jvp of vjp), never a dense Hessian; see
    `k3_hvp_count` for the cost model. K3 and K4 are symmetric in their first two slots.

    Args:
        model: a scalar-output torch module (its current parameters are θ).
        xs: (n, *in_shape) inputs.
        order: 2, 3 or 4.
        x_first: optional (n1, *in_shape) inputs for the first slot only (test points, seed 000
            eq. 22); the other slots stay on xs.
        batch_size: directions per batched HVP block; None picks one for a ~512 MB block.
            (`chunk_size=` is the deprecated spelling.)
        implementation: "hvp" works for any module: (n + n1)·n per-example HVPs plus a
            2·(n + n1)·n²·P contraction (`k3_hvp_count`). "structured" is for widenets serial
            MLPs (Dense, activation, ..., Dense(1)): one forward-mode pass of the structured
            NTK formula per direction, O(n²·P) in all ("mlp" is its deprecated name). "auto"
            takes "structured" when it applies.

    Returns:
        (n, n), (n, n, n) or (n, n, n, n) for order 2, 3, 4; with x_first the first axis has
        n1 entries. dtype of the model.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(16), wn.Erf(), wn.Dense(1))
        >>> model = net.module((3,), seed=0, dtype=torch.float64)
        >>> x = torch.randn(4, 3, dtype=torch.float64)
        >>> wn.finite_width.higher_order_kernel(model, x, order=3).shape
        torch.Size([4, 4, 4])
    """
    func = "higher_order_kernel"
    check_model(model, func)
    if order not in (2, 3, 4):
        raise ValueError(f"{func}: order must be 2, 3 or 4, got {order!r}")
    batch_size = check_batch_size(batch_size, func=func)
    x = check_x(xs, func, "xs", model)
    xf = None if x_first is None else check_x(x_first, func, "x_first", model)
    if xf is not None and xf.shape[1:] != x.shape[1:]:
        raise ValueError(f"{func}: x_first must have the feature shape of xs "
                         f"{tuple(x.shape[1:])}, got {tuple(xf.shape)}")
    _check_scalar_output(model, x, func)
    implementation = _check_implementation(implementation, model, func)
    if order == 2:
        return _core.ntk(model, x if xf is None else xf, x)
    params = _core.params_of(model)
    if order == 3:
        k = _k3(model, params, x, xf, batch_size, implementation)
    else:
        k = _k4(model, params, x, xf, batch_size, implementation)
    if xf is not None:
        k = k[x.shape[0]:]
    _check_finite(k, func)
    return k


def _check_finite(t: torch.Tensor, func: str) -> None:
    if not torch.isfinite(t).all():
        raise FloatingPointError(f"{func}: non-finite entries in the result; use float64 "
                                 f"(net.module(..., dtype=torch.float64)) or a smaller network")


@dataclass(frozen=True)
class NTHKernels:
    """The kernels at initialization that a truncated hierarchy needs (float64).

    Fields (n train points, m test points; test slots first, eq. 22 of seed 000):
        f0: (n,) outputs; k2: (n, n); k3: (n, n, n) or None; k4: (n, n, n, n) or None.
        f0_test: (m,) or None; k2_test: (m, n); k3_test: (m, n, n); k4_test: (m, n, n, n).
        order: the highest kernel computed.
        step: for the discrete-time hierarchy (`nth_kernels(..., discrete=True)`), the one-step
            Taylor coefficients with rows over [train; test] (docs/math.md §nth-discrete):
            "k2" (n+m, n); order >= 3: "k3", "f2" = D²f[g_b, g_c] (n+m, n, n); order 4: "k4",
            "f3" = D³f[g_b, g_c, g_d], "k2_second" = D²K2[g_b, g_c], "f2_drift" = D(D²f[g, g])
            along g_d (n+m, n, n, n). None for the continuous hierarchy only.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1)).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> kernels = wn.finite_width.nth_kernels(model, x, order=3)
        >>> kernels.k2.shape, kernels.k3.shape
        (torch.Size([4, 4]), torch.Size([4, 4, 4]))
        >>> isinstance(kernels, wn.finite_width.NTHKernels)
        True
    """

    f0: torch.Tensor
    k2: torch.Tensor
    k3: torch.Tensor | None
    k4: torch.Tensor | None
    f0_test: torch.Tensor | None
    k2_test: torch.Tensor | None
    k3_test: torch.Tensor | None
    k4_test: torch.Tensor | None
    order: int
    step: dict | None = None


@renamed_arguments(since="0.2", chunk_size="batch_size")
def nth_kernels(model: nn.Module, x, *, order: int = 3, x_test=None,
                batch_size: int | None = None, discrete: bool = False) -> NTHKernels:
    """Compute f0 and K2..K_order on x (and with a test first slot) for `truncated_nth`.

    Args:
        model: scalar-output module at initialization.
        x: (n, *in_shape) training inputs; x_test: (m, *in_shape) or None.
        order: 2, 3 or 4 (the truncation level p).
        batch_size: see `higher_order_kernel` (`chunk_size=` is the deprecated spelling).
        discrete: also compute the one-step coefficients of the discrete-time hierarchy
            (`truncated_nth(..., discrete=True)`); K3 and K4 then come from the same
            Hessian-vector products (generic "hvp" path; for order 4 also n² second forward
            derivatives of the Jacobian and an ((n+m)²)² Gram matrix).

    Returns:
        An `NTHKernels`.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(16), wn.Erf(), wn.Dense(1))
        >>> model = net.module((3,), seed=0, dtype=torch.float64)
        >>> k = wn.finite_width.nth_kernels(model, torch.randn(4, 3, dtype=torch.float64))
        >>> k.k3.shape
        torch.Size([4, 4, 4])
    """
    func = "nth_kernels"
    check_model(model, func)
    if order not in (2, 3, 4):
        raise ValueError(f"{func}: order must be 2, 3 or 4, got {order!r}")
    if not isinstance(discrete, bool):
        raise TypeError(f"{func}: discrete must be a bool, got {type(discrete).__name__}")
    batch_size = check_batch_size(batch_size, func=func)
    x = check_x(x, func, "x", model)
    xt = None if x_test is None else check_x(x_test, func, "x_test", model)
    _check_scalar_output(model, x, func)
    n = x.shape[0]
    params = _core.params_of(model)
    with torch.no_grad():
        f0 = model(x).reshape(-1).double()
        f0t = None if xt is None else model(xt).reshape(-1).double()
    k3 = k3t = k4 = k4t = step = None
    if discrete:
        step = _discrete.step_kernels(model, params, x, xt, order, batch_size)
        for t in step.values():
            _check_finite(t, func)
        k2, k2t = step["k2"][:n], (None if xt is None else step["k2"][n:])
        if order >= 3:
            k3, k3t = step["k3"][:n], (None if xt is None else step["k3"][n:])
        if order >= 4:
            k4, k4t = step["k4"][:n], (None if xt is None else step["k4"][n:])
    else:
        k2 = _core.ntk(model, x).double()
        k2t = None if xt is None else _core.ntk(model, xt, x).double()
        if order >= 3:
            k3all = _k3(model, params, x, xt, batch_size).double()
            k3, k3t = k3all[:n], (None if xt is None else k3all[n:])
        if order >= 4:
            k4all = _k4(model, params, x, xt, batch_size).double()
            k4, k4t = k4all[:n], (None if xt is None else k4all[n:])
    for t in (k2, k2t, k3, k3t, k4, k4t):
        if t is not None:
            _check_finite(t, func)
    return NTHKernels(f0=f0, k2=k2, k3=k3, k4=k4, f0_test=f0t, k2_test=k2t, k3_test=k3t,
                      k4_test=k4t, order=order, step=step)


@dataclass(frozen=True)
class NTHResult:
    """Predicted training dynamics of a truncated Neural Tangent Hierarchy.

    Fields (T times, n train points, m test points), float64:
        times: (T,) times (GD-step units; see the module docstring; step counts when discrete).
        outputs: (T, n) predicted train outputs f_t(X).
        test_outputs: (T, m) predicted test outputs, or None.
        ntk: (T, n, n) predicted NTK K2_t on the training set.
        ntk_test: (T, m, n) predicted test-train NTK, or None.
        order, convention, learning_rate: as passed.
        n_evaluations: right-hand-side evaluations the ODE solver used (steps when discrete).
        discrete: True for the discrete-time (gradient-descent) hierarchy.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1)).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> times = torch.linspace(0, 1, 3, dtype=torch.float64)
        >>> nth = wn.finite_width.truncated_nth(model, x, y, order=3, times=times)
        >>> nth.outputs.shape
        torch.Size([3, 4])
        >>> isinstance(nth, wn.finite_width.NTHResult)
        True
    """

    times: torch.Tensor
    outputs: torch.Tensor
    test_outputs: torch.Tensor | None
    ntk: torch.Tensor
    ntk_test: torch.Tensor | None
    order: int
    convention: str
    learning_rate: float
    n_evaluations: int
    discrete: bool = False


def truncated_nth(model: nn.Module | None, x=None, y=None, *, order: int = 3, times,
                  x_test=None, learning_rate: float = 1.0, convention: str = "mean",
                  kernels: NTHKernels | None = None, discrete: bool = False,
                  method: str = "DOP853", rtol: float = 1e-10,
                  atol: float = 1e-12) -> NTHResult:
    """Integrate the Neural Tangent Hierarchy truncated at level `order` (seed 000, eq. 15).

    order=2 is the frozen-NTK (linearized) dynamics; 3 and 4 let the NTK move (K3, resp. K4,
    frozen). Uses scipy's `solve_ivp` (DOP853 by default) on the reduced state (r, R[, S]) of
    the module docstring, so the cost per step is O(n³) for order 3 and O(n⁴) for order 4.

    With discrete=True it iterates the discrete-time hierarchy of gradient descent with the
    finite step η instead (seed 000 eq. 29; docs/math.md §nth-discrete): each GD step
    updates f, K2 (and K3 and D²f[g, g] for order 4) by their Taylor series along the step,
    exact up to the truncation order, so the O(η) gap between GD and gradient flow is
    predicted too. Cost per step O(n³) (order 3) or O(n⁴) (order 4).

    Args:
        model: scalar-output module at initialization (None when `kernels` is given).
        x: (n, *in_shape) training inputs (unused when `kernels` is given).
        y: (n,) or (n, 1) targets.
        order: 2, 3 or 4.
        times: 1-D nondecreasing times >= 0 to report (GD-step units: t = k after k steps);
            whole numbers of steps when discrete.
        x_test: (m, *in_shape) test inputs or None.
        learning_rate: η in dθ/dt = -η ∇θ L.
        convention: "mean" (loss (1/2n) Σ r², seed 000) or "sum" (loss (1/2) Σ r², seed 002).
        kernels: precomputed `nth_kernels(model, x, order>=order, x_test=...)` (with
            discrete=True for the discrete hierarchy).
        discrete: iterate the hierarchy of gradient descent with step η instead of
            integrating gradient flow.
        method, rtol, atol: passed to `scipy.integrate.solve_ivp` (continuous only).

    Returns:
        An `NTHResult`.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(64), wn.Erf(), wn.Dense(1))
        >>> model = net.module((3,), seed=0, dtype=torch.float64)
        >>> x = torch.randn(6, 3, dtype=torch.float64)
        >>> y = torch.sin(x.sum(1))
        >>> res = wn.finite_width.truncated_nth(model, x, y, order=3, times=[0, 5, 10],
        ...                                     learning_rate=2.0, discrete=True)
        >>> res.outputs.shape
        torch.Size([3, 6])
    """
    func = "truncated_nth"
    if order not in (2, 3, 4):
        raise ValueError(f"{func}: order must be 2, 3 or 4, got {order!r}")
    check_convention(convention, func)
    eta = check_positive(learning_rate, func=func, arg="learning_rate")
    if not isinstance(discrete, bool):
        raise TypeError(f"{func}: discrete must be a bool, got {type(discrete).__name__}")
    t_eval = _check_times(times, func)
    if discrete and (t_eval != np.round(t_eval)).any():
        raise ValueError(f"{func}: with discrete=True, times must be whole numbers of gradient-"
                         f"descent steps, got {t_eval[t_eval != np.round(t_eval)][:3]}")
    if kernels is None:
        if model is None or x is None:
            raise ValueError(f"{func}: pass model and x, or precomputed kernels=nth_kernels(...)")
        kernels = nth_kernels(model, x, order=order, x_test=x_test, discrete=discrete)
    elif not isinstance(kernels, NTHKernels):
        raise TypeError(f"{func}: kernels must come from nth_kernels(...), got "
                        f"{type(kernels).__name__}")
    if kernels.order < order:
        raise ValueError(f"{func}: kernels were computed up to order {kernels.order}, but "
                         f"order={order} needs K{order}; call nth_kernels(..., order={order})")
    if discrete and kernels.step is None:
        raise ValueError(f"{func}: discrete=True needs the one-step coefficients; compute the "
                         f"kernels with nth_kernels(..., discrete=True)")
    n = kernels.f0.shape[0]
    if y is None:
        raise ValueError(f"{func}: y (the (n,) training targets) is required")
    yv = _np(_core.check_y(y, func, n, 1, torch.float64)[:, 0])
    c = flow_rate(convention, eta, n)
    if discrete:
        return _run_discrete(kernels, torch.from_numpy(yv), order, c, t_eval, convention, eta)
    k2 = _np(kernels.k2)
    k3 = None if order < 3 else _np(kernels.k3).reshape(n * n, n)
    k4 = None if order < 4 else _np(kernels.k4).reshape(n * n, n * n)
    has_test = kernels.f0_test is not None
    m = kernels.f0_test.shape[0] if has_test else 0
    k2t = _np(kernels.k2_test) if has_test else None
    k3t = _np(kernels.k3_test).reshape(m * n, n) if has_test and order >= 3 else None
    k4t = _np(kernels.k4_test).reshape(m * n, n * n) if has_test and order >= 4 else None

    def kernels_at(big_r, s):
        """K2_t on train and test-train from R(t) and S(t) (module docstring)."""
        kt = k2.copy()
        ktt = None if not has_test else k2t.copy()
        if order >= 3:
            kt -= c * (k3 @ big_r).reshape(n, n)
            if has_test:
                ktt -= c * (k3t @ big_r).reshape(m, n)
        if order >= 4:
            kt += c * c * (k4 @ s).reshape(n, n)
            if has_test:
                ktt += c * c * (k4t @ s).reshape(m, n)
        return kt, ktt

    sizes = [n, n if order >= 3 else 0, n * n if order >= 4 else 0, m]
    offs = np.cumsum([0] + sizes)

    def split(z):
        return [z[offs[i]:offs[i + 1]] for i in range(4)]

    def rhs(_t, z):
        r, big_r, s, _ft = split(z)
        kt, ktt = kernels_at(big_r, s)
        parts = [-c * (kt @ r)]                                 # seed 000, eq. 9
        if order >= 3:
            parts.append(r)                                      # dR/dt = r
        if order >= 4:
            parts.append(np.outer(r, big_r).reshape(-1))         # dS_cd/dt = r_c R_d
        if has_test:
            parts.append(-c * (ktt @ r))                         # eq. 22: test outputs
        return np.concatenate(parts)

    r0 = _np(kernels.f0) - yv
    z0 = np.concatenate([r0, np.zeros(sizes[1] + sizes[2]),
                         _np(kernels.f0_test) if has_test else np.zeros(0)])
    t_end = float(t_eval[-1])
    if t_end > 0:
        sol = solve_ivp(rhs, (0.0, t_end), z0, method=method, t_eval=t_eval, rtol=rtol,
                        atol=atol)
        if sol.status != 0:
            raise RuntimeError(f"{func}: the ODE solver failed ({sol.message}); the truncated "
                               f"hierarchy may blow up at long times: shorten `times`")
        zs, nfev = sol.y.T, int(sol.nfev)
    else:
        zs, nfev = np.repeat(z0[None], len(t_eval), axis=0), 0
    if not np.isfinite(zs).all():
        raise FloatingPointError(f"{func}: the solution became non-finite; the truncated "
                                 f"hierarchy blows up before t = {t_end}: shorten `times`")
    outs, ntks, touts, tntks = [], [], [], []
    for z in zs:
        r, big_r, s, ft = split(z)
        kt, ktt = kernels_at(big_r, s)
        outs.append(r + yv)
        ntks.append(kt)
        if has_test:
            touts.append(ft)
            tntks.append(ktt)
    as_t = torch.from_numpy
    return NTHResult(times=as_t(np.asarray(t_eval, dtype=np.float64)),
                     outputs=as_t(np.stack(outs)), ntk=as_t(np.stack(ntks)),
                     test_outputs=as_t(np.stack(touts)) if has_test else None,
                     ntk_test=as_t(np.stack(tntks)) if has_test else None,
                     order=order, convention=convention, learning_rate=eta, n_evaluations=nfev)


def _run_discrete(kernels: NTHKernels, y: torch.Tensor, order: int, c: float,
                  t_eval: np.ndarray, convention: str, eta: float) -> NTHResult:
    """The discrete-time hierarchy (`_discrete.iterate`), split into train and test rows."""
    n = kernels.f0.shape[0]
    f0 = kernels.f0 if kernels.f0_test is None else torch.cat([kernels.f0, kernels.f0_test])
    steps = [int(t) for t in t_eval]
    outs, ntks = _discrete.iterate(f0, y, kernels.step, order, c, steps, n)
    has_test = kernels.f0_test is not None
    return NTHResult(times=torch.from_numpy(np.asarray(t_eval, dtype=np.float64)),
                     outputs=outs[:, :n], ntk=ntks[:, :n],
                     test_outputs=outs[:, n:] if has_test else None,
                     ntk_test=ntks[:, n:] if has_test else None, order=order,
                     convention=convention, learning_rate=eta, n_evaluations=steps[-1],
                     discrete=True)


def _np(t: torch.Tensor) -> np.ndarray:
    """float64 numpy copy on the CPU (the ODE runs in scipy)."""
    return t.detach().to("cpu", torch.float64).numpy()


def _check_times(times, func: str) -> np.ndarray:
    try:
        t = np.asarray(times.detach().cpu() if isinstance(times, torch.Tensor) else times,
                       dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{func}: times must be a 1-D sequence of numbers, got "
                        f"{type(times).__name__}") from None
    if t.size == 0 or not np.isfinite(t).all() or (t < 0).any() or (np.diff(t) < 0).any():
        raise ValueError(f"{func}: times must be a non-empty, finite, nondecreasing sequence of "
                         f"times >= 0, got {t[:5]}{'...' if t.size > 5 else ''}")
    return t
