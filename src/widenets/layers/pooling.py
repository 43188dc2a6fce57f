"""Average and sum pooling, their global forms, and flattening of channels-first inputs.

Kernels (Novak et al. 2019; Arora et al. 2019; docs/math.md §pooling), with window W (|W| offsets):

    AvgPool:        K'(o, o') = 1/|W|² Σ_{d, d' in W} K(s·o + d, s·o' + d')      (all pairs)
    SumPool:        K'(o, o') = Σ_{d, d' in W} K(s·o + d, s·o' + d')             (all pairs)
    GlobalAvgPool:  K' = 1/|S|² Σ_{p, p'} K(p, p')                                 (all pairs)
    GlobalSumPool:  K' = Σ_{p, p'} K(p, p')                                        (all pairs)
    Flatten:        K' = 1/|S| Σ_p K(p, p)                                        (diagonal)

and the same linear maps for the NTK (no parameters). Zero padding counts the padded zeros in
the average (torch's count_include_pad=True). Pooling needs the full layout; Flatten only the
diagonal, so a network read out by Flatten never builds the position pairs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernel import Kernel, pair_diagonal
from . import _spatial as sp
from .base import DIAGONAL, FULL, Layer
from .conv import pad_input, spatial_padding

__all__ = ["AvgPool", "GlobalAvgPool", "Flatten", "AvgPoolModule", "GlobalAvgPoolModule",
           "FlattenModule", "SumPool", "GlobalSumPool", "GlobalSumPoolModule"]

_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _single(k, func: str) -> Kernel:
    if isinstance(k, list):
        raise ValueError(f"{func}: expected one input, got {len(k)} branches; merge them with "
                         f"FanInSum() or FanInConcat() first")
    return k


def _need_spatial(k: Kernel, func: str, full: bool) -> None:
    if not k.is_spatial:
        raise ValueError(f"{func}: input must be channels-first with spatial axes (n, C, H, W) "
                         f"or (n, C, L); got flat features")
    if full and not k.is_full_spatial:
        raise ValueError(f"{func}: pooling needs all position pairs but got the diagonal "
                         f"layout; call net.kernel(..., layout='auto') or layout='full'")


def _exact_symmetric(k: Kernel) -> Kernel:
    """Pooling sums the positions of x1 and of x2 in different orders, so K(x_i, x_j) and
    K(x_j, x_i) differ in the last bit; for x2 = x1 restore exact symmetry and the exact
    diagonal (whole square kernels only: row blocks of the diagonal layout never pool)."""
    if not k.x1_is_x2:
        return k
    if k.nngp.shape[0] == k.nngp.shape[1] and k.row_offset == 0:
        k = k.replace(nngp=k.symmetrize(k.nngp),
                      ntk=None if k.ntk is None else k.symmetrize(k.ntk))
    k.set_batch_diagonal(k.nngp, k.cov1)
    return k


class AvgPoolModule(nn.Module):
    """Average over windows (after explicit padding, zeros counted); times |W| for SumPool
    (`multiplier`)."""

    def __init__(self, window, stride, pads, circular: bool, multiplier: float = 1.0):
        super().__init__()
        self.window, self.stride, self.pads, self.circular = window, stride, pads, circular
        self.multiplier = multiplier

    def forward(self, x):
        x = pad_input(x, self.pads, self.circular)
        out = _POOL[len(self.window)](x, self.window, self.stride)
        return out * self.multiplier if self.multiplier != 1.0 else out

    def extra_repr(self) -> str:
        return f"window={self.window}, stride={self.stride}, pads={self.pads}"


class AvgPool(Layer):
    """Average pooling over 1 to 3 spatial axes.

    Args:
        window: pooling window, an int or a tuple (one per spatial axis).
        stride: an int or tuple; None (default) for the window.
        padding: "VALID" (default, as torch), "SAME" (zeros, counted in the average),
            "CIRCULAR", or an int / tuple of ints (zeros on both sides, as torch's padding=p
            with count_include_pad=True).

    Example:
        >>> x = torch.randn(2, 3, 8, 8)
        >>> net = wn.serial(wn.Conv(16, 3, w_std=1.4), wn.Relu(), wn.AvgPool(2), wn.Flatten(),
        ...                 wn.Dense(1))
        >>> net.kernel(x, get="nngp").shape
        torch.Size([2, 2])
    """

    #: divide the window sums by |W| (False for SumPool)
    _normalize = True

    def __init__(self, window, *, stride=None, padding="VALID"):
        self.window = window
        self.stride = stride
        self.padding = padding
        self._window = sp.check_spatial_arg(window, func=self.name, arg="window")
        self._stride = self._window if stride is None else sp.check_spatial_arg(
            stride, func=self.name, arg="stride")
        self._padding = sp.check_padding(padding, func=self.name)

    def layout_need(self, need):
        return FULL

    def _geometry(self, spatial, func):
        s = len(spatial)
        for arg, v in (("window", self._window), ("stride", self._stride)) + (
                () if isinstance(self._padding, str) else (("padding", self._padding),)):
            if len(v) not in (1, s):
                raise ValueError(f"{func}: {arg} has {len(v)} entries but the input has {s} "
                                 f"spatial axes {tuple(spatial)}")
        window, stride = sp.expand(self._window, s), sp.expand(self._stride, s)
        return window, stride, spatial_padding(spatial, window, stride, self._padding, func)

    def apply_kernel(self, k: Kernel) -> Kernel:
        func = f"{self.name}.kernel"
        k = _single(k, func)
        _need_spatial(k, func, full=True)
        s = k.spatial_ndim
        window, stride, pads = self._geometry(k.spatial_shape, func)
        circular = self._padding == "CIRCULAR"
        scale = 1.0 / math.prod(window) ** 2 if self._normalize else 1.0

        def pool(t, n_batch):                   # 1/|W|² Σ_{d, d'}, every spatial axis
            if t is None:
                return None
            for i in range(s):
                left, right, out = pads[i]
                t = sp.window_sum(t, sp.pair_axes(s, True, i, n_batch), window=window[i],
                                  stride=stride[i], left=left, right=right, out_size=out,
                                  circular=circular, joint=False)
            return t * scale

        out = k.replace(nngp=pool(k.nngp, 2), ntk=pool(k.ntk, 2), cov1=pool(k.cov1, 1),
                        cov2=pool(k.cov2, 1), is_input=False)
        return _exact_symmetric(out)

    def build(self, in_shape, generator, dtype):
        func = f"{self.name}.module"
        if isinstance(in_shape, list) or not 2 <= len(in_shape) <= 4:
            raise ValueError(f"{func}: in_shape must be (C, *spatial) with 1 to 3 spatial axes, "
                             f"got {in_shape!r}")
        window, stride, pads = self._geometry(tuple(in_shape[1:]), func)
        mult = 1.0 if self._normalize else float(math.prod(window))
        return (AvgPoolModule(window, stride, pads, self._padding == "CIRCULAR", mult),
                (in_shape[0], *(p[2] for p in pads)))


class SumPool(AvgPool):
    """Sum pooling over 1 to 3 spatial axes: `AvgPool` without the division by the window
    size (NT's `stax.SumPool`): K'(o, o') = Σ_{d, d' in W} K(s·o + d, s·o' + d'), the same
    for the NTK (docs/math.md §sumpool). Zero padding adds zeros to the sum.

    Args:
        window: pooling window, an int or a tuple (one per spatial axis).
        stride: an int or tuple; None (default) for the window.
        padding: "VALID" (default), "SAME" (zeros), "CIRCULAR", or an int / tuple of ints.

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.ones(1, 1, 4)                  # K(p, p') = 1 for every pair
        >>> wn.SumPool(2).kernel(x, get="nngp")      # Σ over 2 x 2 pairs: 4 per output pair
        tensor([[[[4., 4.],
                  [4., 4.]]]], dtype=torch.float64)
    """

    _normalize = False



class GlobalAvgPoolModule(nn.Module):
    takes_graph = True      # reads mask= (average over the valid positions only)

    def forward(self, x, pattern=None, mask=None):
        if mask is None:
            return x.mean(dim=tuple(range(2, x.ndim)))
        w = mask.reshape(x.shape[0], 1, -1).to(x.dtype)
        return (x.reshape(*x.shape[:2], -1) * w).sum(2) / w.sum(2)


class GlobalAvgPool(Layer):
    """Average over all positions: (n, C, *S) -> (n, C). Needs all position pairs.

    With `mask=` the average runs over the valid positions of each input only:
    K' = Σ_{p, p'} m1(p) m2(p') K(p, p') / (|m1| |m2|).

    Example:
        >>> x = torch.randn(2, 3, 8, 8)
        >>> net = wn.serial(wn.Conv(16, 3, w_std=1.4), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
        >>> net.kernel(x, get="ntk").shape
        torch.Size([2, 2])
    """

    accepts_mask = True

    def layout_need(self, need):
        return FULL

    def apply_kernel(self, k: Kernel) -> Kernel:
        func = "GlobalAvgPool.kernel"
        k = _single(k, func)
        _need_spatial(k, func, full=True)
        m1, m2 = k.masks()
        if m1 is not None:
            return _exact_symmetric(_masked_global_mean(k, m1, m2))
        return _reduce_positions(k, torch.mean)

    def build(self, in_shape, generator, dtype):
        if isinstance(in_shape, list) or len(in_shape) < 2:
            raise ValueError(f"GlobalAvgPool.module: in_shape must be (C, *spatial), got "
                             f"{in_shape!r}")
        return GlobalAvgPoolModule(), (in_shape[0],)


class GlobalSumPoolModule(nn.Module):
    def forward(self, x):
        return x.sum(dim=tuple(range(2, x.ndim)))


class GlobalSumPool(Layer):
    """Sum over all positions: (n, C, *S) -> (n, C) (NT's `stax.GlobalSumPool`):
    K' = Σ_{p, p'} K(p, p'), the same for the NTK (docs/math.md §sumpool). Needs all position
    pairs.

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.ones(2, 3, 5)
        >>> wn.GlobalSumPool().kernel(x, get="nngp")  # 5 x 5 position pairs of K = 1
        tensor([[25., 25.],
                [25., 25.]], dtype=torch.float64)
    """

    def layout_need(self, need):
        return FULL

    def apply_kernel(self, k: Kernel) -> Kernel:
        func = "GlobalSumPool.kernel"
        k = _single(k, func)
        _need_spatial(k, func, full=True)
        return _reduce_positions(k, torch.sum)

    def build(self, in_shape, generator, dtype):
        if isinstance(in_shape, list) or len(in_shape) < 2:
            raise ValueError(f"GlobalSumPool.module: in_shape must be (C, *spatial), got "
                             f"{in_shape!r}")
        return GlobalSumPoolModule(), (in_shape[0],)


def _reduce_positions(k: Kernel, reduce) -> Kernel:
    """GlobalAvgPool / GlobalSumPool on the full layout: `reduce` (torch.mean or torch.sum)
    over every position pair of the kernels and self-pair kernels."""
    def over(t, n_batch):
        return None if t is None else reduce(t, dim=tuple(range(n_batch, t.ndim)))

    out = k.replace(nngp=over(k.nngp, 2), ntk=over(k.ntk, 2), cov1=over(k.cov1, 1),
                    cov2=over(k.cov2, 1), is_input=False, diagonal_spatial=False)
    return _exact_symmetric(out)


def _masked_global_mean(k: Kernel, m1, m2) -> Kernel:
    """Σ_{p, p'} w1(p) w2(p') t(p, p') with w = m / |m| on every kernel tensor."""
    w1 = m1.to(k.dtype) / m1.sum(1, keepdim=True)
    w2 = m2.to(k.dtype) / m2.sum(1, keepdim=True)
    p = w1.shape[1]

    def cross(t):
        if t is None:
            return None
        t = t.reshape(*t.shape[:2], p, p)
        return torch.einsum("ap,abpq,bq->ab", w1, t, w2)

    def own(t, w):
        return None if t is None else torch.einsum("ap,apq,aq->a", w, t.reshape(-1, p, p), w)

    return k.replace(nngp=cross(k.nngp), ntk=cross(k.ntk), cov1=own(k.cov1, w1),
                     cov2=None if k.cov2 is None else own(k.cov2, w2), is_input=False,
                     diagonal_spatial=False, mask1=None, mask2=None)


class FlattenModule(nn.Module):
    def forward(self, x):
        return x.flatten(1)


class Flatten(Layer):
    """(n, C, *S) -> (n, C·|S|), channels first as torch's x.flatten(1). Needs only the
    diagonal of the position pairs: K' = mean_p K(p, p).

    Example:
        >>> x = torch.randn(2, 3, 8, 8)
        >>> net = wn.serial(wn.Conv(16, 3, w_std=1.4), wn.Relu(), wn.Flatten(), wn.Dense(1))
        >>> net.kernel(x, get="ntk").shape
        torch.Size([2, 2])
        >>> net.module((3, 8, 8), seed=0)(x).shape
        torch.Size([2, 1])
    """

    def layout_need(self, need):
        return DIAGONAL

    def apply_kernel(self, k: Kernel) -> Kernel:
        func = "Flatten.kernel"
        k = _single(k, func)
        if not k.is_spatial:
            return k
        full = k.is_full_spatial

        def mean(t, nb):
            if t is None:
                return None
            if full:
                t = pair_diagonal(t, nb)
            return t.contiguous().mean(dim=tuple(range(nb, t.ndim)))

        out = k.replace(nngp=mean(k.nngp, 2), ntk=mean(k.ntk, 2), cov1=mean(k.cov1, 1),
                        cov2=mean(k.cov2, 1), diagonal_spatial=False,
                        channels=k.channels * math.prod(k.spatial_shape))
        if k.x1_is_x2:
            out.set_batch_diagonal(out.nngp, out.cov1)
        return out

    def build(self, in_shape, generator, dtype):
        if isinstance(in_shape, list):
            raise ValueError(f"Flatten.module: expected one input, got {len(in_shape)} branches")
        return FlattenModule(), (math.prod(in_shape),)

