"""The kernel of the raw inputs, the start of every `net.kernel` (the inputs are checked by
`widenets._checks.as_input_tensor` first). Below every other module of `widenets.layers`: it
imports none of them."""

from __future__ import annotations

import contextlib
import math

import torch

from .._parallel import run_in_order, spans, torch_threads
from ..kernel import Kernel

__all__ = ["input_kernel", "DIAGONAL", "FULL"]

#: spatial layout needs (see `Layer.layout_need`), ordered: FULL serves DIAGONAL too
DIAGONAL, FULL = 1, 2


def input_kernel(x1: torch.Tensor, x2: torch.Tensor | None, *, want_ntk: bool,
                 layout: str | None = None) -> Kernel:
    """The kernel of the raw inputs: second moments averaged over features (channels).

    For x of shape (n, d): nngp = x1 x2ᵀ / d, so that a first Dense layer gives
    K¹ = σw² ⟨x, x'⟩ / n0 + σb² (docs/math.md §input). The input NTK is zero (no parameters yet).

    For channels-first x of shape (n, C, *S) (1 to 3 spatial axes) the average is over the
    C channels at each position pair: K(p, p') = Σ_c x_c(p) x'_c(p') / C, kept in the layout
    asked for: "diagonal" (n1, n2, *S), or "full" (n1, n2, *S, *S) (see `widenets.kernel`).
    """
    if x1.ndim != 2:
        return _spatial_input_kernel(x1, x2, want_ntk=want_ntk, layout=layout)
    threads = torch.get_num_threads()
    # the products run as strips on `threads` one-thread workers; the small steps on this
    # thread with one torch thread (a 2-thread parallel region per small operation took 4x
    # longer than the whole one-thread input kernel next to other jobs, N = 1000)
    with torch_threads(1) if x1.device.type == "cpu" else contextlib.nullcontext():
        return _flat_input_kernel(x1, x2, want_ntk, threads)


def _flat_input_kernel(x1, x2, want_ntk: bool, threads: int) -> Kernel:
    d = x1.shape[1]
    cov1 = (x1 * x1).sum(1) / d
    if x2 is None:
        nngp = symmetric_gram(x1 / d, x1, threads=threads)
        cov2 = None
    else:
        nngp = gram_rows(x1 / d, x2, threads=threads)
        cov2 = (x2 * x2).sum(1) / d
    # the input NTK is zero: a broadcast view (layers only read it), no memory pass
    zero = torch.zeros((), dtype=nngp.dtype, device=nngp.device).expand(nngp.shape)
    k = Kernel(nngp=nngp, ntk=zero if want_ntk else None, cov1=cov1,
               cov2=cov2, x1_is_x2=x2 is None, is_gaussian=False, is_input=True, channels=d,
               sources=frozenset())
    if x2 is None:
        k.set_batch_diagonal(nngp, cov1)
    return _mark_same_inputs(k, x1, x2)


#: edge of the tiles `symmetrize_` transposes (cache-sized: a whole-matrix t + t.T reads one
#: operand across rows, 20x slower at N = 4000)
_SYM_TILE = 256


def symmetrize_(t: torch.Tensor) -> torch.Tensor:
    """t <- (t + tᵀ)/2 in place for a square matrix, tile by tile: entry (i, j) becomes
    (t[i, j] + t[j, i]) * 0.5, bitwise the same as torch.add(t, t.T).mul_(0.5)."""
    n = t.shape[0]
    for i in range(0, n, _SYM_TILE):
        a = t[i:i + _SYM_TILE, i:i + _SYM_TILE]
        a.copy_(torch.add(a, a.T).mul_(0.5))
        for j in range(i + _SYM_TILE, n, _SYM_TILE):
            a, b = t[i:i + _SYM_TILE, j:j + _SYM_TILE], t[j:j + _SYM_TILE, i:i + _SYM_TILE]
            s = torch.add(a, b.T).mul_(0.5)
            a.copy_(s)
            b.copy_(s.T)
    return t


