"""The "ntvp" implementation: NTK-vector products, no Jacobian of the whole batch.

For each input x'_j and output b, a vector-Jacobian product gives the parameter-space vector
u_jb = J(x'_j)ᵀ e_b; a Jacobian-vector product at the whole batch x then gives the column
Θ(x, x'_j)[:, :, b] = J(x) u_jb (Novak et al. 2022, NTK-vector products). Columns are processed
in chunks so that at most `budget` elements of tangents and activations are alive.

Cost: n2 (F + 2 O F) for the vjps plus n2 O n1 2F for the jvps (F: forward multiply-adds of one
input); memory per chunk of c columns: c (P + n1 A) with A the activations of one input. Modes
"trace" and "diagonal" are reduced from the full block chunk by chunk.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vjp, vmap

from ._target import Target
from .attention import math_attention

__all__ = ["NtvpEngine"]


class NtvpEngine:
    """prepare(x) -> x; contract(x1, x2, mode) -> Θ block (trace: sum over outputs)."""

    def __init__(self, target: Target, plan, *, budget: int):
        self.target = target
        self.out_dim = plan.out_dim
        self.n_params = plan.n_params
        self.act = max(plan.act, plan.out_dim)
        self.budget = budget

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def state_bytes(state) -> int:
        return state.numel() * state.element_size()

    def contract(self, x1: torch.Tensor, x2: torch.Tensor, mode: str) -> torch.Tensor:
        try:
            with math_attention():
                return self._contract(x1, x2, mode)
        except NotImplementedError as err:
            raise NotImplementedError(
                f"{self.target.func}: implementation='ntvp' needs forward-mode AD, which an op "
                f"of this model does not support ({err}); use implementation='structured' or "
                f"'jacobian'") from err

    def _contract(self, x1: torch.Tensor, x2: torch.Tensor, mode: str) -> torch.Tensor:
        target, params, o = self.target, self.target.params, self.out_dim
        n1, n2 = x1.shape[0], x2.shape[0]
        eye = torch.eye(o, dtype=next(iter(params.values())).dtype, device=x1.device)

        def tangents(xj):                       # xj: one input -> dict of (O, *shape)
            _, pullback = vjp(lambda p: target(p, xj[None])[0], params)
            return vmap(pullback)(eye)[0]

        def tangents_looped(xj):
            _, pullback = vjp(lambda p: target(p, xj[None])[0], params)
            rows = [pullback(eye[b])[0] for b in range(o)]
            return {k: torch.stack([r[k] for r in rows]) for k in params}

        def column(u):                          # u: one tangent dict -> (n1, O)
            return jvp(lambda p: target(p, x1), (params,), (u,))[1]

        per_column = int(self.n_params + n1 * self.act)
        cols = max(1, min(n2, self.budget // max(1, o * per_column)))
        parts = []
        for start in range(0, n2, cols):
            xs = x2[start:start + cols]
            c = xs.shape[0]
            try:
                u = vmap(tangents)(xs)                              # (c, O, *shape)
                u = {k: v.reshape(c * o, *v.shape[2:]) for k, v in u.items()}
                blk = vmap(column)(u)
            except RuntimeError:
                # An op without a working batching rule: the same products one at a time.
                us = [tangents_looped(xj) for xj in xs]
                blk = torch.stack([column({k: uj[k][b] for k in uj})
                                   for uj in us for b in range(o)])
            blk = blk.reshape(c, o, n1, o)                          # [j, b, i, a]
            blk = blk.permute(2, 0, 3, 1)                           # [i, j, a, b]
            if mode == "trace":
                blk = blk.diagonal(dim1=2, dim2=3).sum(-1)
            elif mode == "diagonal":
                blk = blk.diagonal(dim1=2, dim2=3)
            parts.append(blk)
        return torch.cat(parts, dim=1)
