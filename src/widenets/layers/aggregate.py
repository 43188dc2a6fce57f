"""Aggregation of a graph neural network (Du et al. 2019, GNTK; NT's `stax.Aggregate`).

Node features are channels-first (n, C, P) (nodes on the last axis; images' H·W positions also
work, in row-major order), and each input has its own weighted adjacency A (P x P), passed as
`net.kernel(x1, x2, pattern=(a1, a2))`. The layer has no parameters:

    y[:, :, j] = Σ_i x[:, :, i] A[i, j]

so with K(i, i') the kernel of the node features of inputs x1 and x2 (docs/math.md §aggregate)

    K'(j, j') = Σ_{i, i'} A1[i, j] K(i, i') A2[i', j'] = (A1ᵀ K A2)(j, j'),

the same linear map for the NTK (Θ' = A1ᵀ Θ A2) and for the self kernels (cov1' = A1ᵀ cov1 A1).
A mask zeroes the rows of padded nodes (they send nothing). The sparse form (an `EdgeList`)
computes the same sums as sparse (CSR) products: O(E·P) per input pair instead of O(P³).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..kernel import Kernel
from .base import FULL, Layer
from .patterns import EdgeList, check_mask, check_pattern

__all__ = ["Aggregate", "AggregateModule"]


def _flat_positions(t: torch.Tensor, n_batch: int, s: int) -> torch.Tensor:
    """(*batch, *S, *S) -> (*batch, P, P)."""
    p = math.prod(t.shape[n_batch:n_batch + s])
    return t.reshape(*t.shape[:n_batch], p, p)


def _masked_dense(a: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    return a if m is None else a * m[:, :, None].to(a.dtype)


def _edges(p: EdgeList, m: torch.Tensor | None, dtype):
    """(source (n, E), target (n, E), weights (n, E)) with padded sources weighted 0."""
    src, dst = p.edges[..., 0], p.edges[..., 1]
    w = p.edge_weights(dtype)
    if m is not None:
        w = w * torch.gather(m, 1, src).to(dtype)
    return src, dst, w


def _left(t: torch.Tensor, p, m, axis: int, cache: dict | None = None) -> torch.Tensor:
    """Apply Aᵀ to axis `axis` of t (batch axis 0 of t matches the graphs): out[.., j, ..] =
    Σ_i A[i, j] t[.., i, ..], dense or sparse. `cache` keeps the sparse matrix of a graph
    batch for the other products of the same layer (NNGP, NTK, self kernels)."""
    if not isinstance(p, EdgeList):
        a = _masked_dense(p, m)                                   # (n, P, P)
        t = t.movedim(axis, -1)                                   # (n, ..., P_i)
        shape = t.shape
        out = torch.bmm(t.reshape(shape[0], -1, shape[-1]), a)   # Σ_i t[.., i] A[i, j]
        return out.reshape(shape).movedim(-1, axis)
    t = t.movedim(axis, 1)                                        # (n, P, ...)
    n, positions = t.shape[:2]
    rest = t.shape[2:]
    flat = t.reshape(n * positions, -1)                           # (n P, R)
    key = (id(p), id(m), positions, t.dtype)
    if cache is None or key not in cache:
        a = _block_transpose(p, m, positions, t.dtype)
        if cache is None:
            return (a @ flat).reshape(n, positions, *rest).movedim(1, axis)
        cache[key] = a
    out = cache[key] @ flat                                       # one sparse product
    return out.reshape(n, positions, *rest).movedim(1, axis)


def _block_transpose(p: EdgeList, m, positions: int, dtype) -> torch.Tensor:
    """The block-diagonal (n P, n P) sparse CSR matrix of the graphs' Aᵀ: row g P + j holds
    the weights of the edges (i, j) of graph g at column g P + i (repeated edges summed)."""
    src, dst, w = _edges(p, m, dtype)
    offset = (torch.arange(src.shape[0], device=src.device) * positions)[:, None]
    index = torch.stack([(dst + offset).reshape(-1), (src + offset).reshape(-1)])
    size = src.shape[0] * positions
    with warnings.catch_warnings():     # torch marks sparse CSR as beta
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(index, w.reshape(-1), (size, size)).coalesce() \
            .to_sparse_csr()


class AggregateModule(nn.Module):
    """y[:, :, j] = Σ_i x[:, :, i] A[i, j]; forward(x, pattern, mask=None)."""

    takes_graph = True

    def forward(self, x: torch.Tensor, pattern=None, mask=None) -> torch.Tensor:
        func = "Aggregate.module"
        if pattern is None:
            raise ValueError(f"{func}: needs the graph of each input: call module(x, pattern) "
                             f"with an (n, P, P) adjacency or a widenets.EdgeList")
        n, spatial = x.shape[0], tuple(x.shape[2:])
        positions = math.prod(spatial)
        p = check_pattern(pattern, n=n, positions=positions, func=func, arg="pattern",
                          dtype=x.dtype)
        m = None if mask is None else check_mask(mask, n=n, spatial=spatial, func=func,
                                                 arg="mask")
        flat = x.reshape(n, x.shape[1], positions)
        return _left(flat, p, m, 2).reshape(x.shape)


class Aggregate(Layer):
    """Graph aggregation: the output at node j is Σ_i x[:, :, i]·A[i, j] (no parameters).

    The graphs come with the inputs: `net.kernel(x1, x2, pattern=(a1, a2))` (or `pattern=a1`
    when x2 is None), each an (n, P, P) adjacency or a sparse `widenets.EdgeList`; the finite
    module is called as `module(x, pattern)`. Kernel: K' = A1ᵀ K A2 per input pair, on all node
    pairs (see the module docstring).

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.randn(3, 4, 6)                                 # 3 graphs, 4 features, 6 nodes
        >>> a = (torch.rand(3, 6, 6) < 0.4).double()                 # their adjacencies
        >>> net = wn.serial(wn.Dense(16), wn.Relu(), wn.Aggregate(), wn.GlobalAvgPool(),
        ...                 wn.Dense(1))
        >>> net.kernel(x, pattern=a, get="nngp").shape
        torch.Size([3, 3])
        >>> net.module((4, 6), seed=0)(x.float(), a.float()).shape
        torch.Size([3, 1])
    """

    uses_pattern = True
    accepts_mask = True
    may_zero_outputs = True      # a node without incoming edges outputs exactly 0

    def layout_need(self, need):
        return FULL

    def apply_kernel(self, k: Kernel) -> Kernel:
        func = "Aggregate.kernel"
        if isinstance(k, list):
            raise ValueError(f"{func}: expected one input, got {len(k)} branches")
        if not k.is_spatial:
            raise ValueError(f"{func}: inputs must be channels-first node features (n, C, L), "
                             f"got flat features")
        if not k.is_full_spatial:
            raise ValueError(f"{func}: aggregation needs all node pairs but got the diagonal "
                             f"layout; call net.kernel(..., layout='auto') or layout='full'")
        p1, p2 = k.patterns()
        if p1 is None:
            raise ValueError(f"{func}: needs the graph of each input: net.kernel(x1, x2, "
                             f"pattern=(a1, a2)) or pattern=a1 when x2 is None")
        m1, m2 = k.masks()
        s = k.spatial_ndim
        shape = k.nngp.shape
        cache: dict = {}    # the sparse matrices, built once for all products of this call

        def both(t):        # A1ᵀ t A2 on (n1, n2, P, P): x1's nodes on axis 2, x2's on axis 3
            if t is None:
                return None
            t = _flat_positions(t, 2, s)
            t = _left(t, p1, m1, 2, cache)
            t = _left(t.transpose(0, 1), p2, m2, 3, cache).transpose(0, 1)
            return t.reshape(shape)

        def self_pairs(c, p, m):    # A ᵀ cov A on (n, P, P)
            if c is None:
                return None
            cs = c.shape
            c = _flat_positions(c, 1, s)
            return _left(_left(c, p, m, 1, cache), p, m, 2, cache).reshape(cs)

        cov1 = self_pairs(k.cov1, p1, m1)
        cov2 = None if k.cov2 is None else self_pairs(k.cov2, p2, m2)
        out = k.replace(nngp=both(k.nngp), ntk=both(k.ntk), cov1=cov1, cov2=cov2,
                        is_input=False, is_gaussian=k.is_gaussian)
        if k.x1_is_x2:
            out.set_batch_diagonal(out.nngp, out.cov1)
        return out

    def build(self, in_shape, generator, dtype):
        if isinstance(in_shape, list) or len(in_shape) < 2:
            raise ValueError(f"Aggregate.module: in_shape must be channels-first (C, L) node "
                             f"features, got {in_shape!r}")
        return AggregateModule(), tuple(in_shape)
