"""Structured K3 for fully connected widenets networks (Dense, activation, Dense, ..., Dense(1)).

For such a network the empirical NTK needs no per-example gradients:

    K2(a, b) = Σ_l  s_w,l² ⟨x^{l-1}_a, x^{l-1}_b⟩ ⟨δ^l_a, δ^l_b⟩ + s_b,l² ⟨δ^l_a, δ^l_b⟩,

with x^{l-1} the inputs of Dense layer l, δ^l = ∂f/∂h^l its backpropagated vectors and s_w,
s_b the layer's multipliers (1 in the standard parameterization). The gradient directions are
rank one per layer: ∂f(x_c)/∂W_l = s_w δ^l_c ⊗ x^{l-1}_c. So K3(·, ·, c) = d/dε K2(θ + ε g_c)
(seed 000 eq. 10) is one forward-mode pass of this formula per direction c: O(n·P) work per
direction, O(n²·P) in all, instead of n² per-example HVPs plus an n³·P contraction.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import jvp, vmap

__all__ = ["mlp_plan", "k3_mlp"]


def mlp_plan(model: nn.Module):
    """[(weight name, bias name or None, w_scale, b_scale, activation fn or None), ...] when the
    model is a widenets serial MLP ending in a scalar Dense with all parameters trainable;
    None otherwise (the generic HVP path is used)."""
    from ..layers.activations import ActivationModule
    from ..layers.dense import DenseModule

    if not isinstance(model, nn.Sequential):
        return None
    children = list(model.named_children())
    plan, want_dense = [], True
    for name, mod in children:
        if want_dense and isinstance(mod, DenseModule):
            plan.append([f"{name}.weight", None if mod.bias is None else f"{name}.bias",
                         float(mod.w_scale), float(mod.b_scale), None])
            want_dense = False
        elif not want_dense and isinstance(mod, ActivationModule):
            plan[-1][4] = mod._fn
            want_dense = True
        else:
            return None
    if want_dense or not plan or children[-1][1].out_features != 1:
        return None
    names = {k for k, v in model.named_parameters() if v.requires_grad}
    used = {e[0] for e in plan} | {e[1] for e in plan if e[1] is not None}
    if names != used or len(names) != len(list(model.parameters())):
        return None
    return [tuple(e) for e in plan]


def _pass(plan, p: dict, x: torch.Tensor):
    """Inputs x^{l-1} (n, in_l) and backprops δ^l (n, out_l) of every Dense layer."""
    ins, pre = [], []
    a = x
    for wk, bk, sw, sb, act in plan:
        ins.append(a)
        h = sw * (a @ p[wk].T)
        if bk is not None:
            h = h + sb * p[bk]
        pre.append(h)
        if act is not None:
            a = act(h)
    deltas = [torch.ones_like(pre[-1])]
    for i in range(len(plan) - 2, -1, -1):
        act = plan[i][4]
        dphi = jvp(act, (pre[i],), (torch.ones_like(pre[i]),))[1]     # φ'(h), elementwise
        nxt = plan[i + 1]
        deltas.insert(0, dphi * (nxt[2] * (deltas[0] @ p[nxt[0]])))
    return ins, deltas


def _k2(plan, p, z, n):
    """(nz, n) empirical NTK, rows over z, columns over z[:n] (formula in the docstring)."""
    ins, deltas = _pass(plan, p, z)
    out = 0.0
    for (_wk, bk, sw, sb, _act), a, d in zip(plan, ins, deltas, strict=True):
        dd = d @ d[:n].T
        out = out + sw * sw * (a @ a[:n].T) * dd
        if bk is not None:
            out = out + sb * sb * dd
    return out


def _directions(plan, p, x) -> dict:
    """g_c = ∂f(x_c)/∂θ for every c, rank one per layer: dict name -> (n, *shape)."""
    ins, deltas = _pass(plan, p, x)
    g = {}
    for (wk, bk, sw, sb, _act), a, d in zip(plan, ins, deltas, strict=True):
        g[wk] = sw * d[:, :, None] * a[:, None, :]
        if bk is not None:
            g[bk] = sb * d
    return g


def k3_mlp(plan, params: dict, x: torch.Tensor, x_extra: torch.Tensor | None,
           batch_size: int | None) -> torch.Tensor:
    """K3(a, b, c), a over [x; x_extra], b, c over x: (n + n_extra, n, n)."""
    n = x.shape[0]
    z = x if x_extra is None else torch.cat([x, x_extra])
    g = _directions(plan, params, x)

    def along(v):
        return jvp(lambda q: _k2(plan, q, z, n), (params,), (v,))[1]

    m = n if batch_size is None else batch_size
    out = []
    for s in range(0, n, m):
        out.append(vmap(along)({k: v[s:s + m] for k, v in g.items()}))   # (mc, nz, n)
    k3 = torch.cat(out).permute(1, 2, 0)
    # Exact symmetry in the first two slots (the formula is symmetric up to rounding).
    sq = 0.5 * (k3[:n] + k3[:n].transpose(0, 1))
    return sq if x_extra is None else torch.cat([sq, k3[n:]])
