"""Shared machinery of the spatial layers: padding rules and windowed sums over position pairs.

A spatial Kernel carries, for s spatial axes S = (S_1, ..., S_s),
* the diagonal layout: tensors (n1, n2, *S), axis 2 + i is spatial axis i;
* the full layout: tensors (n1, n2, *S, *S), axes 2 + i and 2 + s + i are spatial axis i of
  x1 and of x2 (see `widenets.kernel`).

A convolution sums over filter offsets d shared by both positions of a pair (Novak et al. 2019;
docs/math.md §conv):  K'(o, o') = Σ_d K(s·o + d - l, s·o' + d - l)  (l the left padding), so it
slides along the diagonal of each (axis, axis') plane. Pooling sums the two positions independently:
K'(o, o') = Σ_{d, d'} K(s·o + d - l, s·o' + d' - l). Both are separable over spatial axes.
"""

from __future__ import annotations

import math

import torch

__all__ = ["PADDINGS", "resolve_padding", "check_spatial_arg", "window_sum", "pair_axes"]

PADDINGS = ("SAME", "VALID", "CIRCULAR")


def check_spatial_arg(value, *, func: str, arg: str, ndim: int | None = None,
                      minimum: int = 1) -> tuple[int, ...]:
    """An int or a tuple of ints >= minimum (kernel_size, stride, window)."""
    vals = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(vals, (tuple, list)) or not vals or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in vals):
        raise ValueError(f"{func}: {arg} must be an int >= {minimum} or a tuple of them "
                         f"(one per spatial axis), got {value!r}")
    if ndim is not None and len(vals) not in (1, ndim):
        raise ValueError(f"{func}: {arg} has {len(vals)} entries but the layer has {ndim} "
                         f"spatial axes, got {value!r}")
    return tuple(vals)


def check_padding(value, *, func: str):
    """'SAME' | 'VALID' | 'CIRCULAR' (any case), or explicit symmetric zero padding (ints)."""
    if isinstance(value, str):
        if value.upper() not in PADDINGS:
            raise ValueError(f"{func}: padding must be one of {PADDINGS} or an int / tuple of "
                             f"ints (symmetric zero padding, as torch), got {value!r}")
        return value.upper()
    return check_spatial_arg(value, func=func, arg="padding", minimum=0)


