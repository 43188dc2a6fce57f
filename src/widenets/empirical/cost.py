"""Cost model behind implementation="auto".

From one probe forward pass (`structured.make_plan(count_flops=True)`) we know F, the forward
multiply-adds of one input (exact for the known layers and attention products, one per
parameter for the rest), P the trainable parameters, O the outputs
per input, and for every verified known layer its factor shapes. With n1, n2 inputs
(n2' = 0 when x2 is None, as those Jacobians are reused) and m = O² for mode "full", O otherwise,
the estimated multiply-adds and peak elements are

    jacobian:   R (n1 + n2') F (1 + 2 O) + n1 n2 m P;         memory (b1 + b2') O P
    ntvp:       n2 F (1 + 2 O) + 2 n1 n2 O F;                  memory chunked within budget
    structured: (n1 + n2') F (1 + O)        [one forward, O cotangent passes]
                + Σ_known layers min(gram, jacobian form)      (factors.py)
                + (n1 + n2') F (1 + 2 O) + n1 n2 m P_u         (only if P_u > 0);
                memory: the state (factors, or Jacobian rows: `structured.state_elements`)
                of b1 + b2' inputs

with P_u the parameters of modules the structured path does not know and b1, b2 the block
sizes. A backward pass is counted as 2 F when it also forms weight gradients and F when it only
propagates cotangents. R >= 1 counts recomputed blocks: when the column blocks' states do not
fit the budget, `ntk.run_blocked` recomputes them for every row block. With batch_size=None,
"jacobian" blocks by `auto_block` (so its memory fits, at the price of R), and "structured"
runs in S parts of its state, each holding its layers' state for all inputs within half the
budget (`ntk.run_parts`): its passes cost (n1 + n2') F (S + O (S + 1) / 2) (a forward pass
per part; the backward passes of a part reach its first layer, on average half the model)
and its memory is at most the budget.

Small models are dominated by per-call overhead, not arithmetic: each implementation also
dispatches a number of tensor operations, counted from K, the operations of one forward pass
(the nodes of the probe's autograd graph), as

    jacobian:   blocks x 3 K under vmap + block pairs x (parameter tensors)
    ntvp:       column chunks x 5 K under vmap
    structured: blocks x (K + 2 K under vmap, or (1 + O) K plain when looping over outputs,
                + 8 per known layer) + block pairs x 8 per known layer
                + the jacobian terms for the autograd part (if any)

and the estimated time is  MACs x t_mac + plain ops x t_op + vmapped ops x t_vmap, with the
three constants measured once per process, device and dtype by `calibrate` (a matrix product,
a tiny op, a tiny op under vmap; about 50 ms). "auto" takes the fastest estimate whose memory
fits the budget (`DEFAULT_BUDGET_BYTES`), the least memory if none fits; ties go to structured,
then jacobian.
"""

from __future__ import annotations

import math
import time

import torch

from .factors import form_costs

__all__ = ["DEFAULT_BUDGET_BYTES", "estimate_costs", "choose_implementation", "calibrate",
           "auto_block"]

#: Memory the automatic choices (implementation, intermediate chunking, caching of blocks) aim
#: to stay under, in bytes.
DEFAULT_BUDGET_BYTES = 2 * 2**30

_ORDER = ("structured", "jacobian", "ntvp")


_CALIBRATION: dict[tuple[str, torch.dtype], tuple[float, float, float]] = {}


