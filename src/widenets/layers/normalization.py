"""Layer normalization over channels: finite module and infinite-width kernel map.

The finite layer normalizes every position of every input over its C channels,
    y_c(p) = γ_c (x_c(p) - m(p)) / √(v(p) + ε) + β_c,   m, v the channel mean and variance.
For inputs that are zero-mean Gaussian processes (outputs of a Dense or Conv, or sums of them)
m(p) -> 0 and v(p) -> K(x, x)(p, p) as C -> ∞, so the normalization divides by a deterministic
scale (Novak et al. 2019; neural-tangents' LayerNorm rule):

    K'(p, p') = K(p, p') / √((K11(p) + ε)(K22(p') + ε))
    Θ'(p, p') = Θ(p, p') / √((K11(p) + ε)(K22(p') + ε))   [+ K'(p, p') + 1 with affine γ, β]

(the gradient through m and v sums O(1/C) terms per channel and vanishes at infinite width).
With affine=True, γ = 1 and β = 0 at initialization (torch's default) so K' is unchanged and the
trainable γ_c, β_c add ∂y_c/∂γ_c ∂y_c'/∂γ_c = x̂ x̂' (mean K') and ∂y/∂β = 1 to the NTK.
The γ term x̂_c x̂'_c is the channel value itself: a Dense after the LayerNorm averages it to K',
but an activation φ right after it needs E[u v φ'(u) φ'(v)] instead of K' E[φ'(u) φ'(v)]; the
kernel records the term (`Kernel.gamma_term`) and the activation adds the difference
(docs/math.md §layernorm-affine).
Inputs with a nonzero channel mean (after a ReLU) are refused: the rule would be wrong.
"""

from __future__ import annotations

import math
import uuid

import torch
from torch import nn

from ..kernel import Kernel
from .base import Layer

__all__ = ["LayerNorm", "LayerNormModule"]


def _is_token(s) -> bool:
    return isinstance(s, tuple) and len(s) == 2 and s[0] == "layernorm-gamma"


class LayerNormModule(nn.Module):
    """Normalize axis 1 (channels / features) of (N, C, *S) or (N, d)."""

    def __init__(self, channels: int, eps: float, affine: bool, dtype):
        super().__init__()
        self.channels, self.eps, self.affine = channels, eps, affine
        if affine:
            self.weight = nn.Parameter(torch.ones(channels, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(channels, dtype=dtype))

    def forward(self, x):
        m = x.mean(1, keepdim=True)
        v = x.var(1, unbiased=False, keepdim=True)
        y = (x - m) / torch.sqrt(v + self.eps)
        if self.affine:
            shape = (1, -1, *([1] * (x.ndim - 2)))
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps}, affine={self.affine}"


class LayerNorm(Layer):
    """Layer normalization over the channel axis (features for flat inputs).

    Args:
        eps: ε added to the variance (torch's default 1e-5).
        affine: learnable per-channel scale γ (init 1) and shift β (init 0), as torch's
            elementwise_affine; they change the NTK (see the module docstring), not the NNGP.

    Example:
        >>> x = torch.randn(3, 4)
        >>> k = wn.serial(wn.Dense(8), wn.LayerNorm(eps=0.0)).kernel(x, get="nngp")
        >>> [round(v, 6) for v in k.diagonal().tolist()]     # unit variance after normalization
        [1.0, 1.0, 1.0]
    """

    accepts_mask = True     # per position over channels: padding stays where it is

    def __init__(self, *, eps: float = 1e-5, affine: bool = False):
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
                or eps < 0:
            raise ValueError(f"LayerNorm: eps must be a finite number >= 0, got {eps!r}")
        if not isinstance(affine, bool):
            raise ValueError(f"LayerNorm: affine must be True or False, got {affine!r}")
        self.eps = float(eps)
        self.affine = affine

    def apply_kernel(self, k: Kernel) -> Kernel:
        func = "LayerNorm.kernel"
        if isinstance(k, list):
            raise ValueError(f"{func}: expected one input, got {len(k)} branches; merge them "
                             f"with FanInSum() or FanInConcat() first")
        if not k.is_gaussian:
            got = "the raw input" if k.is_input else "a non-Gaussian layer output"
            raise ValueError(f"{func}: input must be a zero-mean Gaussian process (the output of "
                             f"a Dense or Conv), got {got}, whose channel mean does not vanish; "
                             f"put LayerNorm right after a Dense or Conv")
        eps = self.eps
        if eps == 0:
            v1, v2 = k.position_variances()
            zero = int((v1 <= 0).sum()) + (0 if k.cov2 is None else int((v2 <= 0).sum()))
            if zero:
                raise ValueError(f"{func}: eps=0 and {zero} input variance(s) are 0 (e.g. an "
                                 f"input of all zeros with b_std=0): the normalization divides "
                                 f"0 by 0; use eps > 0 (torch's default 1e-5)")
        k11, k22 = k.broadcast_variances()
        scale = torch.rsqrt((k11 + eps) * (k22 + eps))       # 1/√((K11+ε)(K22+ε))
        nngp = k.nngp * scale
        cov1, cov2 = k.map_variances(lambda v: v / (v + eps),
                                     lambda a, b, c: c * torch.rsqrt((a + eps) * (b + eps)))
        if k.x1_is_x2:
            k.set_batch_diagonal(nngp, cov1)
        k.write_same_input(nngp, cov1)
        ntk = None
        if k.ntk is not None:
            ntk = k.ntk * scale
            if self.affine:
                ntk = ntk + nngp + 1.0                        # γ and β gradients
        if not self.affine:
            # y scales by the same deterministic factor as Θ: a γ term g·y y' stays g·y y'
            return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_input=False)
        # The γ gradient of channel c is y_c itself: the NTK of channel c holds y_c(x) y_c(x'),
        # which is correlated with the channel value. A following Dense averages it to K'
        # (above); an activation needs E[u v φ'(u) φ'(v)] instead of K' Tdot (docs/math.md
        # §LayerNorm affine), so the term is recorded for it (Kernel.gamma_term).
        token = ("layernorm-gamma", uuid.uuid4().int)
        sources = k.sources | {token}
        rec = k.gamma_term
        old_tokens = any(_is_token(s) for s in k.sources)
        if rec is not None and rec[1] == k.sources and rec[2] == k.channels:
            gamma = (rec[0] + 1, sources, k.channels)
        elif old_tokens:          # an earlier γ term mixed with other channels: refuse later
            gamma = None
        else:
            gamma = (1, sources, k.channels)
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_input=False,
                         sources=frozenset(sources), gamma_term=gamma)

    def build(self, in_shape, generator, dtype):
        if isinstance(in_shape, list):
            raise ValueError(f"LayerNorm.module: expected one input, got {len(in_shape)} "
                             f"branches")
        return LayerNormModule(in_shape[0], self.eps, self.affine, dtype), in_shape
