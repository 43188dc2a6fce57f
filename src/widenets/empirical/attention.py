"""Structured derivatives of nn.MultiheadAttention (and so of nn.TransformerEncoderLayer /
nn.TransformerDecoderLayer, which call it).

nn.MultiheadAttention applies its projections functionally (`F.multi_head_attention_forward`
with `in_proj_weight`, `out_proj.weight`), so no module hook sees their inputs. While the
structured path records a batch (`structured._capture`), the module's `forward` is replaced by
`recording_forward`, a re-implementation of the same function in which every projection is an
explicit linear map with a zero tensor δ added to its output (docs/math.md §structured):

    q = x_q W_qᵀ + b_q + δ_q,   k = x_k W_kᵀ + b_k + δ_k,   v = x_v W_vᵀ + b_v + δ_v
    o = softmax(q kᵀ / √d_h + mask) v      (per head; parameter-free)
    y = o W_oᵀ + b_o + δ_o

Each projection is then a linear layer shared across positions (factors.py, eq. 1 with T the
sequence length): W_q, W_k, W_v packed in `in_proj_weight` (3E, E) form one factor with G = 3
groups whose inputs are x_q, x_k, x_v (zero-padded to a common length when the query and key
lengths differ: padded positions have zero input and zero cotangent, so they add nothing).

Safety: `structured.make_plan` compares the model's output with the replacement against the
model's own output on the probe inputs, and verifies every factor against autograd, on every
call; any mismatch (a subclass with its own forward, an option this re-implementation does not
cover) sends the attention parameters back to the exact autograd path. Configurations not
covered are refused up front: bias_k/bias_v, add_zero_attn, active dropout, subclasses that
override forward.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .factors import Factor

__all__ = ["AttentionStructure", "describe_attention", "recording_forward", "attention_factors",
           "no_fused_attention", "math_attention"]


@dataclass(frozen=True)
class AttentionStructure:
    """How an nn.MultiheadAttention depends on its parameters.

    Attributes:
        packed: q/k/v weights packed in `in_proj_weight` (else q_proj_weight, k_proj_weight,
            v_proj_weight).
        kind: always "attention" (so code can dispatch on `structure.kind`).
    """

    packed: bool
    kind: str = "attention"

    def param_attrs(self) -> tuple[tuple[str, str], ...]:
        """(role, attribute path) pairs; a role's name is its attribute path."""
        names = (("in_proj_weight",) if self.packed
                 else ("q_proj_weight", "k_proj_weight", "v_proj_weight"))
        names += ("in_proj_bias", "out_proj.weight", "out_proj.bias")
        return tuple((n, n) for n in names)


def describe_attention(m: nn.Module) -> AttentionStructure | None:
    """The description of a plain nn.MultiheadAttention, None for what it does not cover.

    Args:
        m: any module.

    Returns:
        An `AttentionStructure`, or None (not an nn.MultiheadAttention, a subclass with its own
        forward, bias_k/bias_v, add_zero_attn, or dropout active in train mode).

    Example:
        >>> from torch import nn
        >>> describe_attention(nn.MultiheadAttention(8, 2)).packed
        True
        >>> describe_attention(nn.MultiheadAttention(8, 2, kdim=4, vdim=4)).packed
        False
    """
    if not isinstance(m, nn.MultiheadAttention) \
            or type(m).forward is not nn.MultiheadAttention.forward:
        return None
    if m.bias_k is not None or m.bias_v is not None or m.add_zero_attn:
        return None
    if m.training and m.dropout > 0:
        return None
    return AttentionStructure(packed=m._qkv_same_embed_dim)


@contextlib.contextmanager
def no_fused_attention():
    """Turn off the fused inference kernels of nn.MultiheadAttention / nn.TransformerEncoder
    layers (`torch.backends.mha` fast path) for the duration: they bypass the modules whose
    parameters are differentiated and have no forward-mode AD."""
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)


