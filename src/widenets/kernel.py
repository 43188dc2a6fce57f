"""The `Kernel`: infinite-width NNGP and NTK of a network's outputs, and the bookkeeping layers need.

A `Kernel` is a frozen dataclass; layers return a new one through `dataclasses.replace`.
Conventions (Lee et al. 2019, seed 002, §2.1):

* `nngp[i, j]` is the second moment E[h(x1_i) h(x2_j)] of one output unit h of the layer, averaged
  over units (for a Dense readout it is the NNGP covariance K of MATH.md §2);
* `ntk[i, j]` is the neural tangent kernel Θ(x1_i, x2_j) of one output unit (the sum over all
  parameters of products of gradients; MATH.md §2 recursion);
* `cov1[i]` = E[h(x1_i)^2] and `cov2[j]` = E[h(x2_j)^2] are the per-input variances the
  activation formulas need (T(K) depends on K(x, x), K(x', x') and K(x, x')).

Spatial layouts (convolutions) append position axes to these tensors; `broadcast_variances`
is the one place that knows how to line up the variances with the cross-covariance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

__all__ = ["Kernel"]


@dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels of one layer's outputs for inputs x1 (n1 of them) and x2 (n2).

    Attributes:
        nngp: (n1, n2) second moments E[h(x1) h(x2)] (the NNGP kernel K).
        ntk: (n1, n2) neural tangent kernel Θ, or None when only the NNGP was asked for.
        cov1: (n1,) variances K(x1_i, x1_i).
        cov2: (n2,) variances K(x2_j, x2_j); None when `x1_is_x2` (then `cov1` serves both).
        x1_is_x2: True when the kernel was asked for a single input set, x2 = x1; then nngp and
            ntk are symmetric and their diagonals equal cov1 (kept exact, not recomputed).
        is_gaussian: True when the outputs are zero-mean Gaussian processes at infinite width
            (outputs of a Dense/Conv with fresh weights, or sums of independent such). Closed
            form activations need Gaussian inputs.
        is_input: True for the raw inputs (before any layer).
        channels: the number of features (channels) of the representation: the fan-in of the
            next weight layer. Standard parameterization and FanInConcat need it.
        sources: identifiers of the fresh weight layers whose randomness makes these outputs
            Gaussian; FanInSum uses them to refuse sums of correlated branches.
        row_offset: for a block of rows r0:r0+n1 of a symmetric kernel (see `row_block`), r0:
            its self-pairs (x_i, x_i) sit at [i, r0 + i]. 0 otherwise.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    cov1: torch.Tensor
    cov2: torch.Tensor | None
    x1_is_x2: bool
    is_gaussian: bool
    is_input: bool
    channels: int
    sources: frozenset = field(default_factory=frozenset, repr=False, compare=False)
    row_offset: int = 0

    # ------------------------------------------------------------------ shapes
    @property
    def n1(self) -> int:
        return self.nngp.shape[0]

    @property
    def n2(self) -> int:
        return self.nngp.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.nngp.dtype

    def broadcast_variances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """K(x1, x1) and K(x2, x2), shaped to broadcast against `nngp`: (n1, 1) and (1, n2)."""
        cov2 = self.cov1 if self.cov2 is None else self.cov2
        return self.cov1[:, None], cov2[None, :]

    def replace(self, **changes) -> Kernel:
        """A copy with some fields changed (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def set_batch_diagonal(self, t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Write `values` (shaped like `cov1`) onto the diagonal x1_i = x2_i of `t`, in place.

        Used when x1_is_x2: the off-diagonal formulas evaluate arccos/sqrt at
        c = K12 / sqrt(K11 K22), which at c = 1 loses half the digits, while the diagonal is
        known exactly from the variances.
        """
        t.narrow(1, self.row_offset, t.shape[0]).diagonal(dim1=0, dim2=1).movedim(-1, 0) \
            .copy_(values)
        return t

    def symmetrize(self, t: torch.Tensor) -> torch.Tensor:
        """(t + tᵀ)/2 over the two batch axes: exact symmetry for x1_is_x2 kernels whose
        formula is not evaluated symmetrically (quadrature, float rounding of x xᵀ)."""
        if t.shape[0] != t.shape[1]:
            raise RuntimeError("Kernel.symmetrize needs the whole symmetric kernel, got a row "
                               "block; layers with symmetric_formula=False disable row blocks")
        return 0.5 * (t + t.transpose(0, 1))

    def row_block(self, start: int, stop: int) -> Kernel:
        """The kernel of rows start:stop of x1 against all of x2.

        Every layer map acts on each pair (x1_i, x2_j) separately given the variances, so a
        network's kernel can be computed block by block (bounded memory, cache-sized work).
        For a symmetric kernel the block keeps x1_is_x2 with `row_offset` marking its
        diagonal, and carries the full variances in cov2.
        """
        cov2 = self.cov1 if self.cov2 is None else self.cov2
        return self.replace(nngp=self.nngp[start:stop],
                            ntk=None if self.ntk is None else self.ntk[start:stop],
                            cov1=self.cov1[start:stop], cov2=cov2,
                            row_offset=self.row_offset + start if self.x1_is_x2 else 0)

    def to(self, dtype: torch.dtype) -> Kernel:
        """A copy with every tensor cast to `dtype`."""
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        return self.replace(nngp=cast(self.nngp), ntk=cast(self.ntk), cov1=cast(self.cov1),
                            cov2=cast(self.cov2))
