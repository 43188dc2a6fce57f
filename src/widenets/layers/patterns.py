"""Graphs and masks that travel beside the inputs: `Layer.kernel(x1, x2, pattern=, mask=)`.

* A pattern is the weighted adjacency of each input's graph, read by `Aggregate`: either a
  dense (n, P, P) tensor A with A[i, j] the weight of the edge i -> j (the output at node j is
  Σ_i x[:, :, i] A[i, j]), or an `EdgeList` (sparse: (n, E, 2) [source, target] pairs with
  optional (n, E) weights; repeated edges add up, weight-0 edges pad graphs with fewer edges).
* A mask is a boolean (n, P) tensor (or (n, *S)) of the valid positions of each input
  (True = valid); padding is excluded from attention, pooling and aggregation.

P is the number of positions of one input (L for (n, C, L), H·W for images, in row-major order).
"""

from __future__ import annotations

import math

import torch

from .._checks import describe as _describe

__all__ = ["EdgeList", "check_pattern", "check_mask", "as_dense_adjacency", "attach"]


class EdgeList:
    """A batch of sparse weighted graphs, one per input: the sparse form of `pattern=`.

    Args:
        edges: integer tensor (n, E, 2) of [source, target] node indices (0 <= index < P).
        weights: (n, E) floating edge weights, or None for weight 1 on every edge.

    The adjacency it stands for is A[i, j] = Σ over edges (i, j) of their weights, so
    `Aggregate` gives the same kernel as with the dense (n, P, P) tensor `to_dense(P)`.

    Example:
        >>> import torch, widenets as wn
        >>> g = wn.EdgeList(torch.tensor([[[0, 1], [1, 2]]]), torch.tensor([[1.0, 0.5]]))
        >>> g.to_dense(3)[0]
        tensor([[0.0000, 1.0000, 0.0000],
                [0.0000, 0.0000, 0.5000],
                [0.0000, 0.0000, 0.0000]], dtype=torch.float64)
    """

    def __init__(self, edges, weights=None):
        func = "EdgeList"
        if not isinstance(edges, torch.Tensor) or edges.dtype not in (
                torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"{func}: edges must be an integer torch.Tensor of shape (n, E, 2), "
                            f"got {_describe(edges)}")
        if edges.ndim != 3 or edges.shape[2] != 2:
            raise ValueError(f"{func}: edges must have shape (n, E, 2) ([source, target] "
                             f"pairs), got {tuple(edges.shape)}")
        if weights is not None:
            if not isinstance(weights, torch.Tensor) or not torch.is_floating_point(weights):
                raise TypeError(f"{func}: weights must be a floating torch.Tensor of shape "
                                f"(n, E) or None, got {_describe(weights)}")
            if tuple(weights.shape) != tuple(edges.shape[:2]):
                raise ValueError(f"{func}: weights must have shape (n, E) = "
                                 f"{tuple(edges.shape[:2])} like edges, got "
                                 f"{tuple(weights.shape)}")
            if not torch.isfinite(weights).all():
                raise ValueError(f"{func}: weights contain NaN or infinite entries")
        self.edges = edges.long()
        self.weights = weights

    def __len__(self) -> int:
        return self.edges.shape[0]

    def __getitem__(self, rows) -> EdgeList:
        return EdgeList(self.edges[rows], None if self.weights is None else self.weights[rows])

    def edge_weights(self, dtype: torch.dtype) -> torch.Tensor:
        """(n, E) weights in `dtype` (ones when none were given)."""
        if self.weights is None:
            return torch.ones(self.edges.shape[:2], dtype=dtype, device=self.edges.device)
        return self.weights.to(dtype)

    def to_dense(self, num_nodes: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The (n, P, P) adjacency A[i, j] = Σ_{edges (i, j)} weight, P = num_nodes."""
        n = self.edges.shape[0]
        a = torch.zeros(n, num_nodes * num_nodes, dtype=dtype, device=self.edges.device)
        flat = self.edges[..., 0] * num_nodes + self.edges[..., 1]
        a.scatter_add_(1, flat, self.edge_weights(dtype))
        return a.reshape(n, num_nodes, num_nodes)

    def __repr__(self) -> str:
        return (f"EdgeList(n={self.edges.shape[0]}, edges per graph={self.edges.shape[1]}, "
                f"weighted={self.weights is not None})")


def check_pattern(p, *, n: int, positions: int, func: str, arg: str, dtype: torch.dtype):
    """Validate one input set's pattern: a dense (n, P, P) floating tensor (cast to dtype) or a
    sparse `EdgeList` / integer (n, E, 2) tensor (returned as an EdgeList)."""
    if isinstance(p, torch.Tensor) and not torch.is_floating_point(p) and p.dtype != torch.bool:
        p = EdgeList(p)
    if isinstance(p, EdgeList):
        if p.edges.shape[0] != n:
            raise ValueError(f"{func}: {arg} must hold one graph per input ({n}), got an "
                             f"EdgeList of {p.edges.shape[0]} graphs")
        if p.edges.numel() and (int(p.edges.min()) < 0 or int(p.edges.max()) >= positions):
            raise ValueError(f"{func}: {arg} node indices must lie in [0, {positions}) (the "
                             f"inputs have {positions} positions), got indices from "
                             f"{int(p.edges.min())} to {int(p.edges.max())}")
        return p
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{func}: {arg} must be an (n, P, P) adjacency tensor, an integer "
                        f"(n, E, 2) edge tensor or a widenets.EdgeList, got {_describe(p)}")
    if tuple(p.shape) != (n, positions, positions):
        raise ValueError(f"{func}: {arg} must be an adjacency of shape (n, P, P) = "
                         f"({n}, {positions}, {positions}) for these inputs, got "
                         f"{tuple(p.shape)}")
    if not torch.isfinite(p).all():
        raise ValueError(f"{func}: {arg} contains NaN or infinite entries")
    return p.to(dtype)


def check_mask(m, *, n: int, spatial: tuple[int, ...], func: str, arg: str) -> torch.Tensor:
    """Validate one input set's mask (boolean (n, P) or (n, *S), True = valid); returns it as
    (n, P) with at least one valid position per input."""
    positions = math.prod(spatial)
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
        raise TypeError(f"{func}: {arg} must be a boolean torch.Tensor of valid positions "
                        f"(n, P), got {_describe(m)}")
    if tuple(m.shape) not in ((n, positions), (n, *spatial)):
        raise ValueError(f"{func}: {arg} must have shape (n, P) = ({n}, {positions}) or "
                         f"(n, *S) = {(n, *spatial)}, got {tuple(m.shape)}")
    m = m.reshape(n, positions)
    empty = (~m.any(1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"{func}: {arg} has no valid position for input(s) "
                         f"{empty[:5].tolist()}; every input needs at least one True entry")
    return m


def as_dense_adjacency(p, positions: int, dtype: torch.dtype) -> torch.Tensor:
    """The (n, P, P) adjacency of a pattern (dense tensors pass through)."""
    return p.to_dense(positions, dtype) if isinstance(p, EdgeList) else p.to(dtype)


def attach(k, pattern1=None, pattern2=None, mask1=None, mask2=None):
    """The input Kernel `k` with the patterns and masks of its inputs attached (no copies).

    Inputs with identical features but different graphs or masks are different inputs: the
    identical-input record (`Kernel.same_input`, made from the features alone) is dropped, so
    that no layer writes self-pair values onto pairs whose outputs differ after Aggregate,
    attention or masked pooling (the input kernel itself is unchanged: equal features give
    equal entries)."""
    if pattern1 is None and mask1 is None:
        return k
    return k.replace(pattern1=pattern1, pattern2=pattern2, mask1=mask1, mask2=mask2,
                     same_input=None)
