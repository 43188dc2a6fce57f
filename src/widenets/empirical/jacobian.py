"""The "jacobian" implementation: per-sample Jacobians (vmap of jacrev), then contraction.

Θ(x, x')[a, b] = Σ_p ∂f_a(x)/∂θ_p ∂f_b(x')/∂θ_p. Cost: n (F + 2 O F) multiply-adds to form the
Jacobians (a forward and O backward passes per input, F the forward cost of one input) plus
n1 n2 m P to contract them (m = O² full, O trace/diagonal, P parameters); memory n O P.
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from ._target import Target
from .factors import jacobian_contract

__all__ = ["jacobian_ntk", "per_sample_jacobians", "JacobianEngine"]


def per_sample_jacobians(target: Target, names: list[str], x: torch.Tensor,
                         chunk_size: int | None = None) -> list[torch.Tensor]:
    """Jacobians of the outputs w.r.t. the parameters `names` only, one (n, O, P_k) per name.

    The other parameters are held at their values in `target.params`.
    """
    fixed = {k: v for k, v in target.params.items() if k not in names}
    diff = {k: target.params[k] for k in names}

    def f(p, xi):
        return target({**fixed, **p}, xi[None]).reshape(-1)

    jac = vmap(jacrev(f), in_dims=(None, 0), chunk_size=chunk_size)(diff, x)
    n = x.shape[0]
    return [jac[k].reshape(n, jac[k].shape[1], -1) for k in names]


class JacobianEngine:
    """prepare(x) -> per-sample Jacobians; contract(s1, s2, mode) -> Θ block (trace: sum)."""

    def __init__(self, target: Target, plan=None):
        self.target = target
        self.names = list(target.params)

    def prepare(self, x: torch.Tensor) -> list[torch.Tensor]:
        return per_sample_jacobians(self.target, self.names, x)

    def contract(self, s1, s2, mode: str) -> torch.Tensor:
        out = None
        for j1, j2 in zip(s1, s2, strict=True):
            part = jacobian_contract(j1, j2, mode)
            out = part if out is None else out.add_(part)
        return out

    @staticmethod
    def state_bytes(state) -> int:
        return sum(j.numel() * j.element_size() for j in state)


def jacobian_ntk(model, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """(n1, n2) empirical NTK, mean over outputs, by explicit Jacobians.

    Kept for compatibility: `empirical_ntk(model, x1, x2, implementation="jacobian")`.
    """
    from .ntk import empirical_ntk

    return empirical_ntk(model, x1, x2, implementation="jacobian", mode="trace")
