"""Locally connected convolution (unshared weights per output position): finite module and
infinite-width kernel (NT's `stax.ConvLocal`).

Each output position o has its own filter ω_o (and its own bias), so outputs at different
positions use independent weights and are uncorrelated at initialization. With the
parameterizations of `Conv` (fan-in C·|D|), docs/math.md §conv-local:

    K'(o, o') = δ_{oo'} (σw²/|D| Σ_d K(s·o + d, s·o + d) + σb²)
    ntk:      Θ'(o, o') = K'(o, o') + δ_{oo'} σw²/|D| Σ_d Θ(s·o + d, s·o + d)
    standard: Θ'(o, o') = δ_{oo'} (C Σ_d K(s·o + d, s·o + d) + 1 + σw²/|D| Σ_d Θ(...))

i.e. the shared-weight `Conv` kernel on the position diagonal and zero off it (Novak et al.
2019, as NT derives). Only the input's diagonal (p, p) is read, so a network of ConvLocal
layers read out by Flatten never needs the full layout; after pooling, the full layout
carries the zeros.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..kernel import Kernel, pair_diagonal
from .base import normal_
from .conv import Conv, pad_input

__all__ = ["ConvLocal", "ConvLocalModule"]


class ConvLocalModule(nn.Module):
    """Locally connected layer: weight (P, out, C·|D|) with P output positions, bias
    (out, *S_out); patches extracted with Tensor.unfold after the padding of `Conv`."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, pads, circular,
                 w_std, b_std, parameterization, generator, dtype):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.pads, self.circular = kernel_size, stride, pads, \
            circular
        self.out_spatial = tuple(p[2] for p in pads)
        self.w_std, self.b_std, self.parameterization = w_std, b_std, parameterization
        fan_in = in_channels * math.prod(kernel_size)
        ntk = parameterization == "ntk"
        n_pos = math.prod(self.out_spatial)
        self.weight = nn.Parameter(torch.empty(n_pos, out_channels, fan_in, dtype=dtype))
        normal_(self.weight, generator, 1.0 if ntk else w_std / math.sqrt(fan_in))
        if b_std is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(out_channels, *self.out_spatial, dtype=dtype))
            normal_(self.bias, generator, 1.0 if ntk else b_std)
        self.w_scale = w_std / math.sqrt(fan_in) if ntk else 1.0
        self.b_scale = (b_std or 0.0) if ntk else 1.0

    def forward(self, x):
        x = pad_input(x, self.pads, self.circular)
        for i, (k, st) in enumerate(zip(self.kernel_size, self.stride)):
            x = x.unfold(2 + i, k, st)               # (N, C, *S_out, *kernel)
        n, c = x.shape[:2]
        # (N, C, *S_out, *K) -> (N, P, C·|D|), channels outer, offsets inner (as conv weights)
        x = x.reshape(n, c, math.prod(self.out_spatial), math.prod(self.kernel_size))
        x = x.permute(0, 2, 1, 3).reshape(n, -1, c * math.prod(self.kernel_size))
        y = torch.einsum("npf,pof->nop", x, self.weight)
        if self.w_scale != 1.0:
            y = y * self.w_scale
        y = y.reshape(n, self.out_channels, *self.out_spatial)
        if self.bias is not None:
            y = y + (self.bias * self.b_scale if self.b_scale != 1.0 else self.bias)
        return y

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, pads={self.pads}, "
                f"circular={self.circular}, w_std={self.w_std}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}")


class ConvLocal(Conv):
    """Convolution with unshared weights: a locally connected layer (NT's `stax.ConvLocal`).

    Arguments, shapes and parameterizations as `Conv` (default padding "VALID", as NT's). Its
    kernel is `Conv`'s on the position diagonal and zero between distinct positions (every
    output position has its own weights); docs/math.md §conv-local. The
    finite module has one filter and one bias per output position.

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.randn(3, 2, 6, dtype=torch.float64)
        >>> local = wn.ConvLocal(4, 3).kernel(x, layout="full", get="nngp")
        >>> shared = wn.Conv(4, 3, padding="VALID").kernel(x, layout="full", get="nngp")
        >>> eye = torch.eye(4, dtype=torch.bool)
        >>> bool(torch.equal(local[..., eye], shared[..., eye]))
        True
        >>> float(local[..., ~eye].abs().max())
        0.0
    """

    def __init__(self, out_channels: int, kernel_size, *, stride=1, padding="VALID",
                 w_std: float = 1.0, b_std: float | None = 0.0,
                 parameterization: str = "ntk"):
        super().__init__(out_channels, kernel_size, stride=stride, padding=padding,
                         w_std=w_std, b_std=b_std, parameterization=parameterization)

    def apply_kernel(self, k: Kernel) -> Kernel:
        if isinstance(k, list) or not k.is_full_spatial:
            return self._rename(lambda: super(ConvLocal, self).apply_kernel(k))
        # the shared-weight conv of the diagonal (p, p), then zeros between distinct positions
        diag = lambda t, nb: None if t is None else pair_diagonal(t, nb).contiguous()  # noqa
        kd = k.replace(nngp=diag(k.nngp, 2), ntk=diag(k.ntk, 2), cov1=diag(k.cov1, 1),
                       cov2=diag(k.cov2, 1), diagonal_spatial=True)
        out = self._rename(lambda: super(ConvLocal, self).apply_kernel(kd))

        def embed(t, nb):
            if t is None:
                return None
            spatial = t.shape[nb:]
            z = t.new_zeros((*t.shape[:nb], *spatial, *spatial))
            pair_diagonal(z, nb).copy_(t)
            return z

        return out.replace(nngp=embed(out.nngp, 2), ntk=embed(out.ntk, 2),
                           cov1=embed(out.cov1, 1), cov2=embed(out.cov2, 1),
                           diagonal_spatial=False)

    def _rename(self, fn):
        """Run Conv's map with its error messages naming ConvLocal."""
        try:
            return fn()
        except ValueError as e:
            msg = str(e)
            if msg.startswith("Conv."):
                raise ValueError("ConvLocal." + msg[len("Conv."):]) from None
            raise

    def build(self, in_shape, generator, dtype):
        func = "ConvLocal.module"
        if isinstance(in_shape, list) or not 2 <= len(in_shape) <= 4:
            raise ValueError(f"{func}: in_shape must be (C, *spatial) with 1 to 3 spatial axes, "
                             f"got {in_shape!r}")
        window, stride, pads = self._geometry(tuple(in_shape[1:]), func)
        mod = ConvLocalModule(in_shape[0], self.out_channels, window, stride, pads,
                              self._padding == "CIRCULAR", self.w_std, self.b_std,
                              self.parameterization, generator, dtype)
        return mod, (self.out_channels, *(p[2] for p in pads))