#: rows per strip of `symmetric_gram`
_GRAM_STRIP = 256


def symmetric_gram(a: torch.Tensor, b: torch.Tensor, *, threads: int) -> torch.Tensor:
    """a bᵀ for two (n, d) matrices whose product is symmetric in exact arithmetic (a = x/d,
    b = x), exactly symmetric: by row strips I, each computing only its columns J >= I (about
    half the multiply-adds of a bᵀ) and writing its mirror image below the diagonal; the
    strips' diagonal tiles are symmetrized, (t + tᵀ)/2 as in `symmetrize_`. The strips are
    independent tasks on `threads` one-thread workers (`widenets._parallel`: no barrier per
    operation). On CUDA, and for a single strip, a bᵀ symmetrized."""
    n = a.shape[0]
    if n <= _GRAM_STRIP or a.device.type != "cpu":
        return symmetrize_(a @ b.T)       # BLAS need not return a symmetric Gram
    out = a.new_empty((n, n))
    bounds = spans(n, _GRAM_STRIP)

    def strip(rows):                      # writes rows r0:r1 from r0 on and their mirror
        r0, r1 = rows
        blk = a[r0:r1] @ b[r0:].T
        tile = blk[:, :r1 - r0]
        out[r0:r1, r0:r1] = torch.add(tile, tile.T).mul_(0.5)
        out[r0:r1, r1:] = blk[:, r1 - r0:]
        out[r1:, r0:r1] = blk[:, r1 - r0:].T

    run_in_order(strip, bounds, lambda i, r: None, threads=threads)
    return out


#: features `_row_hashes` reads (evenly spread): rows that differ only elsewhere collide and
#: take the exact path
_HASH_FEATURES = 64


def _row_hashes(rows: torch.Tensor) -> torch.Tensor:
    """An int64 hash per row, equal for rows of equal values: Σ_f bits(x_f + 0) w_f over
    `_HASH_FEATURES` spread features, with fixed odd random weights w, in wrap-around integer
    arithmetic (exact in any order of summation; + 0 maps -0.0 to +0.0, which compares
    equal)."""
    if rows.shape[1] > _HASH_FEATURES:
        rows = rows[:, torch.linspace(0, rows.shape[1] - 1, _HASH_FEATURES).long()]
    bits = (rows + 0.0).contiguous()
    bits = bits.view(torch.int64 if bits.element_size() == 8 else torch.int32 if
                     bits.element_size() == 4 else torch.int16).to(torch.int64)
    g = torch.Generator(device="cpu").manual_seed(0x5EED)
    w = torch.randint(-(1 << 62), 1 << 62, (rows.shape[1],), generator=g, dtype=torch.int64)
    return (bits * (w.to(bits.device) | 1)).sum(1)


def gram_rows(a: torch.Tensor, b: torch.Tensor, *, threads: int) -> torch.Tensor:
    """a bᵀ by row strips of a on `threads` one-thread workers (one product on CUDA)."""
    n = a.shape[0]
    if n <= _GRAM_STRIP or a.device.type != "cpu" or threads <= 1:
        return a @ b.T
    out = a.new_empty((n, b.shape[0]))
    bounds = spans(n, _GRAM_STRIP)

    def strip(rows):
        torch.matmul(a[rows[0]:rows[1]], b.T, out=out[rows[0]:rows[1]])

    run_in_order(strip, bounds, lambda i, r: None, threads=threads)
    return out