def expand(vals: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return vals * ndim if len(vals) == 1 else vals


def resolve_padding(size: int, window: int, stride: int, padding, axis: int, *,
                    func: str) -> tuple[int, int, int]:
    """(left, right, out_size) along one spatial axis.

    SAME and CIRCULAR: out = ceil(size / stride), total padding
    max((out - 1) stride + window - size, 0), left = total // 2 (TensorFlow's rule; for odd
    windows and stride 1 it is (window - 1) / 2 on both sides, as torch's padding="same").
    VALID: no padding. An int p: p on both sides (torch's Conv2d(padding=p)).
    """
    if padding == "VALID":
        left = right = 0
    elif isinstance(padding, str):
        out = -(-size // stride)
        total = max((out - 1) * stride + window - size, 0)
        left = total // 2
        right = total - left
    else:
        left = right = padding
    if size + left + right < window:
        raise ValueError(f"{func}: spatial axis {axis} has size {size} (padded "
                         f"{size + left + right}), smaller than the window {window}; use "
                         f"padding='SAME' or a smaller window")
    out = (size + left + right - window) // stride + 1
    return left, right, out


def pair_axes(s: int, full: bool, i: int, n_batch: int = 2) -> tuple[int, ...]:
    """Tensor axes that carry spatial axis i after `n_batch` batch axes: (b + i,) in the
    diagonal layout, (b + i, b + s + i) in the full layout."""
    return (n_batch + i, n_batch + s + i) if full else (n_batch + i,)


def _circular_pad(t: torch.Tensor, axis: int, left: int, right: int) -> torch.Tensor:
    n = t.shape[axis]
    idx = torch.arange(-left, n + right, device=t.device) % n
    return t.index_select(axis, idx)


def _slc(ndim: int, axes, s: slice) -> tuple:
    out = [slice(None)] * ndim
    for a in axes:
        out[a] = s
    return tuple(out)


def add_scaled_(out: torch.Tensor, src: torch.Tensor, scale) -> torch.Tensor:
    """out += scale·src in place: `alpha=` for a number (no temporary), a product for a tensor
    scale (a hyperparameter that may require grad: `alpha` takes numbers only)."""
    if isinstance(scale, torch.Tensor):
        return out.add_(src * scale)
    return out.add_(src, alpha=scale)


def window_sum(t: torch.Tensor, axes: tuple[int, ...], *, window: int, stride: int,
               left: int, right: int, out_size: int, circular: bool,
               joint: bool, scale: float = 1.0, init=None) -> torch.Tensor:
    """Σ over window offsets d of t at input positions stride·o + d - left, along `axes`.

    joint=True shares the offset between all `axes` (a convolution on the position pairs of
    one spatial axis); joint=False sums each axis independently (pooling), i.e. applies the
    one-axis window sum to each axis in turn. Zero padding adds nothing outside the input;
    circular padding wraps around. The result is multiplied by `scale` (folded into the
    passes, no extra one); `init` (a number, or a tensor shaped like the result) is added to
    it, folded into the first pass where it can be (joint sums only).
    """
    if init is not None and not joint:
        raise ValueError("window_sum: init is for joint sums")
    if not joint and len(axes) > 1:
        for i, a in enumerate(axes):
            t = window_sum(t, (a,), window=window, stride=stride, left=left, right=right,
                           out_size=out_size, circular=circular, joint=True,
                           scale=scale if i == 0 else 1.0)
        return t
    if window == 1 and stride == 1 and left == 0 and right == 0:
        out = t * scale                       # a new tensor: callers update it in place
        return out if init is None else out.add_(init)
    size = t.shape[axes[0]]
    nd = t.ndim
    if circular and (left or right):
        for a in axes:
            t = _circular_pad(t, a, left, right)
        size, left = size + left + right, 0
    shape = list(t.shape)
    for a in axes:
        shape[a] = out_size
    out = None
    ranges = []
    for d in range(window):
        start = d - left                      # input index of output 0
        # outputs o with 0 <= stride·o + start < size
        o_lo = max(0, -(start // stride))     # ceil(-start / stride)
        o_hi = min(out_size - 1, (size - 1 - start) // stride)
        if o_hi >= o_lo:
            ranges.append((o_hi - o_lo < out_size - 1, start, o_lo, o_hi))
    # offsets that cover every output first: the sum starts from a copy, not from zeros
    for _, start, o_lo, o_hi in sorted(ranges, key=lambda r: r[0]):
        i_lo = stride * o_lo + start
        src = t[_slc(nd, axes, slice(i_lo, i_lo + stride * (o_hi - o_lo) + 1, stride))]
        if o_lo == 0 and o_hi == out_size - 1:
            if out is None:
                out = _first_term(src, scale, init)
                init = None
            else:
                add_scaled_(out, src, scale)
        else:
            if out is None:
                out = t.new_zeros(shape)
            add_scaled_(out[_slc(nd, axes, slice(o_lo, o_hi + 1))], src, scale)
    if out is None:
        out = t.new_zeros(shape)
    return out if init is None else out.add_(init)


def _first_term(src: torch.Tensor, scale, init) -> torch.Tensor:
    """init + scale·src as a new contiguous tensor, in one pass where the operands allow."""
    if init is None:
        return src.clone(memory_format=torch.contiguous_format) if scale == 1.0 \
            else torch.mul(src, scale)
    if isinstance(scale, torch.Tensor) or (isinstance(init, torch.Tensor) and (
            init.shape != src.shape or init.requires_grad)):
        return torch.mul(src, scale).add_(init)
    if not isinstance(init, torch.Tensor):
        init = src.new_tensor(init)           # a 0-d tensor broadcasts: still one pass
    return torch.add(init, src, alpha=scale).contiguous()


def num_positions(shape) -> int:
    return math.prod(shape)
