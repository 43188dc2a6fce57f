"""Cost model behind implementation="auto".

From one probe forward pass (`structured.make_plan(count_flops=True)`) we know F, the forward
multiply-adds of one input (torch.utils.flop_counter), P the trainable parameters, O the outputs
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
propagates cotangents. "auto" takes the cheapest estimate whose memory fits the budget
(`DEFAULT_BUDGET_BYTES`), the least memory if none fits; ties go to structured, then jacobian.
"""

from __future__ import annotations

__all__ = ["DEFAULT_BUDGET_BYTES", "estimate_costs", "choose_implementation"]

#: Memory the automatic choices (implementation, intermediate chunking, caching of blocks) aim
#: to stay under, in bytes.
DEFAULT_BUDGET_BYTES = 2 * 2**30

_ORDER = ("structured", "jacobian", "ntvp")


def estimate_costs(plan, n1: int, n2: int, mode: str, *, symmetric: bool,
                   blocks: tuple[int, int], budget: int) -> dict[str, tuple[float, float]]:
    """Estimated (multiply-adds, peak elements) of each implementation.

    Args:
        plan: the probe's `Plan` (with flops counted).
        n1, n2: numbers of inputs; blocks: (b1, b2) block sizes actually used.
        mode: "full", "trace" or "diagonal".
        symmetric: x2 is None.
        budget: elements an intermediate may hold (for the per-layer form choice).
    """
    from .factors import form_costs

    f = float(plan.flops or 0.0)
    o = plan.out_dim
    m = o * o if mode == "full" else o
    p = plan.n_params
    n2e = 0 if symmetric else n2
    b1, b2 = blocks
    b2e = 0 if symmetric else b2
    out: dict[str, tuple[float, float]] = {}
    out["jacobian"] = ((n1 + n2e) * f * (1 + 2 * o) + n1 * n2 * m * p, (b1 + b2e) * o * p)
    out["ntvp"] = (n2 * f * (1 + 2 * o) + 2.0 * n1 * n2 * o * f, min(budget, b2 * o * p))
    s_cost = (n1 + n2e) * f * (1 + o)
    s_mem = 0.0
    for layer in plan.known:
        gram = jac = mem = kc = 0.0
        for kind, d_in, shape in layer.shapes.values():
            oo, g, t, d = shape
            kx, kc, j, mm = form_costs(shape, shape, kind, d_in, n1, n2, mode, symmetric)
            gram, jac, mem = gram + kx, jac + j, mem + mm
            s_mem += (b1 + b2e) * oo * g * t * (d + (d_in if kind == "dense" else 1))
        gram += kc                              # weight and bias share the cotangent Gram
        s_cost += jac if (jac < gram and mem <= budget) else gram
    pu = plan.fallback_params
    if pu:
        s_cost += (n1 + n2e) * f * (1 + 2 * o) + n1 * n2 * m * pu
        s_mem += (b1 + b2e) * o * pu
    out["structured"] = (s_cost, s_mem)
    return out


def choose_implementation(costs: dict[str, tuple[float, float]], budget: int) -> str:
    """Cheapest estimate within the memory budget (elements); least memory if none fits."""
    fits = [k for k in _ORDER if costs[k][1] <= budget]
    if fits:
        return min(fits, key=lambda k: (costs[k][0], _ORDER.index(k)))
    return min(_ORDER, key=lambda k: (costs[k][1], _ORDER.index(k)))
