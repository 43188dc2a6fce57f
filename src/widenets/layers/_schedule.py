"""The block scheduler of `net.kernel`: the kernel cut into independent blocks, computed on
one-thread workers (`widenets._parallel`), assembled in block order.

Two kinds of blocks, one scheduler:
* row blocks (flat inputs, and the diagonal spatial layout): rows r0:r1 of x1 against all of
  x2 (`Kernel.row_block`); every layer map acts pair by pair given the variances, so the
  blocks are exact and the result is bitwise that of one pass. Blocks keep the temporaries
  near the cache, and each block is checked for non-finite entries while it is in cache.
* block pairs (the full spatial layout, all position pairs): the kernel of (x1_I, x2_J) needs
  only those inputs; with x2 = x1 only the blocks I <= J run, the others are their transposes
  (`Kernel.swap_inputs`), filled in after the network's output is known.

`compute_block` is the one place where a block is computed: a layer's kernel map on the
block's input Kernel.
"""

from __future__ import annotations

import contextlib

import torch

from .._memory import memory_budget
from .._parallel import big_op_threads, block_threads, run_in_order, spans
from ..kernel import Kernel
from ._inputs import input_kernel
from ._kernel_checks import check_finite
from .patterns import attach

__all__ = ["compute_block", "use_block_engine", "use_network_engine", "use_spatial_engine",
           "spatial_network_kernel", "kernel_in_row_blocks", "kernel_in_block_pairs",
           "row_bounds", "second_from_first", "MIN_BLOCK_ENTRIES"]

#: with several threads, blocks are made smaller so that each thread gets about 4 of them
#: (load balance), but not below this many entries (per-operation overheads and handing
#: blocks to threads dominate below; a kernel of 200 x 200 inputs stays one block)
MIN_BLOCK_ENTRIES = 1 << 16
#: elementwise passes per layer and kernel entry, roughly (for the work of one-block kernels)
PASSES_PER_LAYER = 16


#: the function that computes one block: `layer.apply_kernel` until the engine module
#: (`widenets.layers.engine`, fused or eager per `widenets.set_engine`) registers its `apply`
#: with `use_block_engine` (a registration, so that this module need not import the layers)
_block_engine = None


def use_block_engine(fn) -> None:
    """Make fn(layer, k) the function that computes every block of `net.kernel`."""
    global _block_engine
    _block_engine = fn


#: fn(layer, k0, fname, threads=) -> Kernel or None: computes a whole flat kernel at once
#: when it can (the native engine's chains, registered by `widenets.layers.engine`)
_network_engine = None


def use_network_engine(fn) -> None:
    """Make fn(layer, k0, fname, threads=) the first try of `kernel_in_row_blocks`: a Kernel
    (computed and checked), or None to compute the kernel in row blocks."""
    global _network_engine
    _network_engine = fn


#: fn(layer, x1, x2, want_ntk=, full=, fname=, threads=) -> Kernel or None: computes a whole
#: kernel of images at once when it can (the native engine's spatial chains)
_spatial_engine = None


def use_spatial_engine(fn) -> None:
    """Make fn(layer, x1, x2, want_ntk=, full=, fname=, threads=) the first try of a kernel of
    channels-first inputs: a Kernel (computed and checked), or None to compute it in blocks."""
    global _spatial_engine
    _spatial_engine = fn


def spatial_network_kernel(layer, x1, x2, *, want_ntk: bool, full: bool, fname: str,
                           threads: int):
    """The registered spatial engine's kernel, or None (no engine, or it does not apply)."""
    if _spatial_engine is None:
        return None
    return _spatial_engine(layer, x1, x2, want_ntk=want_ntk, full=full, fname=fname,
                           threads=threads)


def compute_block(layer, k: Kernel):
    """The kernel of one block: `layer`'s kernel map on the block's input Kernel (through the
    registered engine)."""
    return layer.apply_kernel(k) if _block_engine is None else _block_engine(layer, k)


