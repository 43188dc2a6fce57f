"""Dropout: the infinite-width kernel of a network in training mode (NT's `stax.Dropout` with
mode="train"), and its finite module, torch's `nn.Dropout`.

Convention (docs/math.md §dropout). p is the drop probability, as in torch: each unit is kept
with probability q = 1 - p and scaled by 1/q, with an independent mask for every input, every
position and every channel. For two evaluations of one unit,

    E[m m'] / q² = 1/q   when they share the mask entry (the same input at the same position),
                 = 1     otherwise,

so K(x, x)(p, p) and Θ(x, x)(p, p) gain the factor 1/(1 - p) while every other entry (distinct
inputs, or distinct positions of one input) is unchanged. "The same input" means the same row
of one batch: the diagonal of `kernel(x)` (x2 = None); in `kernel(x1, x2)` every pair counts as
two distinct inputs, also where x1[i] equals x2[j]. The output is no longer Gaussian (a mask
times a Gaussian), so a closed-form activation right after Dropout refuses it; put a Dense or
Conv in between.
"""

from __future__ import annotations

import math

from torch import nn

from ..kernel import Kernel, pair_diagonal
from .base import Layer

__all__ = ["Dropout"]


class Dropout(Layer):
    """Dropout with drop probability p, in training mode (NT's `stax.Dropout(1 - p, "train")`).

    Kernel: K(x, x) and Θ(x, x) (equal positions) are multiplied by 1/(1 - p); entries between
    distinct inputs or positions are unchanged (see the module docstring for the convention:
    an independent mask for every input). The output is not Gaussian.

    The finite module is `torch.nn.Dropout(p)`, in training mode as every module `module()`
    returns; call `.eval()` on it for the deterministic network (whose kernel is that of the
    network without Dropout).

    Args:
        p: the probability of dropping a unit, 0 <= p < 1.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(4), wn.Dropout(0.5))
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> net.kernel(x, get="nngp")                 # diagonal doubled
        tensor([[1.0000, 0.5000],
                [0.5000, 2.0000]], dtype=torch.float64)
    """

    def __init__(self, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) \
                or not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be a drop probability in [0, 1), got {p!r}")
        self.p = float(p)

    def apply_kernel(self, k: Kernel) -> Kernel:
        if isinstance(k, list):
            raise ValueError(f"Dropout.kernel: expected one input, got {len(k)} branches; "
                             f"merge them with FanInSum() or FanInConcat() first")
        gain = 1.0 / (1.0 - self.p)
        full = k.is_full_spatial

        def self_pairs(cov):                 # the variances: equal positions of one input
            if cov is None:
                return None
            cov = cov.clone()
            (pair_diagonal(cov, 1) if full else cov).mul_(gain)
            return cov

        def batch_diagonal(t):               # entries x1_i = x2_i at equal positions
            if t is None:
                return None
            t = t.clone()
            if k.x1_is_x2:
                d = t.narrow(1, k.row_offset, t.shape[0]).diagonal(dim1=0, dim2=1).movedim(-1, 0)
                (pair_diagonal(d, 1) if full else d).mul_(gain)
            return t

        return k.replace(nngp=batch_diagonal(k.nngp), ntk=batch_diagonal(k.ntk),
                         cov1=self_pairs(k.cov1), cov2=self_pairs(k.cov2), is_gaussian=False,
                         is_input=False)

    def build(self, in_shape, generator, dtype):
        if isinstance(in_shape, list):
            raise ValueError(f"Dropout.module: expected one input, got {len(in_shape)} "
                             f"branches")
        return nn.Dropout(self.p), in_shape

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
