"""Convolution (1-D, 2-D, 3-D), channels first: finite module and infinite-width kernel map.

Parameterizations as in `Dense` (read its docstring), with fan-in n = C·|D| (C input channels,
|D| filter offsets):

* "ntk":      h(p) = (σw/√n) Σ_{d,c} ω_{d,c} x_c(s·p + d) + σb β,   ω, β ~ N(0, 1) trainable.
* "standard": h(p) = Σ_{d,c} W_{d,c} x_c(s·p + d) + b,  W ~ N(0, σw²/n), b ~ N(0, σb²).

Kernels (Novak et al. 2019, Arora et al. 2019; docs/math.md §conv), with Σ_d K(p+d, p'+d) the
sum of the input kernel over filter offsets shared by both positions (zero outside the input for
zero padding, wrapped around for CIRCULAR):

    K'(p, p') = σw²/|D| Σ_d K(p+d, p'+d) + σb²                      (both parameterizations)
    ntk:      Θ'(p, p') = K'(p, p') + σw²/|D| Σ_d Θ(p+d, p'+d)
    standard: Θ'(p, p') = C Σ_d K(p+d, p'+d) + 1 + σw²/|D| Σ_d Θ(p+d, p'+d)

The standard-parameterization NTK is reported at the declared channel counts, as for Dense
(n·K̄ with n = C|D| and K̄ the offset average); the bias term is 1 whenever there is a bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernel import Kernel
from . import _spatial as sp
from .base import Layer, as_number, check_parameterization, check_std, new_source, normal_

__all__ = ["Conv", "ConvModule"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def spatial_padding(in_spatial, window, stride, padding, func):
    """Per spatial axis (left, right, out) for `padding` (see `_spatial.resolve_padding`)."""
    s = len(in_spatial)
    pads = sp.expand(padding, s) if not isinstance(padding, str) else (padding,) * s
    return [sp.resolve_padding(n, w, st, p, i, func=func)
            for i, (n, w, st, p) in enumerate(zip(in_spatial, window, stride, pads))]


def pad_input(x: torch.Tensor, pads, circular: bool) -> torch.Tensor:
    """Pad the spatial axes of (N, C, *S) by pads = [(left, right, out), ...] per axis."""
    flat = []
    for left, right, _ in reversed(pads):      # F.pad lists the last axis first
        flat += [left, right]
    if not any(flat):
        return x
    return F.pad(x, flat, mode="circular" if circular else "constant")


def scale_and_bias(out: torch.Tensor, mod: nn.Module) -> torch.Tensor:
    """out·w_scale + b_scale·bias (per channel, axis 1) for the conv-like modules: their
    parameterization multipliers (1 in the standard parameterization)."""
    if mod.w_scale != 1.0:
        out = out * mod.w_scale
    if mod.bias is not None:
        b = mod.bias * mod.b_scale if mod.b_scale != 1.0 else mod.bias
        out = out + b.reshape(-1, *([1] * (out.ndim - 2)))
    return out


class ConvModule(nn.Module):
    """The finite convolution of `Conv`: weight (out, in, *kernel_size) as in torch."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, ...],
                 stride: tuple[int, ...], pads, circular: bool, w_std: float,
                 b_std: float | None, parameterization: str, generator, dtype):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.pads, self.circular = kernel_size, stride, pads, \
            circular
        self.w_std, self.b_std, self.parameterization = w_std, b_std, parameterization
        fan_in = in_channels * math.prod(kernel_size)
        ntk = parameterization == "ntk"
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *kernel_size,
                                               dtype=dtype))
        normal_(self.weight, generator, 1.0 if ntk else w_std / math.sqrt(fan_in))
        if b_std is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(out_channels, dtype=dtype))
            normal_(self.bias, generator, 1.0 if ntk else b_std)
        self.w_scale = w_std / math.sqrt(fan_in) if ntk else 1.0
        self.b_scale = (b_std or 0.0) if ntk else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_input(x, self.pads, self.circular)
        return scale_and_bias(_CONV[len(self.kernel_size)](x, self.weight, stride=self.stride),
                              self)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, pads={self.pads}, "
                f"circular={self.circular}, w_std={self.w_std}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}")


