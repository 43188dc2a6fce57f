"""The native engine on images: a chain of Conv, ABRelu, pooling, Flatten and Dense layers
computed one input pair at a time, entirely in cache (docs/math/native-conv.md).

For each pair (x1_i, x2_j) the compiled loop (`widenets.layers._native`, `wn_spatial_*`)
builds the input kernel K(p, p') = Σ_c x_c(p) x'_c(p') / C from the two images, carries the
position-pair tensor of the NNGP and the NTK (P x P entries, the full layout; P entries, the
diagonal layout of Flatten readouts) through every layer in scratch buffers and writes the
network's two output numbers. Nothing of size n1 x n2 x P² is ever in memory.

The ABRelu of a pair needs the variances K(x_i, x_i)(p, p) of its two inputs at that layer:
the self pairs (i, i) run first (`plan`, then `compute` with self=1), each recording the
factors 1/√v(p) and √v(p) of every ABRelu, and their outputs are the variances (cov1, cov2)
and the diagonal of a symmetric kernel. The other pairs then run in strips on the block
threads (`widenets._parallel`), j > i only for x2 = x1 (mirrored: exact symmetry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._parallel import run_in_order, spans
from ..kernel import Kernel
from .activations import ABRelu, Activation
from .base import new_source
from .combinators import Repeat, Serial
from .conv import Conv
from .dense import Dense
from .pooling import AvgPool, Flatten, GlobalAvgPool, GlobalSumPool

__all__ = ["SpatialPlan", "plan", "compute", "output_kernel", "native_abrelu", "native_dense",
           "flat_layers",
           "TASK_ENTRIES"]

#: per stage: int64 and double fields (the C++ NI, ND)
_NI, _ND = 24, 6
_CONV, _RELU, _POOL, _GLOBAL, _DIAG, _DENSE = range(6)
#: position-pair entries per task of the pair loop (a strip of pairs; cache-sized work, a few
#: milliseconds, many tasks per thread)
TASK_ENTRIES = 1 << 21


def native_dense(lay) -> bool:
    """A Dense layer the native loops compute: its own kernel map, number hyperparameters."""
    return isinstance(lay, Dense) and type(lay).apply_kernel is Dense.apply_kernel \
        and not isinstance(lay.w_std, torch.Tensor) and not isinstance(lay.b_std, torch.Tensor)


def native_abrelu(lay) -> bool:
    """An ABRelu (Relu, LeakyRelu, Abs) with a != b and number hyperparameters, whose kernel
    maps are ABRelu's own."""
    return isinstance(lay, ABRelu) and type(lay).apply_kernel is Activation.apply_kernel \
        and type(lay).t_and_tdot is ABRelu.t_and_tdot \
        and type(lay).t_diag is ABRelu.t_diag and type(lay).tdot_diag is ABRelu.tdot_diag \
        and not isinstance(lay.a, torch.Tensor) and not isinstance(lay.b, torch.Tensor) \
        and lay.a != lay.b


def flat_layers(layer) -> list | None:
    """The network as a flat list of layers (nested Serial and Repeat flattened)."""
    if isinstance(layer, Serial):
        out = []
        for lay in layer.layers:
            sub = flat_layers(lay)
            if sub is None:
                return None
            out += sub
        return out
    if isinstance(layer, Repeat):
        sub = flat_layers(layer.layer)
        return None if sub is None else sub * layer.n
    return [layer]


@dataclass
class SpatialPlan:
    """The stages of a network for the native loop, and what the eager layers would report."""
    ints: torch.Tensor          # (stages, _NI) int64
    prm: torch.Tensor           # (stages, _ND) float64
    fstride: int                # factors per input: Σ over ABRelu layers of 2 P
    cap: int                    # entries of the largest tensor along the way
    channels: int
    gaussian: bool
    weighted: bool              # a Conv or Dense (new randomness) in the chain


def _pad3(t, fill: int = 1):
    """Three axes: leading axes of size 1 (window 1, stride 1, `fill` = 0 for the padding)."""
    return (fill,) * (3 - len(t)) + tuple(t)


