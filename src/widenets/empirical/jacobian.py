"""Empirical NTK by plain Jacobian contraction (torch.func), the reference implementation.

Θ(x, x') = Σ_p ∂f(x)/∂θ_p ∂f(x')/∂θ_p, averaged over the O outputs ("trace" mode,
comparable with the analytic per-output kernel).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

__all__ = ["jacobian_ntk", "trainable_params"]


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters with requires_grad=True, detached, by name."""
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def _jacobians(model: nn.Module, params: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-parameter Jacobians, each flattened to (n, O, P_k)."""
    def f(p, xi):
        out = functional_call(model, p, (xi[None],))
        return out.reshape(-1)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    n = x.shape[0]
    return [j.reshape(n, j.shape[1], -1) for j in jac.values()]


def jacobian_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """(n1, n2) empirical NTK, mean over outputs of J(x1) J(x2)ᵀ, by explicit Jacobians."""
    params = trainable_params(model)
    j1 = _jacobians(model, params, x1)
    j2 = j1 if x2 is None else _jacobians(model, params, x2)
    out = 0.0
    for a, b in zip(j1, j2):
        out = out + torch.einsum("iop,jop->ij", a, b)
    return out / j1[0].shape[1]
