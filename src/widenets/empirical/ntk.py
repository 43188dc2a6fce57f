"""Public entry points: `empirical_ntk` and `empirical_nngp` of any torch model.

Θ(x, x')[a, b] = Σ_p ∂f_a(x)/∂θ_p ∂f_b(x')/∂θ_p          (Jacot et al. 2018; Lee et al. 2019,
                                                        eq. 4; docs/math.md §empirical-ntk)
K(x, x')[a, b] = f_a(x) f_b(x')

Three exact implementations (jacobian.py, ntvp.py, structured.py) share this driver, which checks
the inputs, probes the model once, picks the implementation ("auto": cost.py), and computes the
kernel in blocks of x1 x x2 rows when `batch_size` is set.
"""

from __future__ import annotations

import warnings

import torch

from .._memory import memory_budget
from ._target import (
    IMPLEMENTATIONS,
    MODES,
    Target,
    check_batch_size,
    check_choice,
    check_fixed_function,
    check_inputs,
    resolve_target,
)
from .attention import no_fused_attention
from .cost import (
    DEFAULT_BUDGET_BYTES,
    auto_block,
    calibrate,
    choose_implementation,
    estimate_costs,
)
from .jacobian import JacobianEngine
from .ntvp import NtvpEngine
from .structured import StructuredEngine, make_plan

__all__ = ["empirical_ntk", "empirical_nngp", "jacobian_ntk"]