def calibrate(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
              ) -> tuple[float, float, float]:
    """(seconds per multiply-add, per plain op, per op under vmap) on this device and dtype.

    Measured once per process (cached): a 192³ matrix product, 100 additions of 8-element
    tensors, and a vmapped function of 50 such additions. The minimum of three runs of each is
    taken (the least disturbed by other processes).

    Args:
        device: where the kernels will run.
        dtype: their dtype.

    Returns:
        (t_mac, t_op, t_vmap) in seconds.

    Example:
        >>> import torch
        >>> from widenets.empirical.cost import calibrate
        >>> t_mac, t_op, t_vmap = calibrate("cpu", torch.float32)
        >>> 0 < t_mac < t_op
        True
    """
    device = torch.device(device)
    key = (str(device), dtype)
    if key in _CALIBRATION:
        return _CALIBRATION[key]
    from torch.func import vmap

    def best(fn, reps=3):
        fn()
        out = math.inf
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out = min(out, time.perf_counter() - t0)
        return out

    m = 192
    a = torch.randn(m, m, device=device, dtype=dtype)
    t_mac = best(lambda: a @ a) / m**3
    small = torch.ones(8, device=device, dtype=dtype)

    def adds(x, k=100):
        for _ in range(k):
            x = x + small
        return x

    t_op = best(lambda: adds(small)) / 100
    batch = torch.ones(4, 8, device=device, dtype=dtype)
    t_vmap = best(lambda: vmap(lambda x: adds(x, 50))(batch)) / 50
    _CALIBRATION[key] = (t_mac, t_op, max(t_vmap, t_op))
    return _CALIBRATION[key]


