"""The `Kernel`: infinite-width NNGP and NTK of a network's outputs, and their bookkeeping.

A `Kernel` is a frozen dataclass; layers return a new one through `dataclasses.replace`.
Conventions (Lee et al. 2019, seed 002, §2.1):

* `nngp[i, j]` is the second moment E[h(x1_i) h(x2_j)] of one output unit h of the layer, averaged
  over units (for a Dense readout it is the NNGP covariance K of docs/math.md §dense);
* `ntk[i, j]` is the neural tangent kernel Θ(x1_i, x2_j) of one output unit (the sum over all
  parameters of products of gradients; docs/math.md §dense recursion);
* `cov1[i]` = E[h(x1_i)^2] and `cov2[j]` = E[h(x2_j)^2] are the per-input variances the
  activation formulas need (T(K) depends on K(x, x), K(x', x') and K(x, x')).

Spatial layouts (convolutions, docs/math.md §conv) append position axes to these tensors, for inputs
with s spatial axes S = (S_1, ..., S_s) (images: S = (H, W)):

* diagonal layout (`diagonal_spatial=True`): nngp/ntk are (n1, n2, *S), the pairs (p, p) of
  equal positions only, and cov1 is (n1, *S), the variance at each position. Enough for
  networks read out by `Flatten` (cost linear in pixels).
* full layout (`diagonal_spatial=False` with spatial axes): nngp/ntk are (n1, n2, *S, *S), all
  position pairs (p, p'), first the positions of x1, then those of x2; cov1 is (n1, *S, *S),
  each input's kernel with itself (pooling mixes positions, so later variances need the
  off-diagonal self pairs). Needed by pooling (cost quadratic in pixels).

`broadcast_variances`, `map_variances` and `set_batch_diagonal` are the one place that knows
how to line up the variances with the cross-covariance, so activations work on every layout.
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
        nngp: (n1, n2) second moments E[h(x1) h(x2)] (the NNGP kernel K); (n1, n2, *S) or
            (n1, n2, *S, *S) in the spatial layouts.
        ntk: neural tangent kernel Θ shaped like nngp, or None when only the NNGP was asked for.
        cov1: (n1,) variances K(x1_i, x1_i); (n1, *S) per position in the diagonal layout;
            (n1, *S, *S) self-pair kernels K(x1_i, x1_i)(p, p') in the full layout.
        cov2: the same for x2; None when `x1_is_x2` (then `cov1` serves both).
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
        diagonal_spatial: True for the diagonal spatial layout (see the module docstring);
            irrelevant (False) for flat features.
        same_input: (n1, n2) bool mask of the pairs whose inputs are identical (x1_i == x2_j
            bitwise), or None when there are none. Identical inputs stay identical through every
            layer, so activations write the exact diagonal values on these pairs instead of
            evaluating arccos/sqrt at c ≈ 1 (docs/math.md §near-diagonal).
        gamma_term: set by `LayerNorm(affine=True)`: (g, sources, channels) meaning that the
            NTK of every channel contains g·y(x)y(x') from the γ gradients, correlated with the
            channel value y itself (docs/math.md §layernorm-affine). Valid while `sources` and
            `channels` are those recorded; an activation consumes it.
        pattern1, pattern2: the graph of each input of x1 / x2 (`Layer.kernel(pattern=...)`):
            a (n, P, P) adjacency tensor or a `widenets.layers.patterns.EdgeList`; pattern2 is
            None when x1_is_x2 (then pattern1 serves both) or when no pattern was given.
        mask1, mask2: boolean (n, P) valid positions of x1 / x2 (`Layer.kernel(mask=...)`),
            with the same None conventions.

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> k = net.kernel(torch.randn(3, 4))
        >>> k.nngp.shape, k.ntk.shape, k.cov1.shape
        (torch.Size([3, 3]), torch.Size([3, 3]), torch.Size([3]))
        >>> bool(torch.equal(k.nngp.diagonal(), k.cov1)), k.x1_is_x2
        (True, True)
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
    diagonal_spatial: bool = False
    row_offset: int = 0
    same_input: torch.Tensor | None = field(default=None, repr=False, compare=False)
    gamma_term: tuple | None = field(default=None, repr=False, compare=False)
    pattern1: object = field(default=None, repr=False, compare=False)
    pattern2: object = field(default=None, repr=False, compare=False)
    mask1: torch.Tensor | None = field(default=None, repr=False, compare=False)
    mask2: torch.Tensor | None = field(default=None, repr=False, compare=False)

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

    @property
    def spatial_ndim(self) -> int:
        """s, the number of spatial axes (0 for flat features)."""
        extra = self.cov1.ndim - 1
        return extra if self.diagonal_spatial else extra // 2

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """S, the positions of one input ((), for flat features)."""
        return tuple(self.cov1.shape[1:1 + self.spatial_ndim])

    @property
    def is_spatial(self) -> bool:
        return self.cov1.ndim > 1

    @property
    def is_full_spatial(self) -> bool:
        """True for the full layout (all position pairs)."""
        return self.is_spatial and not self.diagonal_spatial

    def position_variances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """K(x1, x1)(p, p) and K(x2, x2)(p, p): (n1, *S) and (n2, *S) (views in the full
        layout; cov1 and cov2 themselves otherwise)."""
        cov2 = self.cov1 if self.cov2 is None else self.cov2
        if not self.is_full_spatial:
            return self.cov1, cov2
        return pair_diagonal(self.cov1, 1), pair_diagonal(cov2, 1)

    def broadcast_variances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """K(x1, x1) and K(x2, x2) at each position, shaped to broadcast against `nngp`.

        Flat: (n1, 1) and (1, n2). Diagonal layout: (n1, 1, *S) and (1, n2, *S). Full layout:
        (n1, 1, *S, 1, ..., 1) and (1, n2, 1, ..., 1, *S).
        """
        if not self.is_full_spatial:
            cov2 = self.cov1 if self.cov2 is None else self.cov2
            return self.cov1[:, None], cov2[None, :]
        v1, v2 = self.position_variances()
        one = (1,) * self.spatial_ndim
        return (v1.reshape(v1.shape[0], 1, *v1.shape[1:], *one),
                v2.reshape(1, v2.shape[0], *one, *v2.shape[1:]))

    def map_variances(self, f_diag, f) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply a pointwise kernel map to (cov1, cov2): the activation bookkeeping of the
        per-input second moments.

        Flat and diagonal layouts: `f_diag(cov)` (cov holds variances only). Full layout:
        cov is the self-pair kernel K(x, x)(p, p') and maps to f(v(p), v(p'), cov(p, p')),
        with the exact `f_diag(v(p))` written on p = p'.
        """
        if not self.is_full_spatial:
            return f_diag(self.cov1), (None if self.cov2 is None else f_diag(self.cov2))
        s = self.spatial_ndim
        one = (1,) * s

        def full(cov):
            v = pair_diagonal(cov, 1)
            out = f(v.reshape(*v.shape, *one), v.reshape(v.shape[0], *one, *v.shape[1:]), cov)
            pair_diagonal(out, 1).copy_(f_diag(v))
            return out

        return full(self.cov1), (None if self.cov2 is None else full(self.cov2))

    def replace(self, **changes) -> Kernel:
        """A copy with some fields changed (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def set_batch_diagonal(self, t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Write `values` (shaped like `cov1`) onto the diagonal x1_i = x2_i of `t`, in place.

        Used when x1_is_x2: the off-diagonal formulas evaluate arccos/sqrt at
        c = K12 / sqrt(K11 K22), which at c = 1 loses half the digits, while the diagonal is
        known exactly from the variances. Spatial layouts: t[i, i] is the self-pair kernel of
        input i, which is what cov1 holds in both layouts ((n, *S) or (n, *S, *S)).
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
        return 0.5 * (t + self.swap_inputs(t))

    def swap_inputs(self, t: torch.Tensor) -> torch.Tensor:
        """K(x2, x1) from K(x1, x2): swap the batch axes (and the position halves if full)."""
        t = t.transpose(0, 1)
        if self.is_full_spatial:
            s = self.spatial_ndim
            t = t.permute(0, 1, *range(2 + s, 2 + 2 * s), *range(2, 2 + s))
        return t

    def row_block(self, start: int, stop: int) -> Kernel:
        """The kernel of rows start:stop of x1 against all of x2.

        Every layer map acts on each pair (x1_i, x2_j) separately given the variances, so a
        network's kernel can be computed block by block (bounded memory, cache-sized work).
        For a symmetric kernel the block keeps x1_is_x2 with `row_offset` marking its
        diagonal, and carries the full variances in cov2.
        """
        cov2 = self.cov1 if self.cov2 is None else self.cov2
        rows = lambda t: None if t is None else t[start:stop]  # noqa: E731
        second = lambda a, b: a if b is None else b  # noqa: E731
        return self.replace(nngp=self.nngp[start:stop],
                            ntk=None if self.ntk is None else self.ntk[start:stop],
                            cov1=self.cov1[start:stop], cov2=cov2,
                            same_input=None if self.same_input is None
                            else self.same_input[start:stop],
                            row_offset=self.row_offset + start if self.x1_is_x2 else 0,
                            pattern1=rows(self.pattern1),
                            pattern2=second(self.pattern1, self.pattern2),
                            mask1=rows(self.mask1), mask2=second(self.mask1, self.mask2))

    def patterns(self):
        """(pattern of x1, pattern of x2): the graphs `Aggregate` reads (None without)."""
        return self.pattern1, self.pattern1 if self.pattern2 is None else self.pattern2

    def masks(self):
        """(mask of x1, mask of x2): boolean (n, P) valid positions, or None (all valid)."""
        return self.mask1, self.mask1 if self.mask2 is None else self.mask2

    def write_same_input(self, t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Write the self-pair values (shaped like `cov1`: row i's value for x1_i) onto the
        pairs of identical inputs (`same_input`), in place; see `set_batch_diagonal`."""
        if self.same_input is not None:
            ii, jj = self.same_input.nonzero(as_tuple=True)
            if ii.numel():
                t[ii, jj] = values[ii].to(t.dtype)
        return t

    def to(self, dtype: torch.dtype) -> Kernel:
        """A copy with every tensor cast to `dtype`."""
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        return self.replace(nngp=cast(self.nngp), ntk=cast(self.ntk), cov1=cast(self.cov1),
                            cov2=cast(self.cov2))


def pair_diagonal(t: torch.Tensor, n_batch: int) -> torch.Tensor:
    """The p = p' entries of a full-layout tensor (*batch, *S, *S) -> (*batch, *S), a view."""
    r = (t.ndim - n_batch) // 2
    for _ in range(r):                      # each step appends the diagonal of one axis pair
        t = t.diagonal(dim1=n_batch, dim2=n_batch + r)
        r -= 1
    return t