def _mark_same_inputs(k: Kernel, x1, x2) -> Kernel:
    """Record the pairs of identical inputs (Kernel.same_input) and give them exactly the
    self-pair kernel, so that c = 1 holds exactly for them (docs/math.md §near-diagonal).
    Rows whose hashes all differ are all distinct (equal rows have equal hashes); otherwise
    rows are grouped by torch.unique (a sort: O(n log n) row comparisons)."""
    rows = x1.reshape(x1.shape[0], -1) if x2 is None else \
        torch.cat([x1.reshape(x1.shape[0], -1), x2.reshape(x2.shape[0], -1)])
    if rows.shape[0] < 2:
        return k
    if torch.unique(_row_hashes(rows)).shape[0] == rows.shape[0]:
        return k                      # all rows distinct: no pair to mark (no n1 x n2 mask)
    distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if distinct.shape[0] == rows.shape[0]:
        return k
    id1 = inverse[:x1.shape[0]]
    id2 = id1 if x2 is None else inverse[x1.shape[0]:]
    mask = id1[:, None] == id2[None, :]
    if x2 is None:
        mask.fill_diagonal_(False)
    if not bool(mask.any()):
        return k
    k = k.replace(same_input=mask)
    k.write_same_input(k.nngp, k.cov1)
    return k


#: inputs with at most this many channels get their kernel by elementwise passes (exact
#: agreement of the layouts); wider inputs by matrix products
_LOOP_CHANNELS = 32


def _spatial_input_kernel(x1, x2, *, want_ntk: bool, layout: str | None) -> Kernel:
    if x1.ndim > 5 or layout not in ("diagonal", "full"):
        raise ValueError(f"kernel: inputs must be (n, features) or channels-first (n, C, L), "
                         f"(n, C, H, W), (n, C, D, H, W), got shape {tuple(x1.shape)}")
    n1, c = x1.shape[:2]
    spatial = tuple(x1.shape[2:])
    p = math.prod(spatial)
    a = x1.reshape(n1, c, p)
    b = a if x2 is None else x2.reshape(x2.shape[0], c, p)
    n2 = b.shape[0]
    full = layout == "full"
    if c <= _LOOP_CHANNELS:
        # Σ_c as c elementwise passes, in the same order in both layouts, so that the diagonal
        # layout is exactly the diagonal of the full one
        def pairs(u, v, batch):
            shape_u = (u.shape[0], 1, p, 1) if (batch and full) else \
                (u.shape[0], 1, p) if batch else (u.shape[0], p, 1) if full else (u.shape[0], p)
            shape_v = (1, v.shape[0], 1, p) if (batch and full) else \
                (1, v.shape[0], p) if batch else (v.shape[0], 1, p) if full else (v.shape[0], p)
            acc = None
            for ch in range(c):
                term = u[:, ch].reshape(shape_u) * v[:, ch].reshape(shape_v)
                acc = term if acc is None else acc.add_(term)
            return acc / c
    else:
        def pairs(u, v, batch):
            if full and not batch:      # self pairs (n, P, P)
                return torch.bmm(u.transpose(1, 2), v) / c
            if full:        # K(p, p') = Σ_c x_c(p) x'_c(p') / C: (n1 P, C) @ (C, n2 P)
                ut = u.transpose(1, 2).reshape(-1, c)
                vt = v.transpose(1, 2).reshape(-1, c)
                out = (ut @ vt.T / c).reshape(u.shape[0], p, v.shape[0], p)
                return out.transpose(1, 2).contiguous()
            if batch:       # K(p, p) batched over positions: (P, n1, C) @ (P, C, n2)
                return (torch.bmm(u.permute(2, 0, 1), v.permute(2, 1, 0)) / c).permute(
                    1, 2, 0).contiguous()
            return (u * v).sum(1) / c
    tail = (*spatial, *spatial) if full else spatial
    nngp = pairs(a, b, True).reshape(n1, n2, *tail)
    var = lambda x: pairs(x, x, False).reshape(x.shape[0], *tail)  # noqa: E731
    cov1 = var(a)
    cov2 = None if x2 is None else var(b)
    k = Kernel(nngp=nngp, ntk=torch.zeros_like(nngp) if want_ntk else None, cov1=cov1,
               cov2=cov2, x1_is_x2=x2 is None, is_gaussian=False, is_input=True, channels=c,
               sources=frozenset(), diagonal_spatial=layout == "diagonal")
    if x2 is None:
        k.set_batch_diagonal(nngp, cov1)
    return _mark_same_inputs(k, x1, x2)