class Conv(Layer):
    """Convolution over 1, 2 or 3 spatial axes of channels-first inputs (N, C, *S).

    Args:
        out_channels: number of output channels (the width).
        kernel_size: filter size, an int (every spatial axis) or a tuple (one per axis).
        stride: an int or a tuple.
        padding: "SAME" (zeros, output ceil(S / stride)), "VALID" (none), "CIRCULAR" (wrap
            around, SAME sizes), or an int / tuple of ints (that many zeros on both sides, as
            torch's Conv2d(padding=p)).
        w_std: σw (times 1/√(C·|D|)).
        b_std: σb; None for no bias.
        parameterization: "ntk" (default) or "standard" (see the module docstring).

    Example:
        >>> x = torch.randn(2, 3, 8, 8)
        >>> net = wn.serial(wn.Conv(16, 3, padding="SAME", w_std=1.4), wn.Relu(), wn.Flatten(),
        ...                 wn.Dense(1))
        >>> net.kernel(x, get="ntk").shape
        torch.Size([2, 2])
        >>> net.module((3, 8, 8), seed=0)(x).shape
        torch.Size([2, 1])
    """

    def __init__(self, out_channels: int, kernel_size, *, stride=1, padding="SAME",
                 w_std: float = 1.0, b_std: float | None = 0.0,
                 parameterization: str = "ntk"):
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) \
                or out_channels < 1:
            raise ValueError(f"Conv: out_channels must be a positive int, got {out_channels!r}")
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self._kernel_size = sp.check_spatial_arg(kernel_size, func="Conv", arg="kernel_size")
        self._stride = sp.check_spatial_arg(stride, func="Conv", arg="stride")
        self._padding = sp.check_padding(padding, func="Conv")
        self.w_std = check_std(w_std, func="Conv", arg="w_std")
        self.b_std = check_std(b_std, func="Conv", arg="b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization, func="Conv")

    hyperparameter_domains = {"w_std": "positive", "b_std": "positive"}

    def _geometry(self, spatial: tuple[int, ...], func: str):
        s = len(spatial)
        if s not in (1, 2, 3):
            raise ValueError(f"{func}: inputs must have 1, 2 or 3 spatial axes (N, C, *S), got "
                             f"{s} spatial axes")
        for arg, v in (("kernel_size", self._kernel_size), ("stride", self._stride)) + (
                () if isinstance(self._padding, str) else (("padding", self._padding),)):
            if len(v) not in (1, s):
                raise ValueError(f"{func}: {arg} has {len(v)} entries but the input has {s} "
                                 f"spatial axes {tuple(spatial)}")
        window = sp.expand(self._kernel_size, s)
        stride = sp.expand(self._stride, s)
        return window, stride, spatial_padding(spatial, window, stride, self._padding, func)

    def _offset_sum(self, k: Kernel, func: str):
        """conv_sum(t, n_batch, scale=1, init=None) = init + scale·Σ_d over the filter
        offsets, every spatial axis, of a tensor with n_batch batch axes in k's layout."""
        if not k.is_spatial:
            raise ValueError(f"{func}: input must be channels-first with spatial axes (n, C, "
                             f"H, W) or (n, C, L); got flat features (the kernel has no "
                             f"position axes); use Dense for flat inputs")
        spatial = k.spatial_shape
        s = len(spatial)
        window, stride, pads = self._geometry(spatial, func)
        circular = self._padding == "CIRCULAR"
        full = k.is_full_spatial

        def conv_sum(t, n_batch, scale=1.0, init=None):
            """init + scale·Σ_d over offsets, every spatial axis (scale folded into the first
            axis's passes, init into the last one's)."""
            for i in range(s):
                left, right, out = pads[i]
                t = sp.window_sum(t, sp.pair_axes(s, full, i, n_batch), window=window[i],
                                  stride=stride[i], left=left, right=right, out_size=out,
                                  circular=circular, joint=True,
                                  scale=scale if i == 0 else 1.0,
                                  init=init if i == s - 1 else None)
            return t

        return conv_sum

    def _affine_coefficients(self, k: Kernel) -> tuple:
        """(w, b, α, β) of this layer's map in terms of the offset sums ΣK and ΣΘ
        (docs/math.md §conv): K' = w ΣK + b, Θ' = α ΣK + β + w ΣΘ."""
        w = self.w_std ** 2 / math.prod(sp.expand(self._kernel_size, k.spatial_ndim))
        b = (self.b_std or 0.0) ** 2
        if self.parameterization == "standard":
            return w, b, float(k.channels), 0.0 if self.b_std is None else 1.0
        return w, b, w, b

    def apply_kernel(self, k: Kernel) -> Kernel:
        func = "Conv.kernel"
        if isinstance(k, list):
            raise ValueError(f"{func}: expected one input, got {len(k)} branches; merge them "
                             f"with FanInSum() or FanInConcat() first")
        conv_sum = self._offset_sum(k, func)
        w, b2, alpha, beta = self._affine_coefficients(k)
        standard = self.parameterization == "standard"
        # docs/math.md §conv: K' = σw²/|D| Σ_d K(p+d, p'+d) + σb²
        # (the bias and, for the NTK, K' are folded into the offset sums' last pass)
        if standard:                              # keeps Σ_d K for the C Σ_d K term
            sum_k = conv_sum(k.nngp, 2)
            nngp = torch.mul(sum_k, w).add_(b2)
        else:
            nngp = conv_sum(k.nngp, 2, w, init=b2)
        cov1 = conv_sum(k.cov1, 1, w) + b2
        cov2 = None if k.cov2 is None else conv_sum(k.cov2, 1, w) + b2
        ntk = None
        if k.ntk is not None:
            if not standard:                                        # Θ' = K' + σw²/|D| ΣΘ
                # the raw input has Θ = 0: skip its offset sum
                ntk = nngp.clone() if k.is_input else conv_sum(k.ntk, 2, w, init=nngp)
            else:                                                   # Θ' = C ΣK + 1 + σw²/|D| ΣΘ
                sum_t = None if k.is_input else conv_sum(k.ntk, 2, w)     # σw²/|D| ΣΘ
                ntk = sum_k.mul_(alpha)
                ntk += beta
                if sum_t is not None:
                    ntk.add_(sum_t)
        out = k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=True,
                        is_input=False, channels=self.out_channels, sources=new_source())
        if k.x1_is_x2:
            out.set_batch_diagonal(nngp, cov1)
        return out

    def build(self, in_shape, generator, dtype):
        func = "Conv.module"
        if isinstance(in_shape, list) or len(in_shape) < 2:
            raise ValueError(f"{func}: in_shape must be (C, *spatial) with 1 to 3 spatial axes, "
                             f"got {in_shape!r}")
        _, stride, pads = self._geometry(tuple(in_shape[1:]), func)
        window = sp.expand(self._kernel_size, len(in_shape) - 1)
        mod = ConvModule(in_shape[0], self.out_channels, window, stride, pads,
                         self._padding == "CIRCULAR", as_number(self.w_std),
                         as_number(self.b_std),
                         self.parameterization, generator, dtype)
        return mod, (self.out_channels, *(p[2] for p in pads))
