"""Fully connected layer: finite module and infinite-width kernel map.

Parameterizations (Lee et al. 2019, seed 002, eq. 1; docs/math.md §parameterization), fan-in n:

* "ntk":      h = x (σw/√n) ω + σb β,   ω, β ~ N(0, 1) trainable.
* "standard": h = x W + b,  W ~ N(0, σw²/n), b ~ N(0, σb²) trainable.

Both give the same function at initialization, hence the same NNGP:
    K' = σw² K + σb².
Their NTKs differ (docs/math.md §dense):
    ntk:      Θ' = σw² K + σb² + σw² Θ                        (σw and σb multiply the gradients)
    standard: Θ' = n K + 1 + σw² Θ                            (∂h/∂W = x, ∂h/∂b = 1)

Standard-parameterization convention: the NTK is reported at the finite fan-ins the layers
declare (the `out` of the previous layer, the input dimension for the first): the term n K grows
linearly with width, as the empirical NTK of such a network does (Sohl-Dickstein et al. 2020,
with width scale s = 1). Dividing by the width (equivalently a learning rate ∝ 1/width, the
"width scale that makes it finite") gives the finite limit. The bias contributes 1 whenever it
exists (b_std is not None), also when initialized at zero.

On channels-first inputs (n, C, *S) (sequences, images, graph nodes) Dense acts on the channel
axis position by position, as nn.Linear on (n, L, C) tensors: the same layer as a 1x1
convolution, so the maps above apply to every position pair (p, p') of the kernel in any
layout, with n = C (docs/math.md §dense-positions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernel import Kernel
from .base import Layer, as_number, check_parameterization, check_std, new_source, normal_
from .conv import ConvModule

__all__ = ["Dense", "DenseModule"]


class DenseModule(nn.Module):
    """h = x W + b with the parameterization of `Dense`; weight has shape (out, in) as in torch."""

    def __init__(self, in_features: int, out_features: int, w_std: float, b_std: float | None,
                 parameterization: str, generator, dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.w_std, self.b_std, self.parameterization = w_std, b_std, parameterization
        ntk = parameterization == "ntk"
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype))
        normal_(self.weight, generator, 1.0 if ntk else w_std / math.sqrt(in_features))
        if b_std is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype))
            normal_(self.bias, generator, 1.0 if ntk else b_std)
        # Multipliers applied in forward (1 in the standard parameterization).
        self.w_scale = self.w_std / math.sqrt(in_features) if ntk else 1.0
        self.b_scale = (self.b_std or 0.0) if ntk else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight) * self.w_scale if self.w_scale != 1.0 \
            else F.linear(x, self.weight)
        if self.bias is not None:
            out = out + self.bias * self.b_scale
        return out

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, w_std={self.w_std}, "
                f"b_std={self.b_std}, parameterization={self.parameterization!r}")


class Dense(Layer):
    """Fully connected layer of width `out` (Lee et al. 2019, eq. 1).

    On channels-first inputs (n, C, *S) it maps the C channels of every position to `out`
    channels (position-wise, a 1x1 convolution); flat inputs (n, d) as usual.

    Args:
        out: output width (the finite module's out_features).
        w_std: σw, weight standard deviation (times 1/√fan_in).
        b_std: σb, bias standard deviation; None for no bias parameter.
        parameterization: "ntk" (default) or "standard"; see the module docstring for the
            kernels and the standard-parameterization width convention.

    Example:
        >>> x = torch.randn(3, 4, dtype=torch.float64)
        >>> k = wn.Dense(1, w_std=2.0, b_std=0.5).kernel(x, get="nngp")
        >>> bool(torch.allclose(k, 4.0 * x @ x.T / 4 + 0.25))    # σw² <x, x'> / d + σb²
        True
        >>> net = wn.serial(wn.Dense(512, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(1))
        >>> net.module((4,), seed=0)(x.float()).shape
        torch.Size([3, 1])
        >>> import torch, widenets as wn
        >>> x = torch.randn(2, 3, 5)                      # 2 sequences, 3 channels, length 5
        >>> net = wn.serial(wn.Dense(8), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
        >>> net.kernel(x, get="ntk").shape
        torch.Size([2, 2])
        >>> net.module((3, 5), seed=0)(x.float()).shape
        torch.Size([2, 1])
    """

    accepts_mask = True

    def __init__(self, out: int, *, w_std: float = 1.0, b_std: float | None = 0.0,
                 parameterization: str = "ntk"):
        if isinstance(out, bool) or not isinstance(out, int) or out < 1:
            raise ValueError(f"Dense: out must be a positive int (the width), got {out!r}")
        self.out = out
        self.w_std = check_std(w_std, func="Dense", arg="w_std")
        self.b_std = check_std(b_std, func="Dense", arg="b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization, func="Dense")

    hyperparameter_domains = {"w_std": "positive", "b_std": "positive"}

    def apply_kernel(self, k: Kernel) -> Kernel:
        if isinstance(k, list):
            raise ValueError(f"Dense.kernel: expected one input, got {len(k)} branches; "
                             f"merge them with FanInSum() or FanInConcat() first")
        # position-wise on spatial layouts: the maps below act entry by entry on (p, p')
        w2 = self.w_std ** 2
        b2 = (self.b_std or 0.0) ** 2
        # docs/math.md §dense: K' = σw² K + σb² (both parameterizations).
        nngp = torch.mul(k.nngp, w2).add_(b2)
        cov1 = w2 * k.cov1 + b2
        cov2 = None if k.cov2 is None else w2 * k.cov2 + b2
        ntk = None
        if k.ntk is not None:
            if self.parameterization == "ntk":
                ntk = nngp + w2 * k.ntk                       # Θ' = K' + σw² Θ
            else:
                bias_term = 0.0 if self.b_std is None else 1.0
                # Θ' = n K + 1 + σw² Θ
                ntk = torch.mul(k.nngp, k.channels).add_(bias_term).add_(w2 * k.ntk)
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=True,
                         is_input=False, channels=self.out, sources=new_source())

    def build(self, in_shape, generator, dtype):
        if isinstance(in_shape, list) or not 1 <= len(in_shape) <= 4:
            raise ValueError(f"Dense.module: in_shape must be (features,) or channels-first "
                             f"(C, *S) with 1 to 3 spatial axes, got {in_shape!r}")
        if len(in_shape) > 1:           # position-wise: a 1x1 convolution over the channels
            s = len(in_shape) - 1
            mod = ConvModule(in_shape[0], self.out, (1,) * s, (1,) * s,
                             [(0, 0, n) for n in in_shape[1:]], False, as_number(self.w_std),
                             as_number(self.b_std),
                             self.parameterization, generator, dtype)
            return mod, (self.out, *in_shape[1:])
        mod = DenseModule(in_shape[0], self.out, as_number(self.w_std), as_number(self.b_std),
                          self.parameterization, generator, dtype)
        return mod, (self.out,)