def math_attention():
    """Context: scaled_dot_product_attention on its math backend (the fused CPU/CUDA kernels
    have no forward-mode AD)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _float_mask(mask, dtype):
    if mask is None or torch.is_floating_point(mask):
        return mask
    if mask.dtype != torch.bool:
        raise AssertionError("only bool and floating types of masks are supported")
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


def recording_forward(m: nn.MultiheadAttention, record: list):
    """A forward for `m` equal to nn.MultiheadAttention.forward (batched inputs) that appends
    ((x_q, x_k, x_v, o), (δ_q, δ_k, δ_v, δ_o)) to `record`, batch axis first, on every call
    (None for calls it cannot record, which then run the module's own forward)."""
    own = nn.MultiheadAttention.forward.__get__(m)

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if query.dim() != 3 or getattr(query, "is_nested", False):
            record.append(None)
            return own(query, key, value, key_padding_mask=key_padding_mask,
                       need_weights=need_weights, attn_mask=attn_mask,
                       average_attn_weights=average_attn_weights, is_causal=is_causal)
        xq, xk, xv = (query, key, value) if m.batch_first else \
            (t.transpose(0, 1) for t in (query, key, value))
        n, lq, e = xq.shape
        s = xk.shape[1]
        h = m.num_heads
        hd = e // h
        dt = xq.dtype
        kpm = _float_mask(key_padding_mask, dt)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        if is_causal and kpm is None and not need_weights:
            mask = None
        else:
            mask = _float_mask(attn_mask, dt)
            if kpm is not None:
                is_causal = False
        if mask is not None:
            mask = mask[None, None] if mask.dim() == 2 else mask.reshape(n, h, lq, s)
        if kpm is not None:
            kpm = kpm.reshape(n, 1, 1, s)
            mask = kpm if mask is None else mask + kpm
        b = m.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        if m._qkv_same_embed_dim:
            wq, wk, wv = m.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        q0, k0, v0 = F.linear(xq, wq, bq), F.linear(xk, wk, bk), F.linear(xv, wv, bv)
        dq, dk, dv = (torch.zeros_like(t, requires_grad=True) for t in (q0, k0, v0))
        q = (q0 + dq).reshape(n, lq, h, hd).transpose(1, 2)
        k = (k0 + dk).reshape(n, s, h, hd).transpose(1, 2)
        v = (v0 + dv).reshape(n, s, h, hd).transpose(1, 2)
        if mask is None and is_causal:          # SDPA's is_causal: the top-left causal mask
            causal = torch.ones(lq, s, dtype=torch.bool, device=xq.device).tril()
            mask = _float_mask(~causal, dt)
        # Written out (not F.scaled_dot_product_attention): the backward passes batched over
        # the outputs (`structured.output_basis_grads`) then stay batched matrix products.
        scores = (q * math.sqrt(1.0 / hd)) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        o = weights @ v
        if not need_weights:
            weights = None
        elif average_attn_weights:
            weights = weights.mean(dim=1)
        o = o.transpose(1, 2).reshape(n, lq, e)
        y0 = F.linear(o, m.out_proj.weight, m.out_proj.bias)
        do = torch.zeros_like(y0, requires_grad=True)
        record.append(((xq.detach(), xk.detach(), xv.detach(), o.detach()), (dq, dk, dv, do)))
        y = y0 + do
        return (y if m.batch_first else y.transpose(0, 1)), weights

    return forward


def _pad_positions(t: torch.Tensor, length: int, axis: int) -> torch.Tensor:
    extra = length - t.shape[axis]
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[axis] = extra
    return torch.cat([t, t.new_zeros(shape)], dim=axis)


def attention_factors(st: AttentionStructure, roles: tuple[str, ...], xs, grads
                      ) -> dict[str, Factor]:
    """Factors (factors.py, eq. 1) of one recorded call: role -> Factor.

    xs: (x_q, x_k, x_v, o), each (n, L, features); grads: the cotangents at (q, k, v, y),
    each (O, n, L, E). Weight and bias of a projection share their cotangent tensor.
    """
    xq, xk, xv, o = xs
    gq, gk, gv, go = grads
    out: dict[str, Factor] = {}
    t = max(xq.shape[1], xk.shape[1])
    c_in = None
    if any(r.startswith("in_proj") for r in roles):
        c_in = torch.stack([_pad_positions(g, t, 2) for g in (gq, gk, gv)], dim=2)
    if "in_proj_weight" in roles:
        a = torch.stack([_pad_positions(x, t, 1) for x in (xq, xk, xv)], dim=1)
        out["in_proj_weight"] = Factor("dense", a, c_in, 1.0, a.shape[-1])
    for role, x, g in (("q_proj_weight", xq, gq), ("k_proj_weight", xk, gk),
                       ("v_proj_weight", xv, gv)):
        if role in roles:
            out[role] = Factor("dense", x[:, None], g[:, :, None], 1.0, x.shape[-1])
    if "in_proj_bias" in roles:
        out["in_proj_bias"] = Factor("ones", None, c_in, 1.0, 1)
    c_out = go[:, :, None]
    if "out_proj.weight" in roles:
        out["out_proj.weight"] = Factor("dense", o[:, None], c_out, 1.0, o.shape[-1])
    if "out_proj.bias" in roles:
        out["out_proj.bias"] = Factor("ones", None, c_out, 1.0, 1)
    return out


#: Roles of an attention layer that share one cotangent (weight and bias of one projection).
SHARED_COTANGENTS = (("in_proj_weight", "in_proj_bias"), ("out_proj.weight", "out_proj.bias"))
