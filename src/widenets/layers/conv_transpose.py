"""Transposed convolution (1-D to 3-D, channels first): finite module and infinite-width kernel.

Along one spatial axis with n input positions, filter size k and stride s, output position o
receives filter offset j from the input position

    i(o, j) = (o + j - a) / s    when that is an integer in [0, n) (else nothing),

with the offset a and the output size L set by the padding (docs/math.md §conv-transpose):

    int p (torch's ConvTranspose1d/2d/3d(padding=p)):  a = k - 1 - p,  L = (n - 1)s + k - 2p
    "VALID" (NT, lax.conv_transpose):                  a = k - 1,      L = ns + max(k - s, 0)
    "SAME":   a = k - 1 if s > k - 1 else ⌈(k + s - 2)/2⌉,             L = ns
    "CIRCULAR" (NT): the VALID output folded onto L = ns positions: with c = max(k - s, 0)//2,
              a = k - 1 - c and o + j - a taken modulo ns.

With fan-in n = C·|D| (C input channels, |D| filter offsets, as NT) the kernels are those of
`Conv` with this index map (the offset j is shared by both positions of a pair):

    K'(o, o') = σw²/|D| Σ_j K(i(o, j), i(o', j)) + σb²
    ntk:      Θ'(o, o') = K'(o, o') + σw²/|D| Σ_j Θ(i(o, j), i(o', j))
    standard: Θ'(o, o') = C Σ_j K(i(o, j), i(o', j)) + 1 + σw²/|D| Σ_j Θ(i(o, j), i(o', j))

(terms with i outside the input are zero). The finite module runs torch's conv_transpose without
padding (the full output, positions q = s·i + d) and reads output o at q = o + k - 1 - a (zero
past the end; folded modulo ns for CIRCULAR), the same map with the filter flipped, j = k-1-d.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernel import Kernel
from . import _spatial as sp
from .base import Layer, check_parameterization, check_std, new_source, normal_
from .conv import scale_and_bias

__all__ = ["ConvTranspose", "ConvTransposeModule"]

_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def transpose_geometry(n: int, k: int, s: int, padding, axis: int, func: str):
    """(a, L, wrap) along one axis: the offset a, the output size L, and the period of the
    circular fold (None unless CIRCULAR); see the module docstring."""
    wrap = None
    if padding == "VALID":
        a, out = k - 1, n * s + max(k - s, 0)
    elif padding == "SAME":
        a, out = (k - 1 if s > k - 1 else -(-(k + s - 2) // 2)), n * s
    elif padding == "CIRCULAR":
        a, out, wrap = k - 1 - max(k - s, 0) // 2, n * s, n * s
    else:
        a, out = k - 1 - padding, (n - 1) * s + k - 2 * padding
        if out < 1:
            raise ValueError(f"{func}: padding {padding} on spatial axis {axis} leaves no output "
                             f"((n - 1)·stride + kernel_size - 2·padding = {out} for n = {n}, "
                             f"kernel_size = {k}, stride = {s}); use a smaller padding")
    return a, out, wrap


def source_indices(n: int, k: int, s: int, a: int, out: int, wrap, device) -> list[torch.Tensor]:
    """For each offset j, the input position i(o, j) of every output o, or n (a zero slot)
    where no input contributes."""
    o = torch.arange(out, device=device)
    idx = []
    for j in range(k):
        q = o + j - a
        if wrap is not None:
            q = q % wrap
        ok = (q >= 0) & (q % s == 0) & (q // s < n)
        idx.append(torch.where(ok, q // s, torch.full_like(q, n)))
    return idx


def _gather_sum(t: torch.Tensor, axes, idx: list[torch.Tensor], scale: float) -> torch.Tensor:
    """scale · Σ_j t[..., i(o, j), ..., i(o', j), ...]: the offset j shared by all `axes`
    (both positions of a pair in the full layout); index n reads a zero slot."""
    for a in axes:                              # append the zero slot on each axis
        shape = list(t.shape)
        shape[a] = 1
        t = torch.cat([t, t.new_zeros(shape)], dim=a)
    out = None
    for ij in idx:
        u = t
        for a in axes:
            u = u.index_select(a, ij)
        if out is None:
            out = u * scale if isinstance(scale, torch.Tensor) else u.mul_(scale)
        else:
            sp.add_scaled_(out, u, scale)
    return out


class ConvTransposeModule(nn.Module):
    """The finite transposed convolution of `ConvTranspose`: weight (in, out, *kernel_size) as
    torch's ConvTranspose; output read from the unpadded (full) output as the module
    docstring says."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, geometry, w_std, b_std,
                 parameterization, generator, dtype):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.geometry = kernel_size, stride, geometry
        self.w_std, self.b_std, self.parameterization = w_std, b_std, parameterization
        fan_in = in_channels * math.prod(kernel_size)
        ntk = parameterization == "ntk"
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, *kernel_size,
                                               dtype=dtype))
        normal_(self.weight, generator, 1.0 if ntk else w_std / math.sqrt(fan_in))
        if b_std is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(out_channels, dtype=dtype))
            normal_(self.bias, generator, 1.0 if ntk else b_std)
        self.w_scale = w_std / math.sqrt(fan_in) if ntk else 1.0
        self.b_scale = (b_std or 0.0) if ntk else 1.0

    def forward(self, x):
        y = _CONV_T[len(self.kernel_size)](x, self.weight, stride=self.stride)
        for i, (k, (a, out, wrap)) in enumerate(zip(self.kernel_size, self.geometry)):
            axis = 2 + i
            full = y.shape[axis]
            shift = k - 1 - a                        # output o reads full position o + shift
            if wrap is not None:                     # fold: q -> (q - shift) mod L
                idx = (torch.arange(full, device=y.device) - shift) % wrap
                shape = list(y.shape)
                shape[axis] = out
                y = y.new_zeros(shape).index_add_(axis, idx, y)
                continue
            y = y.narrow(axis, shift, max(0, min(out, full - shift)))
            if y.shape[axis] < out:                  # past the full output: zeros
                pad = [0, 0] * (y.ndim - 1 - axis) + [0, out - y.shape[axis]]
                y = F.pad(y, pad)
        return scale_and_bias(y, self)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"geometry={self.geometry}, w_std={self.w_std}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}")