def plan(layer, spatial: tuple, channels: int, full: bool) -> SpatialPlan | None:
    """The native stages of `layer` on inputs of `channels` x `spatial`, in the full layout
    (all position pairs) or the diagonal one; None when a layer is not covered (the caller
    computes the kernel eagerly, which also raises the eager errors)."""
    layers = flat_layers(layer)
    if not layers or not 1 <= len(spatial) <= 3:
        return None
    shape: tuple | None = tuple(spatial)
    p0 = math.prod(spatial)
    cap = p0 * p0 if full else p0
    gaussian, weighted = False, False
    ints, prm = [], []
    fstride = 0
    for lay in layers:
        row = [0] * _NI
        vals = [0.0] * _ND
        if shape is not None:
            row[1:4] = _pad3(shape)
        if isinstance(lay, Conv) and type(lay).apply_kernel is Conv.apply_kernel:
            if shape is None or isinstance(lay.w_std, torch.Tensor) \
                    or isinstance(lay.b_std, torch.Tensor):
                return None
            try:
                window, stride, pads = lay._geometry(shape, "Conv.kernel")
            except ValueError:
                return None
            out = tuple(p[2] for p in pads)
            w = lay.w_std ** 2 / math.prod(window)         # docs/math.md §conv
            b = (lay.b_std or 0.0) ** 2
            if lay.parameterization == "standard":
                vals[:5] = (w, b, float(channels), 0.0 if lay.b_std is None else 1.0, w)
            else:
                vals[:5] = (w, b, w, b, w)
            row[0] = _CONV
            row[4:7], row[7:10], row[10:13] = _pad3(out), _pad3(window), _pad3(stride)
            row[13:16] = _pad3(tuple(p[0] for p in pads), 0)
            row[16] = int(lay._padding == "CIRCULAR")
            cap = max(cap, _peak(row, full))
            shape, channels, gaussian, weighted = out, lay.out_channels, True, True
        elif native_abrelu(lay):
            if not gaussian:
                return None              # the eager engine raises its error
            p = 1 if shape is None else math.prod(shape)
            a, b = lay.a, lay.b
            s2, ab2 = a * a + b * b, 2 * a * b
            vals[:3] = (s2 / 2, (ab2 - s2) / (2 * math.pi), (s2 - ab2) / (2 * math.pi))
            row[0], row[17] = _RELU, fstride
            row[4:7] = row[1:4] if shape is not None else [1, 1, 1]
            row[1:4] = row[4:7]
            fstride += 2 * p
            gaussian = False
        elif isinstance(lay, AvgPool) and type(lay).apply_kernel is AvgPool.apply_kernel:
            if shape is None or not full:
                return None
            try:
                window, stride, pads = lay._geometry(shape, f"{lay.name}.kernel")
            except ValueError:
                return None
            out = tuple(p[2] for p in pads)
            row[0] = _POOL
            row[4:7], row[7:10], row[10:13] = _pad3(out), _pad3(window), _pad3(stride)
            row[13:16] = _pad3(tuple(p[0] for p in pads), 0)
            row[16] = int(lay._padding == "CIRCULAR")
            vals[0] = 1.0 / math.prod(window) ** 2 if lay._normalize else 1.0
            cap = max(cap, _peak(row, full))
            shape = out
        elif type(lay).apply_kernel in (GlobalAvgPool.apply_kernel, GlobalSumPool.apply_kernel) \
                and isinstance(lay, (GlobalAvgPool, GlobalSumPool)):
            if shape is None or not full:
                return None
            p = math.prod(shape)
            row[0], row[4:7] = _GLOBAL, [1, 1, 1]
            vals[0] = float(p * p) if isinstance(lay, GlobalAvgPool) else 1.0
            shape = None
        elif isinstance(lay, Flatten) and type(lay).apply_kernel is Flatten.apply_kernel:
            if shape is None:
                continue                 # Flatten of flat features: the identity
            p = math.prod(shape)
            row[0], row[4:7] = _DIAG, [1, 1, 1]
            vals[0] = float(p)
            channels *= p
            shape = None
        elif native_dense(lay):
            if shape is not None:
                return None              # Dense on positions: eager
            w2, b2 = lay.w_std ** 2, (lay.b_std or 0.0) ** 2     # docs/math.md §dense
            if lay.parameterization == "ntk":
                vals[:5] = (w2, b2, w2, b2, w2)
            else:
                vals[:5] = (w2, b2, float(channels), 0.0 if lay.b_std is None else 1.0, w2)
            row[0], row[1:4], row[4:7] = _DENSE, [1, 1, 1], [1, 1, 1]
            channels, gaussian, weighted = lay.out, True, True
        else:
            return None
        ints.append(row)
        prm.append(vals)
    if shape is not None:
        return None                      # a spatial output: eager
    return SpatialPlan(torch.tensor(ints, dtype=torch.int64),
                       torch.tensor(prm, dtype=torch.float64), max(fstride, 1), cap, channels,
                       gaussian, weighted)


def _peak(row, full: bool) -> int:
    """The largest tensor of a conv or pooling stage's axis passes (entries)."""
    cur = list(row[1:4])
    peak = math.prod(cur)
    for i in range(3):
        cur[i] = row[4 + i]
        peak = max(peak, math.prod(cur))
    if not full:
        return peak
    # pooling sums x1's axes first (x2's still at the input size): at most in x out
    return max(peak * peak, math.prod(row[1:4]) * math.prod(row[4:7]))


