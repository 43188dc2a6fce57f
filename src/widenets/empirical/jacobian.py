"""The "jacobian" implementation: per-sample Jacobians (vmap of jacrev), then contraction.

Θ(x, x')[a, b] = Σ_p ∂f_a(x)/∂θ_p ∂f_b(x')/∂θ_p. Cost: n (F + 2 O F) multiply-adds to form the
Jacobians (a forward and O backward passes per input, F the forward cost of one input) plus
n1 n2 m P to contract them (m = O² full, O trace/diagonal, P parameters); memory n O P.
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from ._target import Target
from .attention import math_attention
from .factors import jacobian_contract

__all__ = ["per_sample_jacobians", "JacobianEngine"]


def per_sample_jacobians(target: Target, names: list[str], x: torch.Tensor,
                         chunk_size: int | None = None) -> list[torch.Tensor]:
    """Jacobians of the outputs w.r.t. the parameters `names` only, one (n, O, P_k) per name.

    The other parameters are held at their values in `target.params`.
    """
    fixed = {k: v for k, v in target.params.items() if k not in names}
    diff = {k: target.params[k] for k in names}

    def f(p, xi):
        return target({**fixed, **p}, xi[None]).reshape(-1)

    n = x.shape[0]
    try:
        with math_attention():      # the fused attention kernels have no batching rules
            jac = vmap(jacrev(f), in_dims=(None, 0), chunk_size=chunk_size)(diff, x)
    except RuntimeError:
        # Some ops have broken or missing batching rules: the same Jacobians, one input and one
        # output at a time.
        return _looped_jacobians(target, names, x)
    jac = [jac[k].reshape(n, jac[k].shape[1], -1) for k in names]
    if not _projection_matches(target, names, x, jac):
        # A batching rule that runs but is wrong (PReLU's backward in torch 2.13 mixes the
        # vmapped axes): recompute without vmap.
        return _looped_jacobians(target, names, x)
    return jac


def _projection_matches(target: Target, names: list[str], x: torch.Tensor,
                        jac: list[torch.Tensor], seed: int = 0) -> bool:
    """Check Σ_{i,a} v_ia J[i, a] against one batched backward pass of Σ v·f(x), for a random
    v: per-sample Jacobians attributed to the wrong input or output fail it."""
    fixed = {k: v for k, v in target.params.items() if k not in names}
    leaves = {k: target.params[k].detach().requires_grad_() for k in names}
    with torch.enable_grad():
        out = target({**fixed, **leaves}, x)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
        grads = torch.autograd.grad(out, list(leaves.values()), v, allow_unused=True)
    tol = 1e-8 if out.dtype == torch.float64 else 1e-3
    for j, g, leaf in zip(jac, grads, leaves.values(), strict=True):
        ref = torch.zeros_like(leaf) if g is None else g
        got = torch.einsum("ia,iap->p", v, j).reshape(ref.shape)
        if not float((got - ref).norm()) <= tol * float(ref.norm()) + 1e-30:
            return False
    return True


def _looped_jacobians(target: Target, names: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    """As per_sample_jacobians, with plain autograd: one backward pass per input and output."""
    fixed = {k: v for k, v in target.params.items() if k not in names}
    rows: list[list[torch.Tensor]] = [[] for _ in names]
    for i in range(x.shape[0]):
        leaves = {k: target.params[k].detach().requires_grad_() for k in names}
        with torch.enable_grad():
            out = target({**fixed, **leaves}, x[i:i + 1]).reshape(-1)
            per_out = [torch.autograd.grad(out[a], list(leaves.values()), retain_graph=True,
                                           allow_unused=True) for a in range(out.shape[0])]
        for k, leaf in enumerate(leaves.values()):
            rows[k].append(torch.stack([torch.zeros_like(leaf) if g[k] is None else g[k]
                                        for g in per_out]).reshape(out.shape[0], -1))
    return [torch.stack(r) for r in rows]


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
