"""Kernels of spatial inputs: layout choice and memory-aware blocks of the batch.

The layout is chosen by a pre-pass over the layer graph (`Layer.layout_need`, from the output
back to the input): Flatten asks for the diagonal of the position pairs, pooling for all of
them. In the full layout every input pair (i, j) carries (H·W)² numbers per tensor, so the
batch is cut into blocks of inputs and the network runs block pair by block pair (each block
pair is independent: the kernel of (x1_I, x2_J) needs only those inputs). With x2 = x1 only the
blocks I <= J are computed; the others are their transposes.
"""

from __future__ import annotations

import math

import torch

from .._memory import available_memory
from ..kernel import Kernel
from .base import DIAGONAL, FULL, check_finite, input_kernel
from .engine import apply as apply_layer
from .patterns import attach

__all__ = ["spatial_kernel", "full_layout_bytes_per_pair", "available_memory"]

#: peak number of live (n1, n2, *S, *S) tensors while a layer runs (nngp, ntk, the activation's
#: temporaries: cosine, angle, sine, T, Tdot, products), measured on Conv + Relu; with NNGP only.
_LIVE_TENSORS_NTK = 12
_LIVE_TENSORS_NNGP = 8
#: target bytes of one (b1, b2, *S, *S) tensor per block. Blocks give the symmetric case its
#: factor ~2 (only blocks I <= J run) and bound memory; much smaller blocks lose to per-op
#: overheads (measured on the 2-core machine with benchmarks/analytic_conv.py: 8x8 images,
#: float32, b = 8 / 16 / 32 / 64 took 15.5 / 5.5 / 4.1 / 3.6 s of CPU at N = 128)
_TARGET_BLOCK_BYTES = 32 << 20
_MIN_BLOCK = 8


def full_layout_bytes_per_pair(spatial, dtype: torch.dtype, want_ntk: bool) -> int:
    """Peak bytes one input pair needs in the full layout: live tensors x (prod S)² x itemsize."""
    live = _LIVE_TENSORS_NTK if want_ntk else _LIVE_TENSORS_NNGP
    return live * math.prod(spatial) ** 2 * torch.empty((), dtype=dtype).element_size()


def _gib(b: float) -> str:
    return f"{b / 2 ** 30:.2f} GiB"


def spatial_kernel(layer, x1: torch.Tensor, x2: torch.Tensor | None, *, want_ntk: bool,
                   layout: str, batch_size: int | None, fname: str, aux=(None,) * 4):
    """`layer`'s kernel on channels-first inputs, in the layout it needs, blocked if needed.

    `aux` = (pattern1, pattern2, mask1, mask2) of the inputs (`Layer.kernel(pattern=, mask=)`),
    sliced along with the inputs in every block."""
    if layout == "full":
        need = FULL
    else:
        need = layer.layout_need(FULL if layout == "auto" else DIAGONAL)
        if isinstance(need, list):            # a network that starts with FanOut
            need = max(need)
    if need == DIAGONAL:
        return layer._apply_in_row_blocks(
            attach(input_kernel(x1, x2, want_ntk=want_ntk, layout="diagonal"), *aux), fname)

    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    spatial = tuple(x1.shape[2:])
    per_pair = full_layout_bytes_per_pair(spatial, x1.dtype, want_ntk)
    budget = available_memory() // 2
    fits = max(1, math.isqrt(max(budget // per_pair, 1)))
    what = (f"the full layout (all position pairs, needed by pooling) of {spatial} inputs "
            f"takes about {_gib(per_pair)} per input pair in {x1.dtype}")
    if per_pair > budget:
        raise MemoryError(f"{fname}: {what}, more than half the available memory "
                          f"({_gib(2 * budget)}), even one pair at a time; use smaller images, a "
                          f"Flatten readout (diagonal layout, linear in pixels) or float32")
    if batch_size is not None:
        if batch_size ** 2 * per_pair > budget:
            raise MemoryError(f"{fname}: batch_size={batch_size} would need "
                              f"{_gib(batch_size ** 2 * per_pair)}: {what}, and half the "
                              f"available memory is {_gib(budget)}; use batch_size <= {fits}")
        b = batch_size
    else:
        itemsize = x1.element_size()
        speed = math.isqrt(max(_TARGET_BLOCK_BYTES // (math.prod(spatial) ** 2 * itemsize), 1))
        b = min(fits, max(speed, _MIN_BLOCK))
    if b >= n1 and b >= n2:
        k = apply_layer(layer,
            attach(input_kernel(x1, x2, want_ntk=want_ntk, layout="full"), *aux))
    else:
        k = _blocked(layer, x1, x2, b, want_ntk, aux)
    check_finite(k, fname)
    return k


def _blocked(layer, x1, x2, b: int, want_ntk: bool, aux):
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    rows = [(s, min(s + b, n1)) for s in range(0, n1, b)]
    cols = rows if x2 is None else [(s, min(s + b, n2)) for s in range(0, n2, b)]
    blocks = {}
    for bi, (r0, r1) in enumerate(rows):
        for bj, (c0, c1) in enumerate(cols):
            if x2 is None and bj < bi:
                continue
            p1, p2, m1, m2 = (None if t is None else t[r0:r1] if i % 2 == 0 else t[c0:c1]
                              for i, t in enumerate(_second_from_first(aux, x2 is None)))
            if x2 is None and bi == bj:
                kx2 = None
                p2 = m2 = None
            else:
                kx2 = (x1 if x2 is None else x2)[c0:c1]
            blocks[bi, bj] = apply_layer(layer, attach(
                input_kernel(x1[r0:r1], kx2, want_ntk=want_ntk, layout="full"), p1, p2, m1, m2))
    first = blocks[0, 0]
    if isinstance(first, list):
        return [_assemble({key: v[i] for key, v in blocks.items()}, rows, cols, x2 is None)
                for i in range(len(first))]
    return _assemble(blocks, rows, cols, x2 is None)


def _second_from_first(aux, symmetric: bool):
    """(p1, p2, m1, m2) with p2 = p1 and m2 = m1 for a symmetric kernel (x2 = x1)."""
    p1, p2, m1, m2 = aux
    return (p1, p1 if symmetric else p2, m1, m1 if symmetric else m2)


def _assemble(blocks: dict, rows, cols, symmetric: bool) -> Kernel:
    first = blocks[0, 0]
    n1, n2 = rows[-1][1], cols[-1][1]

    def fill(name):
        if getattr(first, name) is None:
            return None
        t0 = getattr(first, name)
        out = t0.new_empty((n1, n2, *t0.shape[2:]))
        for (bi, bj), k in blocks.items():
            (r0, r1), (c0, c1) = rows[bi], cols[bj]
            out[r0:r1, c0:c1] = getattr(k, name)
            if symmetric and bi != bj:
                out[c0:c1, r0:r1] = k.swap_inputs(getattr(k, name))
        return out

    cov1 = torch.cat([blocks[i, i if symmetric else 0].cov1 for i in range(len(rows))])
    cov2 = None if symmetric else torch.cat([blocks[0, j].cov2 for j in range(len(cols))])
    return first.replace(nngp=fill("nngp"), ntk=fill("ntk"), cov1=cov1, cov2=cov2,
                         x1_is_x2=symmetric)
