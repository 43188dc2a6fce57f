"""Cost model behind implementation="auto".

From one probe forward pass (`structured.make_plan(count_flops=True)`) we know F, the forward
multiply-adds of one input (exact for the known layers and attention products, one per
parameter for the rest), P the trainable parameters, O the outputs
per input, and for every verified known layer its factor shapes. With n1, n2 inputs
(n2' = 0 when x2 is None, as those Jacobians are reused) and m = O² for mode "full", O otherwise,
the estimated multiply-adds and peak elements are

    jacobian:   (n1 + n2') F (1 + 2 O) + n1 n2 m P;           memory (b1 + b2') O P
    ntvp:       n2 F (1 + 2 O) + 2 n1 n2 O F;                  memory chunked within budget
    structured: (n1 + n2') F (1 + O)        [one forward, O cotangent passes]
                + Σ_known layers min(gram, jacobian form)      (factors.py)
                + (n1 + n2') F (1 + 2 O) + n1 n2 m P_u         (only if P_u > 0);
                memory: the factors + (b1 + b2') O P_u

with P_u the parameters of modules the structured path does not know and b1, b2 the block
sizes. A backward pass is counted as 2 F when it also forms weight gradients and F when it only
propagates cotangents.

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

__all__ = ["DEFAULT_BUDGET_BYTES", "estimate_costs", "choose_implementation", "calibrate"]

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


def estimate_costs(plan, n1: int, n2: int, mode: str, *, symmetric: bool,
                   blocks: tuple[int, int], budget: int) -> dict[str, tuple[float, ...]]:
    """Estimated (multiply-adds, peak elements, plain ops, vmapped ops) of each implementation.

    Args:
        plan: the probe's `Plan` (with flops and ops counted).
        n1, n2: numbers of inputs; blocks: (b1, b2) block sizes actually used.
        mode: "full", "trace" or "diagonal".
        symmetric: x2 is None.
        budget: elements an intermediate may hold (for the per-layer form choice).
    """
    f = float(plan.flops or 0.0)
    o = plan.out_dim
    m = o * o if mode == "full" else o
    p = plan.n_params
    k_ops = float(plan.ops or 0)
    n2e = 0 if symmetric else n2
    b1, b2 = blocks
    b2e = 0 if symmetric else b2
    nb1, nb2 = math.ceil(n1 / b1), math.ceil(n2 / b2)
    prepares = nb1 + (0 if symmetric else nb2)
    pairs = nb1 * nb2
    tensors = max(1, plan.n_tensors)
    out: dict[str, tuple[float, ...]] = {}
    out["jacobian"] = ((n1 + n2e) * f * (1 + 2 * o) + n1 * n2 * m * p, (b1 + b2e) * o * p,
                       prepares * 3 * k_ops + pairs * tensors, prepares * 3 * k_ops)
    cols = max(1, min(n2, budget // max(1, o * int(p + n1 * max(plan.act, o)))))
    chunks = math.ceil(n2 / cols) * nb1
    out["ntvp"] = (n2 * f * (1 + 2 * o) + 2.0 * n1 * n2 * o * f, min(budget, b2 * o * p),
                   chunks * 4, chunks * 5 * k_ops)
    s_cost = (n1 + n2e) * f * (1 + o)
    s_mem = 0.0
    layers = 0
    for layer in plan.known:
        layers += len(layer.shapes)
        gram = jac = mem = kc = 0.0
        for kind, d_in, shape in layer.shapes.values():
            _, g, t, d = shape
            shape = (o, g, t, d)
            kx, kc, j, mm = form_costs(shape, shape, kind, d_in, n1, n2, mode, symmetric)
            gram, jac, mem = gram + kx, jac + j, mem + mm
            s_mem += (b1 + b2e) * o * g * t * (d + (d_in if kind == "dense" else 1))
        gram += kc                              # weight and bias share the cotangent Gram
        s_cost += jac if (jac < gram and mem <= budget) else gram
    plain = prepares * (k_ops + 8 * layers) + pairs * 8 * layers
    vmapped = 0.0
    if plan.batched_backward and o > 1:
        vmapped += prepares * 2 * k_ops
    else:
        plain += prepares * o * k_ops
    pu = plan.fallback_params
    if pu:
        s_cost += (n1 + n2e) * f * (1 + 2 * o) + n1 * n2 * m * pu
        s_mem += (b1 + b2e) * o * pu
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