def _row_tasks(n1: int, n2: int, symmetric: bool, chunk: int) -> list:
    """[(r0, r1), ...]: consecutive rows of x1 holding about `chunk` pairs each (the pairs
    j > i of each row for a symmetric kernel, all n2 otherwise)."""
    out, r0, count = [], 0, 0
    for i in range(n1):
        count += (n2 - 1 - i) if symmetric else n2
        if count >= chunk or i == n1 - 1:
            if count or not out:
                out.append((r0, i + 1))
            else:
                out[-1] = (out[-1][0], i + 1)
            r0, count = i + 1, 0
    return out


def compute(lib, pl: SpatialPlan, x1: torch.Tensor, x2: torch.Tensor | None, *,
            want_ntk: bool, full: bool, threads: int):
    """(nngp, ntk, cov1, cov2, ntk_self1, bad) of the planned network: the (n1, n2) kernels
    (exactly symmetric with the self-pair values on the diagonal for x2 = None), the per-input
    output variances, the self-pair NTK of x1, and whether a value is not finite."""
    dtype = x1.dtype
    n1, c = x1.shape[:2]
    p0 = math.prod(x1.shape[2:])
    a = x1.reshape(n1, c, p0).contiguous()
    b = None if x2 is None else x2.reshape(x2.shape[0], c, p0).contiguous()
    fn = lib.wn_spatial_f32 if dtype == torch.float32 else lib.wn_spatial_f64
    chunk = max(1, TASK_ENTRIES // (p0 * p0 if full else p0))
    nst = pl.ints.shape[0]
    bad = []

    def pairs(pi, pj, xa, xb, fa, fb, self_):
        """The loop on the pairs (pi[q], pj[q]): (NNGP, NTK or None, non-finite flag)."""
        ok = torch.empty(pi.numel(), dtype=dtype)
        ot = torch.empty(pi.numel(), dtype=dtype) if want_ntk else None
        flag = fn(pi.numel(), pi.data_ptr(), pj.data_ptr(), xa.data_ptr(), xb.data_ptr(), c,
                  p0, int(full), nst, pl.ints.data_ptr(), pl.prm.data_ptr(), fa.data_ptr(),
                  fb.data_ptr(), pl.fstride, self_, ok.data_ptr(),
                  None if ot is None else ot.data_ptr(), pl.cap)
        return ok, ot, flag

    def selfs(x):
        """The self pairs (i, i): the factors of every ABRelu, the output variances and NTK."""
        n = x.shape[0]
        f = torch.empty((n, pl.fstride), dtype=dtype)
        k = torch.empty(n, dtype=dtype)
        t = torch.empty(n, dtype=dtype) if want_ntk else None
        idx = torch.arange(n, dtype=torch.int64)

        def task(rows):
            i = idx[rows[0]:rows[1]]
            return rows, pairs(i, i, x, x, f, f, 1)

        def consume(_, out):
            (r0, r1), (ok, ot, flag) = out
            k[r0:r1] = ok
            if t is not None:
                t[r0:r1] = ot
            bad.append(flag)

        run_in_order(task, spans(n, chunk), consume, threads=threads)
        return f, k, t

    f1, cov1, tself1 = selfs(a)
    f2, cov2 = (f1, None) if b is None else selfs(b)[:2]
    n2 = n1 if b is None else b.shape[0]
    nngp = torch.empty((n1, n2), dtype=dtype)
    ntk = torch.empty((n1, n2), dtype=dtype) if want_ntk else None
    cols = torch.arange(n2, dtype=torch.int64)

    def task(rows):
        r0, r1 = rows
        ii = torch.arange(r0, r1, dtype=torch.int64)[:, None].expand(r1 - r0, n2)
        jj = cols[None, :].expand(r1 - r0, n2)
        if b is None:
            keep = jj > ii                            # j > i only, mirrored
            ii, jj = ii[keep], jj[keep]
        else:
            ii, jj = ii.reshape(-1), jj.reshape(-1)
        ii, jj = ii.contiguous(), jj.contiguous()
        return ii, jj, pairs(ii, jj, a, a if b is None else b, f1, f2, 0)

    def consume(_, out):
        ii, jj, (ok, ot, flag) = out
        for t, v in ((nngp, ok), (ntk, ot)):
            if t is not None:
                t[ii, jj] = v
                if b is None:
                    t[jj, ii] = v
        bad.append(flag)

    run_in_order(task, _row_tasks(n1, n2, b is None, chunk), consume, threads=threads)
    if b is None:
        nngp.diagonal().copy_(cov1)
        if ntk is not None:
            ntk.diagonal().copy_(tself1)
    return nngp, ntk, cov1, cov2, tself1, any(bad)


def output_kernel(pl: SpatialPlan, result, symmetric: bool) -> Kernel:
    """The Kernel of `compute`'s result, with the fields the eager layers would give it."""
    nngp, ntk, cov1, cov2, _, _ = result
    return Kernel(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, x1_is_x2=symmetric,
                  is_gaussian=pl.gaussian, is_input=False, channels=pl.channels,
                  sources=new_source() if pl.weighted else frozenset())