def row_bounds(n1: int, per_row: int, block_entries: int, threads: int) -> list:
    """[(r0, r1), ...]: row blocks of about `block_entries` entries (`per_row` entries per
    row); with several threads at least about 4 blocks per thread where the rows allow it."""
    rows = max(1, block_entries // per_row)
    if threads > 1:
        rows = min(rows, max(-(-n1 // (4 * threads)), -(-MIN_BLOCK_ENTRIES // per_row)))
    return spans(n1, rows)


def _block_entries(layer, k0: Kernel) -> int:
    """Entries per row block: `layer.block_entries` (cache-sized) on the CPU; on a GPU as many
    as half its free memory holds at PASSES_PER_LAYER live temporaries per entry (there is
    no cache to fit, and every operation of a block is one kernel launch)."""
    device = k0.nngp.device
    if device.type == "cpu":
        return layer.block_entries
    per_entry = PASSES_PER_LAYER * k0.nngp.element_size() * (2 if k0.ntk is not None else 1)
    return max(layer.block_entries, memory_budget(device=device) // per_entry)


def _threads_for(k0: Kernel) -> int:
    return block_threads() if k0.nngp.device.type == "cpu" else 1


def kernel_in_row_blocks(layer, k0: Kernel, fname: str, *, threads: int | None = None):
    """`layer`'s kernel of the input Kernel k0, over row blocks of x1, assembled into one
    result (a Kernel, or a list of them for a network ending in several branches).

    Networks that symmetrize whole kernels (quadrature activations: `symmetric_formula`
    False) on x1 = x2 run in one pass. `threads`: None for `block_threads()`.
    """
    threads = _threads_for(k0) if threads is None else threads
    if _network_engine is not None:
        k = _network_engine(layer, k0, fname, threads=threads)
        if k is not None:
            return k
    n1 = k0.n1
    whole = k0.x1_is_x2 and any(not getattr(lay, "symmetric_formula", True)
                                for lay in layer.walk())
    per_row = max(1, k0.nngp[0].numel())
    bounds = [(0, n1)] if whole else row_bounds(n1, per_row, _block_entries(layer, k0),
                                                threads)
    if len(bounds) == 1:                  # one block: torch's threads if it is large
        with big_op_threads(threads, k0.nngp.numel() * PASSES_PER_LAYER * len(list(
                layer.walk()))) if k0.nngp.device.type == "cpu" else contextlib.nullcontext():
            k = compute_block(layer, k0)
        check_finite(k, fname, layer=layer, k0=k0)
        return k

    def block(rows):
        kb0 = k0.row_block(*rows)
        kb = compute_block(layer, kb0)
        check_finite(kb, fname, layer=layer, k0=kb0)
        return kb

    first: list = []
    outs: list = []

    def consume(i, kb):
        blocks = kb if isinstance(kb, list) else [kb]
        if i == 0:
            first.extend(blocks)
            first.append(isinstance(kb, list))
            outs.extend({f: None if getattr(b, f) is None else
                         getattr(b, f).new_empty((n1, *getattr(b, f).shape[1:]))
                         for f in ("nngp", "ntk", "cov1")} for b in blocks)
        r0, r1 = bounds[i]
        for out, b in zip(outs, blocks):
            for f, t in out.items():
                if t is not None:
                    t[r0:r1] = getattr(b, f)

    run_in_order(block, bounds, consume, threads=threads)
    is_list = first.pop()
    done = [b.replace(nngp=o["nngp"], ntk=o["ntk"], cov1=o["cov1"],
                      cov2=None if k0.x1_is_x2 else b.cov2, row_offset=0)
            for b, o in zip(first, outs)]
    return done if is_list else done[0]


def kernel_in_block_pairs(layer, x1, x2, b: int, want_ntk: bool, aux, *, threads: int):
    """`layer`'s full-layout kernel of (x1, x2) in blocks of b x b input pairs; with x2 = None
    only the blocks I <= J. `aux` = (pattern1, pattern2, mask1, mask2), sliced with the
    inputs. Returns a Kernel (a list of them for several branches), not yet checked."""
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    rows = spans(n1, b)
    cols = rows if x2 is None else spans(n2, b)
    pairs = [(bi, bj) for bi in range(len(rows)) for bj in range(len(cols))
             if x2 is not None or bj >= bi]
    p1, p2, m1, m2 = second_from_first(aux, x2 is None)

    def block(pair):
        bi, bj = pair
        (r0, r1), (c0, c1) = rows[bi], cols[bj]
        cut = lambda t, a, z: None if t is None else t[a:z]  # noqa: E731
        q1, m1b = cut(p1, r0, r1), cut(m1, r0, r1)
        if x2 is None and bi == bj:
            kx2, q2, m2b = None, None, None
        else:
            kx2 = (x1 if x2 is None else x2)[c0:c1]
            q2, m2b = cut(p2, c0, c1), cut(m2, c0, c1)
        return compute_block(layer, attach(
            input_kernel(x1[r0:r1], kx2, want_ntk=want_ntk, layout="full"), q1, q2, m1b, m2b))

    blocks: dict = {}
    run_in_order(block, pairs, lambda i, k: blocks.__setitem__(pairs[i], k), threads=threads)
    first = blocks[0, 0]
    if isinstance(first, list):
        return [_assemble({key: v[i] for key, v in blocks.items()}, rows, cols, x2 is None)
                for i in range(len(first))]
    return _assemble(blocks, rows, cols, x2 is None)


def second_from_first(aux, symmetric: bool):
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

