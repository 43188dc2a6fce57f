"""Structured derivatives of bare parameters: tensors used directly in forward, broadcast along
the batch (learned positions `h + self.pos`, class tokens `self.cls.expand(n, -1, -1)`, scales
`h * self.gain`).

Such a parameter P enters the batch through an elementwise operation (or an expand) whose output
y has a batch axis along which P is broadcast. Writing the broadcast explicitly,

    Q = broadcast(P) + δ,   y = op(h, Q)            (δ = 0, the shape of y)

gives the same y, and the per-input gradient of P is the cotangent at δ summed over the axes P
was broadcast along (docs/math.md §structured):

    ∂f_a(x_i)/∂P = Σ_{broadcast axes} ∂f_a/∂δ[i]                                        (3)

for every use of P, summed over its uses. This is the "ones" factor of `factors.py` (a bias is
the same thing with a constant input) with one position and d_out = |P|: no autograd Jacobian
through the model is needed.

While the structured path records a batch (`structured._capture`), `BareRecorder` (a
`torch.overrides.TorchFunctionMode`) intercepts the elementwise arithmetic and expand calls that
take a tracked parameter and applies the rewrite above. Any other use of P (a matrix product, a
function of P alone such as `P.exp()`) is not intercepted, so the recorded gradient would miss
it: `structured.make_plan` compares eq. 3 with autograd on the probe and sends such parameters
to the exact autograd path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from .factors import Factor

__all__ = ["BareStructure", "BareRecorder", "bare_factor"]

#: elementwise binary operations (by function name) whose broadcast operand may be rewritten
ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "true_divide", "__add__", "__radd__", "__sub__", "__mul__",
    "__rmul__", "__truediv__", "add_", "sub_", "mul_", "div_", "__iadd__", "__isub__",
    "__imul__", "__itruediv__"})
#: operations that broadcast their first operand
EXPAND = frozenset({"expand", "expand_as", "broadcast_to"})


@dataclass(frozen=True)
class BareStructure:
    """A parameter used directly in forward (eq. 3 of the module docstring).

    Attributes:
        kind: always "bare" (so code can dispatch on `structure.kind`).
    """

    kind: str = "bare"

    def param_attrs(self) -> tuple[tuple[str, str], ...]:
        return (("value", "value"),)


class BareRecorder(TorchFunctionMode):
    """Rewrites y = op(h, P) as op(h, broadcast(P) + δ) for tracked parameters P and appends
    ((), (δ,)) to records[index of P] for every such call.

    Args:
        tracked: id(tensor) -> index into `records`, for the parameter tensors of this call.
        records: one list per tracked parameter.
    """

    def __init__(self, tracked: dict[int, int], records: list[list]):
        super().__init__()
        self.tracked = tracked
        self.records = records

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", None)
        if name in EXPAND:
            if args and id(args[0]) in self.tracked:
                out = func(*args, **kwargs)
                delta = torch.zeros_like(out, requires_grad=True)
                self.records[self.tracked[id(args[0])]].append(((), (delta,)))
                return out + delta
        elif name in ELEMENTWISE:
            hits = [i for i, a in enumerate(args) if id(a) in self.tracked
                    and not (i == 0 and name.endswith("_"))]      # never P.add_(...)
            if hits:
                shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
                try:
                    shape = torch.broadcast_shapes(*shapes)
                except RuntimeError:
                    return func(*args, **kwargs)
                args = list(args)
                for i in hits:
                    # every use is rewritten (with a batch of one the shapes cannot tell a
                    # broadcast one from another); uses that are not along the batch fail the
                    # probe's check and send the parameter to the autograd path
                    p = args[i]
                    delta = torch.zeros(shape, dtype=p.dtype, device=p.device,
                                        requires_grad=True)
                    self.records[self.tracked[id(p)]].append(((), (delta,)))
                    args[i] = p.expand(shape) + delta
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def bare_factor(shape: torch.Size, grads: list[torch.Tensor], batch_axis: int,
                n: int) -> Factor | None:
    """Eq. 3 summed over the recorded uses: a "ones" factor with c (O, n, 1, 1, |P|).

    Args:
        shape: the parameter's shape.
        grads: per use, the cotangents at its δ, each (O, *y.shape).
        batch_axis: the axis of y that indexes the inputs.
        n: number of inputs.

    Returns:
        The factor, or None when a use does not broadcast P along the batch axis.
    """
    total = None
    for g in grads:
        ndim = g.ndim - 1
        if ndim <= batch_axis or g.shape[1 + batch_axis] != n or len(shape) > ndim:
            return None
        aligned = (1,) * (ndim - len(shape)) + tuple(shape)     # P's axes against y's
        if aligned[batch_axis] != 1:
            return None
        per_input = aligned[:batch_axis] + aligned[batch_axis + 1:]
        g = g.movedim(1 + batch_axis, 1)
        j = g.sum_to_size(g.shape[0], n, *per_input).reshape(g.shape[0], n, -1)
        total = j if total is None else total + j
    if total is None:
        return None
    return Factor("ones", None, total.reshape(total.shape[0], n, 1, 1, -1), 1.0, 1)