class ConvTranspose(Layer):
    """Transposed convolution over 1, 2 or 3 spatial axes (NT's `stax.ConvTranspose`).

    Output sizes: an int padding p gives torch's ConvTranspose1d/2d/3d(padding=p) shape
    (n - 1)·stride + kernel_size - 2p; "VALID" (default) n·stride + max(kernel_size - stride,
    0), "SAME" and "CIRCULAR" n·stride, as NT (lax.conv_transpose). Kernel formulas in the
    module docstring (docs/math.md §conv-transpose).

    Args:
        out_channels: number of output channels (the width).
        kernel_size: an int or a tuple (one per spatial axis).
        stride: an int >= 1 or a tuple.
        padding: "VALID", "SAME", "CIRCULAR", or an int / tuple of ints >= 0 (torch's).
        w_std: σw (times 1/√(C·|D|), C input channels, |D| filter offsets).
        b_std: σb; None for no bias.
        parameterization: "ntk" (default) or "standard".

    Example:
        >>> import torch, widenets as wn
        >>> up = wn.ConvTranspose(8, 3, stride=2, padding="SAME")
        >>> up.module((4, 5))(torch.zeros(1, 4, 5)).shape
        torch.Size([1, 8, 10])
        >>> k = up.kernel(torch.ones(2, 4, 5), layout="diagonal", get="nngp")
        >>> (3 * k[0, 0]).round().tolist()   # how many of the 3 offsets hit an input
        [1.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0]
    """

    hyperparameter_domains = {"w_std": "positive", "b_std": "positive"}

    def __init__(self, out_channels: int, kernel_size, *, stride=1, padding="VALID",
                 w_std: float = 1.0, b_std: float | None = 0.0,
                 parameterization: str = "ntk"):
        func = "ConvTranspose"
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) \
                or out_channels < 1:
            raise ValueError(f"{func}: out_channels must be a positive int, got "
                             f"{out_channels!r}")
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self._kernel_size = sp.check_spatial_arg(kernel_size, func=func, arg="kernel_size")
        self._stride = sp.check_spatial_arg(stride, func=func, arg="stride")
        self._padding = sp.check_padding(padding, func=func)
        self.w_std = check_std(w_std, func=func, arg="w_std")
        self.b_std = check_std(b_std, func=func, arg="b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization, func=func)

    def _geometry(self, spatial, func):
        s = len(spatial)
        if s not in (1, 2, 3):
            raise ValueError(f"{func}: inputs must have 1, 2 or 3 spatial axes (N, C, *S), got "
                             f"{s} spatial axes")
        for arg, v in (("kernel_size", self._kernel_size), ("stride", self._stride)) + (
                () if isinstance(self._padding, str) else (("padding", self._padding),)):
            if len(v) not in (1, s):
                raise ValueError(f"{func}: {arg} has {len(v)} entries but the input has {s} "
                                 f"spatial axes {tuple(spatial)}")
        window, stride = sp.expand(self._kernel_size, s), sp.expand(self._stride, s)
        pads = (self._padding,) * s if isinstance(self._padding, str) else \
            sp.expand(self._padding, s)
        geo = [transpose_geometry(n, k, st, p, i, func)
               for i, (n, k, st, p) in enumerate(zip(spatial, window, stride, pads))]
        return window, stride, geo

    def apply_kernel(self, k: Kernel) -> Kernel:
        func = "ConvTranspose.kernel"
        if isinstance(k, list):
            raise ValueError(f"{func}: expected one input, got {len(k)} branches; merge them "
                             f"with FanInSum() or FanInConcat() first")
        if not k.is_spatial:
            raise ValueError(f"{func}: input must be channels-first with spatial axes (n, C, H, "
                             f"W) or (n, C, L); got flat features; use Dense for flat inputs")
        spatial = k.spatial_shape
        s = len(spatial)
        window, stride, geo = self._geometry(spatial, func)
        full = k.is_full_spatial
        idx = [source_indices(n, kk, st, a, out, wrap, k.nngp.device)
               for n, kk, st, (a, out, wrap) in zip(spatial, window, stride, geo)]

        def tsum(t, n_batch, scale=1.0):          # scale · Σ_j over offsets, every axis
            for i in range(s):
                t = _gather_sum(t, sp.pair_axes(s, full, i, n_batch), idx[i],
                                scale if i == 0 else 1.0)
            return t

        n_off = math.prod(window)
        w2 = self.w_std ** 2
        b2 = (self.b_std or 0.0) ** 2
        standard = self.parameterization == "standard"
        # docs/math.md §conv-transpose: K' = σw²/|D| Σ_j K(i(o,j), i(o',j)) + σb²
        sum_k = tsum(k.nngp, 2)
        nngp = torch.mul(sum_k, w2 / n_off).add_(b2)
        cov1 = tsum(k.cov1, 1, w2 / n_off).add_(b2)
        cov2 = None if k.cov2 is None else tsum(k.cov2, 1, w2 / n_off).add_(b2)
        ntk = None
        if k.ntk is not None:
            sum_t = None if k.is_input else tsum(k.ntk, 2, w2 / n_off)
            if not standard:
                ntk = nngp.clone() if sum_t is None else sum_t.add_(nngp)
            else:
                ntk = sum_k.mul_(k.channels).add_(0.0 if self.b_std is None else 1.0)
                if sum_t is not None:
                    ntk.add_(sum_t)
        out = k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=True,
                        is_input=False, channels=self.out_channels, sources=new_source())
        if k.x1_is_x2:
            out.set_batch_diagonal(nngp, cov1)
        return out

    def build(self, in_shape, generator, dtype):
        func = "ConvTranspose.module"
        if isinstance(in_shape, list) or not 2 <= len(in_shape) <= 4:
            raise ValueError(f"{func}: in_shape must be (C, *spatial) with 1 to 3 spatial axes, "
                             f"got {in_shape!r}")
        window, stride, geo = self._geometry(tuple(in_shape[1:]), func)
        mod = ConvTransposeModule(in_shape[0], self.out_channels, window, stride, geo,
                                  self.w_std, self.b_std, self.parameterization, generator,
                                  dtype)
        return mod, (self.out_channels, *(g[1] for g in geo))