def auto_block(implementation: str, plan, n1: int, n2: int, budget: int) -> int | None:
    """The block size batch_size=None uses: one block (None), unless the states of two blocks
    would exceed the budget (elements). Per input: "jacobian" holds O P Jacobian entries;
    "structured" holds the factors of its known layers (inputs and O cotangents per
    position), O P_u Jacobian entries of the autograd part, and while recording, activations
    for the backward passes."""
    o = plan.out_dim
    if implementation == "jacobian":
        per_input = o * plan.n_params
    else:
        per_input = o * plan.fallback_params
        for layer in plan.known:
            for kind, d_in, (_, g, t, d) in layer.shapes.values():
                a = {"dense": g * t * d_in, "index": t, "diag": t * d}.get(kind, 0)
                per_input += a + o * g * t * d
        per_input += plan.act * (3 + (o if plan.batched_backward else 1))
    if per_input == 0:
        return None
    b = max(1, int(budget // (2 * per_input)))
    return None if b >= max(n1, n2) else b


def _prepares(n1: int, n2: int, b1: int, b2: int, symmetric: bool, cached: bool) -> float:
    """Block states computed by `ntk.run_blocked`: each block once when the column blocks'
    states are cached, else the column blocks again for every row block (symmetric: the
    blocks on and above the diagonal)."""
    nb1, nb2 = math.ceil(n1 / b1), math.ceil(n2 / b2)
    if symmetric:
        return nb1 if cached else nb1 + nb1 * (nb1 - 1) / 2
    return nb1 + (nb2 if cached else nb1 * nb2)


def estimate_costs(plan, n1: int, n2: int, mode: str, *, symmetric: bool,
                   blocks: tuple[int, int] | None, budget: int
                   ) -> dict[str, tuple[float, ...]]:
    """Estimated (multiply-adds, peak elements, plain ops, vmapped ops) of each implementation.

    Args:
        plan: the probe's `Plan` (with flops and ops counted).
        n1, n2: numbers of inputs.
        mode: "full", "trace" or "diagonal".
        symmetric: x2 is None.
        blocks: (b1, b2) block sizes of batch_size; None for batch_size=None, where "jacobian"
            blocks by `auto_block` and "structured" runs in parts of its state
            (`ntk.run_parts`): both then fit the budget, at the cost of recomputation
            (column blocks, or one forward pass per part).
        budget: elements the states and intermediates may hold.
    """
    f = float(plan.flops or 0.0)
    o = plan.out_dim
    m = o * o if mode == "full" else o
    p = plan.n_params
    k_ops = float(plan.ops or 0)
    n2e = 0 if symmetric else n2
    auto = blocks is None
    tensors = max(1, plan.n_tensors)
    out: dict[str, tuple[float, ...]] = {}

    # jacobian
    if auto:
        b = auto_block("jacobian", plan, n1, n2, budget) or max(n1, n2)
        b1, b2 = min(n1, b), min(n2, b)
    else:
        b1, b2 = blocks
    b2e = 0 if symmetric else b2
    nb1, nb2 = math.ceil(n1 / b1), math.ceil(n2 / b2)
    pairs = nb1 * nb2
    prepares = _prepares(n1, n2, b1, b2, symmetric, n2 * o * p <= budget or nb2 == 1)
    per_block = (n1 + n2e) / (nb1 + (0 if symmetric else nb2))
    out["jacobian"] = (prepares * per_block * f * (1 + 2 * o) + n1 * n2 * m * p,
                       (b1 + b2e) * o * p,
                       prepares * 3 * k_ops + pairs * tensors, prepares * 3 * k_ops)

    # ntvp: one block (batch_size=None) or the given blocks
    b1, b2 = (n1, n2) if auto else blocks
    nb1 = math.ceil(n1 / b1)
    cols = max(1, min(n2, budget // max(1, o * int(p + n1 * max(plan.act, o)))))
    chunks = math.ceil(n2 / cols) * nb1
    out["ntvp"] = (n2 * f * (1 + 2 * o) + 2.0 * n1 * n2 * o * f, min(budget, b2 * o * p),
                   chunks * 4, chunks * 5 * k_ops)

    # structured
    from .structured import state_elements

    as_jacobian, per_layer = state_elements(plan, n1, n2, mode, symmetric)
    state = (sum(per_layer) + o * plan.fallback_params) * (n1 + n2e)
    if auto:
        b = auto_block("structured", plan, n1, n2, budget) or max(n1, n2)
        b1, b2 = min(n1, b), min(n2, b)
        parts = max(1, math.ceil(state / (budget / 2)))
        nb1, nb2 = math.ceil(n1 / b1), math.ceil(n2 / b2)
        prepares = parts * (nb1 + (0 if symmetric else nb2))
        pairs = parts
        # every part: a forward pass; its backward passes reach about half of the model
        passes = (n1 + n2e) * f * (parts + o * (parts + 1) / 2)
        s_mem = min(state, budget / 2) + (b1 + b2e) * (state / (n1 + n2e))
    else:
        b1, b2 = blocks
        nb1, nb2 = math.ceil(n1 / b1), math.ceil(n2 / b2)
        prepares = _prepares(n1, n2, b1, b2, symmetric,
                             n2 * state / (n1 + n2e) <= budget or nb2 == 1)
        pairs = nb1 * nb2
        passes = prepares * (n1 + n2e) / (nb1 + (0 if symmetric else nb2)) * f * (1 + o)
        s_mem = (b1 + (0 if symmetric else b2)) * state / (n1 + n2e)
    s_cost = passes
    layers = 0
    for layer in plan.known:
        layers += len(layer.shapes)
        gram = jac = kc = 0.0
        for name, (kind, d_in, shape) in layer.shapes.items():
            _, g, t, d = shape
            shape = (o, g, t, d)
            kx, kc, j, _ = form_costs(shape, shape, kind, d_in, n1, n2, mode, symmetric)
            if name in as_jacobian:
                s_cost += j
            else:
                gram, jac = gram + kx, jac + j
        gram += kc                              # weight and bias share the cotangent Gram
        s_cost += jac if jac < gram else gram
    plain = prepares * (k_ops + 8 * layers) + pairs * 8 * layers
    vmapped = 0.0
    if plan.batched_backward and o > 1:
        vmapped += prepares * 2 * k_ops
    else:
        plain += prepares * o * k_ops
    pu = plan.fallback_params
    if pu:
        s_cost += (n1 + n2e) * f * (1 + 2 * o) + n1 * n2 * m * pu
        plain += pairs * len(plan.fallback)
        vmapped += prepares * 3 * k_ops
    out["structured"] = (s_cost, s_mem, plain, vmapped)
    return out


def choose_implementation(costs: dict[str, tuple[float, ...]], budget: int,
                          calibration: tuple[float, float, float] | None = None) -> str:
    """Fastest estimate within the memory budget (elements); least memory if none fits.

    costs: as `estimate_costs` returns; calibration: (t_mac, t_op, t_vmap) from `calibrate`, or
    None to compare multiply-adds only."""
    def seconds(k):
        c = costs[k]
        if calibration is None or len(c) < 4:
            return c[0]
        t_mac, t_op, t_vmap = calibration
        return c[0] * t_mac + c[2] * t_op + c[3] * t_vmap

    fits = [k for k in _ORDER if costs[k][1] <= budget]
    if fits:
        return min(fits, key=lambda k: (seconds(k), _ORDER.index(k)))
    return min(_ORDER, key=lambda k: (costs[k][1], _ORDER.index(k)))
