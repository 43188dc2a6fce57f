"""Kernels of spatial inputs: layout choice and memory-aware blocks of the batch.

The layout is chosen by a pre-pass over the layer graph (`Layer.layout_need`, from the output
back to the input): Flatten asks for the diagonal of the position pairs, pooling for all of
them. The diagonal layout runs in row blocks like flat inputs. In the full layout every input
pair (i, j) carries (H·W)² numbers per tensor, so the batch is cut into blocks of b inputs and
the network runs block pair by block pair (`_schedule.kernel_in_block_pairs`).

Memory (the policy of `widenets._memory.memory_budget`): the blocks running at once together
stay within the budget. b comes from `batch_size`, or from a speed target capped by the budget
of one block; then as many blocks run at once as the budget holds, at most `block_threads()`.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .._memory import memory_budget, on_host, reuse_freed_memory
from .._parallel import big_op_threads, block_threads
from ._inputs import DIAGONAL, FULL, input_kernel
from ._kernel_checks import check_finite
from ._schedule import (
    PASSES_PER_LAYER,
    compute_block,
    kernel_in_block_pairs,
    kernel_in_row_blocks,
    second_from_first,
    spatial_network_kernel,
)
from .patterns import attach

__all__ = ["spatial_kernel", "full_layout_bytes_per_pair", "full_layout_plan"]

#: peak number of live (n1, n2, *S, *S) tensors while a layer runs (nngp, ntk, the activation's
#: temporaries: cosine, angle, sine, T, Tdot, products), measured on Conv + Relu; with NNGP only.
_LIVE_TENSORS_NTK = 12
_LIVE_TENSORS_NNGP = 8
#: target bytes of one (b1, b2, *S, *S) tensor per block. Blocks give the symmetric case its
#: factor ~2 (only blocks I <= J run) and bound memory; much smaller blocks lose to per-op
#: overheads (measured on the 2-core machine with benchmarks/analytic_conv.py: 8x8 images,
#: float32, b = 8 / 16 / 32 / 64 took 15.5 / 5.5 / 4.1 / 3.6 s of CPU at N = 128, while
#: glibc still returned every freed block to the system). With freed memory reused
#: (`widenets._memory.reuse_freed_memory`) 16 MiB beat 32 MiB (CNN-GAP, N = 128, busy
#: machine, CPU medians of 3: float32 b = 45 / 32 / 22: 2.16 / 1.86 / 1.78 s; float64 b = 32 /
#: 22 / 16: 3.96 / 3.67 / 3.69 s), and stays below glibc's 32 MiB mmap ceiling without it.
_TARGET_BLOCK_BYTES = 16 << 20
_MIN_BLOCK = 8


def full_layout_bytes_per_pair(spatial, dtype: torch.dtype, want_ntk: bool) -> int:
    """Peak bytes one input pair needs in the full layout: live tensors x (prod S)² x itemsize."""
    live = _LIVE_TENSORS_NTK if want_ntk else _LIVE_TENSORS_NNGP
    return live * math.prod(spatial) ** 2 * torch.empty((), dtype=dtype).element_size()


def _gib(b: float) -> str:
    return f"{b / 2 ** 30:.2f} GiB"


def spatial_kernel(layer, x1: torch.Tensor, x2: torch.Tensor | None, *, want_ntk: bool,
                   layout: str, batch_size: int | None, fname: str, aux=(None,) * 4,
                   threads: int | None = None):
    """`layer`'s kernel on channels-first inputs, in the layout it needs, blocked if needed.

    `aux` = (pattern1, pattern2, mask1, mask2) of the inputs (`Layer.kernel(pattern=, mask=)`),
    sliced along with the inputs in every block. `threads`: the call's thread count (None:
    `block_threads()` on the CPU, 1 elsewhere)."""
    if threads is None:
        threads = block_threads() if x1.device.type == "cpu" else 1
    if layout == "full":
        need = FULL
    else:
        need = layer.layout_need(FULL if layout == "auto" else DIAGONAL)
        if isinstance(need, list):            # a network that starts with FanOut
            need = max(need)
    if need == DIAGONAL:
        if not any(t is not None for t in aux):         # the native engine, where it applies
            k = spatial_network_kernel(layer, x1, x2, want_ntk=want_ntk, full=False,
                                       fname=fname, threads=threads)
            if k is not None:
                return k
        return kernel_in_row_blocks(
            layer, attach(input_kernel(x1, x2, want_ntk=want_ntk, layout="diagonal"), *aux),
            fname, threads=threads)

    with reuse_freed_memory():                # docs: widenets._memory (page faults)
        return _full_layout_kernel(layer, x1, x2, want_ntk=want_ntk, batch_size=batch_size,
                                   fname=fname, aux=aux, threads=threads)


def _full_layout_kernel(layer, x1, x2, *, want_ntk, batch_size, fname, aux, threads):
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    b, threads = full_layout_plan(tuple(x1.shape[2:]), x1.dtype, want_ntk, batch_size,
                                  threads=threads, fname=fname, device=x1.device)
    if not any(t is not None for t in aux):             # the native engine, where it applies
        k = spatial_network_kernel(layer, x1, x2, want_ntk=want_ntk, full=True, fname=fname,
                                   threads=threads)
        if k is not None:
            return k
    if b >= n1 and b >= n2:               # one block: torch's threads if it is large
        size = n1 * n2 * math.prod(x1.shape[2:]) ** 2 * PASSES_PER_LAYER * len(list(
            layer.walk()))
        with big_op_threads(threads, size) if x1.device.type == "cpu" else \
                contextlib.nullcontext():
            k = compute_block(layer, attach(
                input_kernel(x1, x2, want_ntk=want_ntk, layout="full"), *aux))
    else:
        k = kernel_in_block_pairs(layer, x1, x2, b, want_ntk, aux, threads=threads)

    def pair_input(t):
        """The input Kernel of the first non-finite entry's input pair (for the diagnosis)."""
        i, j = (int(v) for v in (~torch.isfinite(t)).reshape(n1, n2, -1).any(-1).nonzero()[0])
        x2j = (x1 if x2 is None else x2)[j:j + 1]
        return attach(input_kernel(x1[i:i + 1], x2j, want_ntk=want_ntk, layout="full"),
                      *_rows_of(aux, i, j, x2 is None))

    check_finite(k, fname, layer=layer, k0=pair_input)
    return k