def _probe_batch(x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
    if x1.shape[0] >= 2:
        return x1[:2]
    if x2 is not None:
        return torch.cat([x1[:1], x2[:1]])
    return x1[:1]


def empirical_ntk(model, x1, x2=None, *, params=None, implementation: str = "auto",
                  mode: str = "trace", batch_size: int | None = None) -> torch.Tensor:
    """Empirical neural tangent kernel Θ = J(x1) J(x2)ᵀ of a finite model.

    Args:
        model: a `torch.nn.Module` (called as model(x), evaluated with
            `torch.func.functional_call`), or a function f(params, x) with params a dict of
            tensors. Outputs (n, ...) are flattened to (n, O). Module parameters with
            requires_grad=False are held fixed; buffers are used as they are. A BatchNorm in
            train mode (batch statistics) or an active Dropout raises ValueError: the output for
            one input then depends on its batch or on chance, so the NTK is undefined; call
            model.eval().
        x1: (n1, *input_shape) inputs (any dtype the model accepts, e.g. token ids).
        x2: (n2, *input_shape) inputs, or None for x1 (the symmetric kernel, computed once).
        params: None for the module's trainable parameters; or a dict name -> tensor (for a
            module, exactly its trainable parameter names) giving the point p0.
        implementation: "jacobian" (per-sample Jacobians, then contraction), "ntvp"
            (NTK-vector products, no full Jacobian), "structured" (layer-wise Gram or Jacobian
            products for nn.Linear (also on sequences, batch-first or sequence-first),
            nn.Conv1d/2d/3d, nn.Embedding, nn.MultiheadAttention (so nn.Transformer*Layer; see
            `attention.py`), widenets' Dense/Conv modules, cheap per-input Jacobians for the
            scales of LayerNorm/GroupNorm/BatchNorm(eval)/InstanceNorm and for bare
            parameters broadcast along the batch in forward (learned positions, class
            tokens, gains: `bare.py`), autograd Jacobians of the other parameters only; see
            `structure.py`) or "auto"
            (the fastest by the estimate in `widenets.empirical.cost`: multiply-adds and
            dispatched operations, weighted by per-process timings of this device). All are
            exact and agree to rounding. Where "auto" can miss the fastest (why it is not
            always within 10% of it): the estimates are within a factor ~2 of measured
            times, so when two implementations are closer than that it may pick the one up
            to ~1.5x slower. On the benchmark's models (benchmarks/empirical_ntk.py) it picks
            "structured", measured the fastest of the three on each (transformer, ResNet-18
            width 8, MLP, tutorial CNN; "jacobian" 1.4-1.8x slower there, "ntvp" more), and
            its own cost beyond "structured" is the estimate (under 1 ms) plus counting the
            operations of one forward pass, so its time is that of "structured" to the noise
            (the benchmark runs them in a random order per round: a run right after one that
            freed much memory pays ~10% for fresh pages). On a GPU (an H100, torch 2.11) it
            picks "structured" on the transformer and the MLP but "jacobian" on the ResNet-18
            of width 8, where "structured" was 1.3x faster: the per-operation launch cost
            it calibrates weighs the structured contraction's many small products too
            heavily; pass implementation="structured" there; with
            batch_size=None the estimate counts the automatic blocking (recomputed column
            blocks of "jacobian", the parts of "structured": `cost.estimate_costs`), so on
            the full ResNet-18 it does not fall back to "ntvp" for lack of memory;
            a parameter used in forward other than through elementwise arithmetic or expand
            (e.g. `x @ self.w`) costs "structured" one per-input Jacobian pass through the
            whole model.
        mode: "trace": (n1, n2), the mean over the O outputs of Θ[a, a] (comparable with the
            analytic per-output kernel, as in neural-tangents); "full": (n1, n2, O, O);
            "diagonal": (n1, n2, O), the entries Θ[a, a].
        batch_size: compute in blocks of at most batch_size rows of x1 and of x2 so memory
            stays bounded (results identical to rounding). None: automatic, within
            `widenets.empirical.cost.DEFAULT_BUDGET_BYTES` (2 GiB) and half of the memory
            available: "jacobian" blocks its per-input Jacobians; "structured" computes its
            state (the layers' factors) in blocks of inputs and, when the state of all
            inputs exceeds half the budget, in parts (groups of layers, each computed once
            for all inputs and contracted at once: one forward pass per part instead of
            recomputing blocks; benchmarks/empirical_ntk.py --sections memory measures
            the peak on ResNet-18, 11 M parameters).

    Returns:
        The kernel in the model's dtype and on its device, shaped as `mode` says.

    Raises:
        ValueError: bad mode, implementation or batch_size; inputs the model rejects (with its
            own message); no trainable parameters; params keys that do not match the model;
            BatchNorm in train mode; a random forward (F.dropout(training=True), noise) or one
            whose output for an input depends on the rest of its batch (h - h.mean(0),
            softmax over dim 0), found by `check_fixed_function` on two of the inputs.
        FloatingPointError: a non-finite result.
        TypeError: model or params of the wrong type.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 2))
        >>> x1, x2 = torch.randn(3, 4), torch.randn(5, 4)
        >>> wn.empirical_ntk(model, x1, x2).shape                  # mean over the 2 outputs
        torch.Size([3, 5])
        >>> wn.empirical_ntk(model, x1, mode="full").shape
        torch.Size([3, 3, 2, 2])
    """
    func = "empirical_ntk"
    check_choice(mode, MODES, func=func, arg="mode")
    check_choice(implementation, IMPLEMENTATIONS, func=func, arg="implementation")
    batch_size = check_batch_size(batch_size, func=func)
    target = resolve_target(model, params, func=func)
    x1, x2 = check_inputs(x1, x2, func=func)
    if x2 is not None:
        target.call_checked(x2[:1], "x2", x2.shape)
    check_fixed_function(target, x1, x2)
    with no_fused_attention():
        out, plan = _ntk(target, x1, x2, implementation, mode, batch_size)
    if mode == "trace":
        out = out / plan.out_dim
    _check_finite(out, func)
    return out


def _ntk(target: Target, x1, x2, implementation: str, mode: str, batch_size: int | None):
    itemsize = torch.empty((), dtype=target.dtype).element_size()
    # the shared memory policy (half of the available memory), capped at 2 GiB
    budget_bytes = memory_budget(cap=DEFAULT_BUDGET_BYTES, device=x1.device)
    budget = budget_bytes // itemsize
    plan = make_plan(target, _probe_batch(x1, x2), count_flops=implementation == "auto",
                     x_shape=x1.shape)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    auto = implementation == "auto"
    if auto:
        blocks = None if batch_size is None else (min(n1, batch_size), min(n2, batch_size))
        costs = estimate_costs(plan, n1, n2, mode, symmetric=x2 is None, blocks=blocks,
                               budget=budget)
        implementation = choose_implementation(costs, budget,
                                               calibrate(x1.device, target.dtype))
    try:
        out = _run(implementation, target, plan, x1, x2, mode, batch_size, budget_bytes)
    except NotImplementedError:
        if not (auto and implementation == "ntvp"):
            raise
        # ntvp needs forward-mode AD, which some fused ops lack: take the reverse-mode path.
        out = _run("structured", target, plan, x1, x2, mode, batch_size, budget_bytes)
    return out, plan


def _run(implementation: str, target: Target, plan, x1, x2, mode: str,
         batch_size: int | None, budget_bytes: int) -> torch.Tensor:
    itemsize = torch.empty((), dtype=target.dtype).element_size()
    budget = budget_bytes // itemsize
    engine = _engine(implementation, target, plan, budget)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    if implementation == "structured":
        engine.configure(n1, n2, mode, x2 is None)
        if batch_size is None:
            block = _auto_block(implementation, plan, n1, n2, budget)
            return run_parts(engine, x1, x2, mode, block, budget_bytes=budget_bytes)
    if batch_size is None and implementation == "jacobian":
        batch_size = _auto_block(implementation, plan, n1, n2, budget)
    return run_blocked(engine, x1, x2, mode, batch_size, budget_bytes=budget_bytes)


def _auto_block(implementation: str, plan, n1: int, n2: int, budget: int) -> int | None:
    """batch_size=None: the block size of `cost.auto_block` (None: one block)."""
    return auto_block(implementation, plan, n1, n2, budget)


def _engine(implementation: str, target: Target, plan, budget: int):
    if implementation == "jacobian":
        return JacobianEngine(target, plan)
    if implementation == "ntvp":
        return NtvpEngine(target, plan, budget=budget)
    return StructuredEngine(target, plan, budget=budget)


class _PartEngine:
    """The engine restricted to one part of its state (structured.Part)."""

    def __init__(self, engine, part):
        self.engine, self.part = engine, part

    def prepare(self, x):
        return self.engine.prepare(x, self.part)

    def contract(self, s1, s2, mode):
        return self.engine.contract(s1, s2, mode)

    def state_bytes(self, state):
        return self.engine.state_bytes(state)


def run_parts(engine, x1: torch.Tensor, x2: torch.Tensor | None, mode: str,
              block: int | None, *, budget_bytes: int) -> torch.Tensor:
    """Θ as a sum over parts of the structured state (`StructuredEngine.parts`): the layers
    are grouped so that a group's state for all inputs fits in half of budget_bytes; each
    group's state is computed once, in blocks of `block` inputs (None: one block), and its
    whole kernel contracted at once (Θ = Σ_parameters Θ_W, docs/math.md §empirical-ntk). A
    group too large for all inputs goes through `run_blocked`. Every input then passes
    forward once per group, instead of once per pair of blocks."""
    symmetric = x2 is None
    n1 = x1.shape[0]
    n = n1 + (0 if symmetric else x2.shape[0])
    out = None
    for part in engine.parts(n, budget_bytes // 2):
        if part.fits:
            b = block or n
            s1 = engine.merge([engine.prepare(x1[i:i + b], part) for i in range(0, n1, b)])
            s2 = s1 if symmetric else engine.merge(
                [engine.prepare(x2[i:i + b], part) for i in range(0, x2.shape[0], b)])
            blk = engine.contract(s1, s2, mode)
            del s1, s2
        else:
            blk = run_blocked(_PartEngine(engine, part), x1, x2, mode, block or n,
                              budget_bytes=budget_bytes // 2)
        out = blk if out is None else out.add_(blk)
    return out


def _transpose_block(blk: torch.Tensor, mode: str) -> torch.Tensor:
    """Θ(x2, x1) from Θ(x1, x2): swap the input axes and the output axes."""
    if mode == "full":
        return blk.permute(1, 0, 3, 2)
    if mode == "diagonal":
        return blk.permute(1, 0, 2)
    return blk.T


def run_blocked(engine, x1: torch.Tensor, x2: torch.Tensor | None, mode: str,
                batch_size: int | None, *, budget_bytes: int) -> torch.Tensor:
    """Θ over x1 x x2 in blocks. States of x2 blocks are kept while they fit in budget_bytes,
    else recomputed; with x2 None only blocks on and above the diagonal are computed."""
    symmetric = x2 is None
    xs2 = x1 if symmetric else x2
    n1, n2 = x1.shape[0], xs2.shape[0]
    if batch_size is None or (batch_size >= n1 and batch_size >= n2):
        s1 = engine.prepare(x1)
        s2 = s1 if symmetric else engine.prepare(xs2)
        return engine.contract(s1, s2, mode)
    b = batch_size
    spans1 = [(i, min(i + b, n1)) for i in range(0, n1, b)]
    spans2 = spans1 if symmetric else [(j, min(j + b, n2)) for j in range(0, n2, b)]
    out = None
    cache: dict[int, object] = {}
    cache_ok = True

    def state2(j):
        nonlocal cache_ok
        if j in cache:
            return cache[j]
        s = engine.prepare(xs2[spans2[j][0]:spans2[j][1]])
        if cache_ok and engine.state_bytes(s) * len(spans2) <= budget_bytes:
            cache[j] = s
        else:
            cache_ok = False
            cache.clear()
        return s

    for i, (a0, a1) in enumerate(spans1):
        s1 = state2(i) if symmetric else engine.prepare(x1[a0:a1])
        for j, (c0, c1) in enumerate(spans2):
            if symmetric and j < i:
                continue
            s2 = s1 if (symmetric and j == i) else state2(j)
            blk = engine.contract(s1, s2, mode)
            if out is None:
                out = torch.empty((n1, n2, *blk.shape[2:]), dtype=blk.dtype, device=blk.device)
            out[a0:a1, c0:c1] = blk
            if symmetric and j > i:
                out[c0:c1, a0:a1] = _transpose_block(blk, mode)
    return out


def _check_finite(out: torch.Tensor, func: str) -> None:
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        hint = "" if out.dtype == torch.float64 else " or use float64"
        raise FloatingPointError(f"{func}: the kernel has {bad} non-finite entries (the model "
                                 f"produced NaN/inf gradients or overflowed in {out.dtype}); "
                                 f"check the model on these inputs{hint}")


def empirical_nngp(model, x1, x2=None, *, params=None, mode: str = "trace",
                   batch_size: int | None = None) -> torch.Tensor:
    """Empirical output covariance K = f(x1) f(x2)ᵀ of a finite model (one network, no average).

    Args:
        model, x1, x2, params, batch_size: as in `empirical_ntk` (the forward passes run in
            blocks of batch_size inputs).
        mode: "trace": (n1, n2), the mean over outputs Σ_a f_a(x) f_a(x') / O; "full":
            (n1, n2, O, O); "diagonal": (n1, n2, O).

    Returns:
        The kernel in the model's dtype and device.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 2))
        >>> x1, x2 = torch.randn(3, 4), torch.randn(5, 4)
        >>> k = wn.empirical_nngp(model, x1, x2)
        >>> bool(torch.allclose(k, model(x1) @ model(x2).T / 2))
        True
    """
    func = "empirical_nngp"
    check_choice(mode, MODES, func=func, arg="mode")
    batch_size = check_batch_size(batch_size, func=func)
    target = resolve_target(model, params, func=func)
    x1, x2 = check_inputs(x1, x2, func=func)
    target.call_checked(x1[:1], "x1", x1.shape)
    check_fixed_function(target, x1, x2)
    f1 = _outputs(target, x1, batch_size, "x1")
    f2 = f1 if x2 is None else _outputs(target, x2, batch_size, "x2")
    if mode == "trace":
        out = f1 @ f2.T / f1.shape[1]
    elif mode == "diagonal":
        out = f1[:, None, :] * f2[None, :, :]
    else:
        out = f1[:, None, :, None] * f2[None, :, None, :]
    _check_finite(out, func)
    return out


def _outputs(target: Target, x: torch.Tensor, batch_size: int | None, arg: str) -> torch.Tensor:
    b = batch_size or x.shape[0]
    with torch.no_grad():
        return torch.cat([target.call_checked(x[i:i + b], arg, x.shape)
                          for i in range(0, x.shape[0], b)])


def jacobian_ntk(model, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """Deprecated since 0.2 (removed in 0.3): `empirical_ntk(model, x1, x2,
    implementation="jacobian")`, which it calls after a FutureWarning.

    Args:
        model, x1, x2: as in `empirical_ntk`.

    Returns:
        (n1, n2) empirical NTK, mean over outputs.

    Example:
        >>> import warnings
        >>> model = torch.nn.Linear(3, 2)
        >>> x = torch.randn(4, 3)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", FutureWarning)
        ...     old = wn.empirical.jacobian_ntk(model, x)
        >>> bool(torch.equal(old, wn.empirical_ntk(model, x, implementation="jacobian")))
        True
    """
    warnings.warn("jacobian_ntk is deprecated since 0.2; use empirical_ntk(model, x1, x2, "
                  "implementation='jacobian')", FutureWarning, stacklevel=2)
    return empirical_ntk(model, x1, x2, implementation="jacobian", mode="trace")