def _rows_of(aux, i: int, j: int, symmetric: bool) -> tuple:
    """(pattern1, pattern2, mask1, mask2) of `aux` for the input pair (i, j)."""
    p1, p2, m1, m2 = second_from_first(aux, symmetric)
    cut = lambda t, r: None if t is None else t[r:r + 1]  # noqa: E731
    return cut(p1, i), cut(p2, j), cut(m1, i), cut(m2, j)


def full_layout_plan(spatial, dtype: torch.dtype, want_ntk: bool, batch_size: int | None, *,
                     threads: int, fname: str, device=None) -> tuple[int, int]:
    """(b, concurrent blocks) of a full-layout kernel: the block edge b (batch_size, or the
    speed target capped by the memory budget) and how many b x b blocks may run at once
    within the budget (at most `threads`, at least 1). On a GPU (`device`) the budget is the
    device's memory and the blocks are as large as it allows: each operation is one kernel
    launch whatever its size, so small blocks only add launches (there is no cache to fit).

    Raises:
        MemoryError: one input pair, or one batch_size x batch_size block, exceeds the budget.
    """
    per_pair = full_layout_bytes_per_pair(spatial, dtype, want_ntk)
    on_cpu = on_host(device)
    budget = memory_budget(device=device)
    fits = max(1, math.isqrt(max(budget // per_pair, 1)))
    what = (f"the full layout (all position pairs, needed by pooling) of {spatial} inputs "
            f"takes about {_gib(per_pair)} per input pair in {dtype}")
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
        itemsize = torch.empty((), dtype=dtype).element_size()
        speed = math.isqrt(max(_TARGET_BLOCK_BYTES // (math.prod(spatial) ** 2 * itemsize), 1))
        b = min(fits, max(speed, _MIN_BLOCK)) if on_cpu else fits
    return b, max(1, min(threads, budget // (b * b * per_pair)))
