"""The Layer abstraction: one object, two views.

Every layer knows
* its infinite-width kernel map `apply_kernel(Kernel) -> Kernel` (private; the public entry is
  `Layer.kernel(x1, x2)`, which checks inputs once and builds the input kernel), and
* its finite torch module `build(in_shape, generator, dtype) -> (nn.Module, out_shape)`
  (public entry `Layer.module(in_shape, seed=...)`).

Multi-branch values (after `FanOut`) are lists: a list of Kernels, a list of shapes, and a tuple
of tensors in the torch forward.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

import torch
from torch import nn

from .._checks import as_input_tensor
from .._checks import describe as _describe
from ..kernel import Kernel

__all__ = ["Layer", "as_input_tensor", "input_kernel", "check_std", "check_parameterization",
           "check_hyperparameter_tensor", "check_real", "as_number",
           "PARAMETERIZATIONS", "LAYOUTS", "DIAGONAL", "FULL"]

PARAMETERIZATIONS = ("ntk", "standard")
LAYOUTS = ("auto", "diagonal", "full")
#: spatial layout needs (see `Layer.layout_need`), ordered: FULL serves DIAGONAL too
DIAGONAL, FULL = 1, 2
_GET = ("nngp", "ntk")


def check_std(value, *, func: str, arg: str, allow_none: bool = False):
    """A standard deviation must be a finite number >= 0 (or None where allowed).

    A 0-d floating torch tensor is kept as a tensor (it may require grad: kernels are then
    differentiable with respect to it, see `widenets.hyperparameters`); numbers become floats.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor):
        check_hyperparameter_tensor(value, func=func, arg=arg)
        if not bool(value.detach() >= 0):
            raise ValueError(f"{func}: {arg} must be >= 0, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{func}: {arg} must be a finite number >= 0"
                         f"{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def check_real(value, *, func: str, arg: str):
    """A real hyperparameter: a finite number (returned as float) or a finite 0-d floating
    tensor (kept: it may require grad)."""
    if isinstance(value, torch.Tensor):
        return check_hyperparameter_tensor(value, func=func, arg=arg)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{func}: {arg} must be a finite number, got {value!r}")
    return float(value)


def check_hyperparameter_tensor(value: torch.Tensor, *, func: str, arg: str) -> torch.Tensor:
    """A tensor hyperparameter must be a finite 0-d floating tensor on the CPU."""
    if value.ndim != 0 or not torch.is_floating_point(value) or value.device.type == "meta":
        raise ValueError(f"{func}: {arg} given as a tensor must be a 0-d floating tensor, got "
                         f"{_describe(value)}")
    if not bool(torch.isfinite(value.detach())):
        raise ValueError(f"{func}: {arg} must be finite, got {value!r}")
    return value


def as_number(value):
    """A hyperparameter as a plain float (detached): for finite modules and descriptions."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else value


def check_parameterization(value, *, func: str) -> str:
    if value not in PARAMETERIZATIONS:
        raise ValueError(f"{func}: parameterization must be one of {PARAMETERIZATIONS}, "
                         f"got {value!r}")
    return value


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
    d = x1.shape[1]
    cov1 = (x1 * x1).sum(1) / d
    if x2 is None:
        nngp = symmetrize_((x1 / d) @ x1.T)   # BLAS need not return a symmetric Gram
        cov2 = None
    else:
        nngp = (x1 / d) @ x2.T
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


def _mark_same_inputs(k: Kernel, x1, x2) -> Kernel:
    """Record the pairs of identical inputs (Kernel.same_input) and give them exactly the
    self-pair kernel, so that c = 1 holds exactly for them (docs/math.md §near-diagonal).
    Rows are grouped by torch.unique (a sort: O(n log n) row comparisons)."""
    rows = x1.reshape(x1.shape[0], -1) if x2 is None else \
        torch.cat([x1.reshape(x1.shape[0], -1), x2.reshape(x2.shape[0], -1)])
    if rows.shape[0] < 2:
        return k
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
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


def new_source() -> frozenset:
    """A fresh identifier for the randomness of one weight layer (see Kernel.sources)."""
    return frozenset({uuid.uuid4().int})


class Layer:
    """Base class of every widenets layer and combinator.

    Subclasses implement `apply_kernel` (the infinite-width map) and `build` (the finite module).
    Constructors store their arguments verbatim as attributes.

    Example:
        >>> net = wn.Dense(64, w_std=1.5) >> wn.Relu() >> wn.Dense(1)
        >>> isinstance(net, wn.Layer)
        True
        >>> net.kernel(torch.randn(4, 3), get="ntk").shape
        torch.Size([4, 4])
        >>> net.module((3,), seed=0)(torch.randn(4, 3)).shape
        torch.Size([4, 1])
    """

    # --------------------------------------------------------------- to override
    def apply_kernel(self, k):  # pragma: no cover - abstract
        """Map the input Kernel (or list of Kernels) to the output one."""
        raise NotImplementedError

    def build(self, in_shape, generator: torch.Generator | None, dtype: torch.dtype):
        """Return (module, out_shape) of the finite network; shapes exclude the batch axis."""
        raise NotImplementedError  # pragma: no cover - abstract

    #: True for layers whose output can be exactly zero for a nonzero input by design (the
    #: underflow check then accepts zero variances)
    may_zero_outputs: bool = False

    #: continuous hyperparameters of this layer (attribute name -> "positive" or "real"):
    #: listed by `wn.hyperparameters`, replaced by `with_hyperparameters`, may be tensors
    hyperparameter_domains: dict = {}

    def layout_need(self, need):
        """The spatial layout this layer needs from its input, given what its output must
        provide (`DIAGONAL` or `FULL`; lists for branches). Pointwise-in-position layers pass
        `need` through; pooling asks for FULL, Flatten for DIAGONAL."""
        return need

    # ------------------------------------------------------------------ public
    @property
    def name(self) -> str:
        return type(self).__name__

    #: True for layers that read `pattern=` (Aggregate); the pattern is refused otherwise
    uses_pattern: bool = False
    #: True for layers that handle `mask=`: position-wise layers, and those that exclude padded
    #: positions (attention, pooling, aggregation); the mask is refused by the others
    accepts_mask: bool = False

    def kernel(self, x1, x2=None, *, pattern=None, mask=None,
               get: str | Sequence[str] | None = None,
               dtype: torch.dtype = torch.float64, layout: str = "auto",
               batch_size: int | None = None):
        """Exact infinite-width NNGP and NTK of this network.

        Args:
            x1: (n1, d) inputs, or channels-first (n1, C, L), (n1, C, H, W), (n1, C, D, H, W).
            x2: inputs shaped like x1, or None for x2 = x1 (symmetric kernel, exact diagonal).
            pattern: the graphs of the inputs, for networks with `Aggregate`: (a1, a2), or a1
                alone when x2 is None; each a dense (n, P, P) adjacency or a sparse
                `widenets.EdgeList` (see `widenets.layers.patterns`).
            mask: boolean valid positions (n, P) of channels-first inputs of different lengths:
                (m1, m2), or m1 alone when x2 is None. Padding is excluded from attention,
                pooling and aggregation.
            get: None for the whole `Kernel`; "nngp" or "ntk" for that (n1, n2) tensor only
                ("nngp" skips all NTK work); a tuple of both for a tuple of tensors.
            dtype: precision of the computation (float64 by default).
            layout: spatial inputs only. "auto" keeps only the position pairs the network needs:
                the diagonal (n1, n2, *S) where it is read out by Flatten (cost linear in
                pixels), all pairs (n1, n2, *S, *S) where pooling needs them (quadratic); a
                spatial output comes in the full layout. "diagonal" returns a spatial output in
                the diagonal layout; "full" keeps all pairs everywhere.
            batch_size: full layout only: compute blocks of batch_size x batch_size input
                pairs at a time (None: chosen from the free memory).

        Returns:
            A `Kernel`, a tensor or a tuple of tensors, as `get` asks (lists of these when the
            network ends in several branches).
        """
        fname = f"{self.name}.kernel"
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"{fname}: dtype must be a torch floating dtype, got {dtype!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"{fname}: layout must be one of {LAYOUTS}, got {layout!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
                batch_size, int) or batch_size < 1):
            raise ValueError(f"{fname}: batch_size must be a positive int or None, got "
                             f"{batch_size!r}")
        gets = parse_get(get, fname)
        x1 = as_input_tensor(x1, func=fname, arg="x1", dtype=dtype)
        if x2 is not None:
            x2 = as_input_tensor(x2, func=fname, arg="x2", dtype=dtype)
            if x2.shape[1:] != x1.shape[1:]:
                raise ValueError(f"{fname}: x1 and x2 must have the same feature shape, got "
                                 f"x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)}")
            if x2.device != x1.device:
                raise ValueError(f"{fname}: x1 and x2 must be on the same device, got "
                                 f"{x1.device} and {x2.device}")
        aux = self._check_graph_inputs(x1, x2, pattern, mask, fname)
        if x1.ndim == 2:
            k = self._apply_in_row_blocks(input_kernel(x1, x2, want_ntk="ntk" in gets), fname)
        else:
            from ._blocks import spatial_kernel

            k = spatial_kernel(self, x1, x2, want_ntk="ntk" in gets, layout=layout,
                               batch_size=batch_size, fname=fname, aux=aux)
        k = _strip_bookkeeping(k)
        _check_underflow(self, k, x1, x2, fname)
        if get is None:
            return k
        return select_kernels(k, gets, single=isinstance(get, str))

    def _check_graph_inputs(self, x1, x2, pattern, mask, fname):
        """Validate `pattern=` and `mask=` against the inputs and the network: returns
        (pattern1, pattern2, mask1, mask2) with pattern2/mask2 None when x2 is None."""
        from .patterns import check_mask, check_pattern

        if pattern is None and mask is None:
            return (None,) * 4
        if x1.ndim < 3:
            raise ValueError(f"{fname}: pattern= and mask= need channels-first inputs (n, C, L) "
                             f"(positions or nodes on the last axes), got x1 of shape "
                             f"{tuple(x1.shape)}")
        spatial = tuple(x1.shape[2:])
        positions = math.prod(spatial)
        out = []
        for arg, val, ok in (("pattern", pattern, any(lay.uses_pattern for lay in self.walk())),
                             ("mask", mask, True)):
            if val is None:
                out += [None, None]
                continue
            if not ok:
                raise ValueError(f"{fname}: pattern= was given but no layer of this network "
                                 f"reads it (add Aggregate())")
            if x2 is None:
                if isinstance(val, (tuple, list)):
                    raise ValueError(f"{fname}: with x2=None, {arg} must be the one {arg} of "
                                     f"x1, not a {type(val).__name__} of {len(val)}")
                pair = (val, None)
            else:
                if not isinstance(val, (tuple, list)) or len(val) != 2:
                    raise ValueError(f"{fname}: with x2 given, {arg} must be a pair ({arg}1, "
                                     f"{arg}2), one per input set, got {type(val).__name__}")
                pair = tuple(val)
            for i, (v, x) in enumerate(zip(pair, (x1, x2))):
                if x is None:
                    out.append(None)
                elif arg == "pattern":
                    out.append(check_pattern(v, n=x.shape[0], positions=positions, func=fname,
                                             arg=f"pattern[{i}]" if x2 is not None else arg,
                                             dtype=x1.dtype))
                else:
                    out.append(check_mask(v, n=x.shape[0], spatial=spatial, func=fname,
                                          arg=f"mask[{i}]" if x2 is not None else arg))
        if mask is not None:
            bad = sorted({lay.name for lay in self.walk() if not lay.accepts_mask})
            if bad:
                raise ValueError(f"{fname}: mask= is not supported by {', '.join(bad)} (they "
                                 f"would mix padded positions into valid ones); use "
                                 f"position-wise layers, GlobalSelfAttention, Aggregate and "
                                 f"GlobalAvgPool with masks")
        return tuple(out)

    def module(self, in_shape, *, seed: int | None = None,
               dtype: torch.dtype = torch.float32) -> nn.Module:
        """The finite torch network this layer describes, freshly initialized.

        Args:
            in_shape: shape of one input without the batch axis, e.g. (784,).
            seed: seeds a private generator for the initialization (None: torch's global RNG).
            dtype: parameter dtype.
        """
        fname = f"{self.name}.module"
        if isinstance(in_shape, int):
            in_shape = (in_shape,)
        if not isinstance(in_shape, (tuple, list)) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in in_shape):
            raise ValueError(f"{fname}: in_shape must be a tuple of positive ints without the "
                             f"batch axis, e.g. (784,), got {in_shape!r}")
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        mod, _ = self.build(tuple(in_shape), generator, dtype)
        return mod

    #: entries (x1_i, x2_j pairs) per row block in `kernel`: 2^18 keeps a block's temporaries
    #: near the cache (measured best of 2^14..2^20 with benchmarks/analytic_fc.py; one block
    #: for the whole kernel is 1.8x slower at N = 4000); every layer map acts pair by pair
    block_entries: int = 1 << 18

    def sublayers(self) -> tuple[Layer, ...]:
        """The layers this one is made of (combinators override)."""
        return ()

    def walk(self):
        """This layer and all its sublayers, depth first."""
        yield self
        for lay in self.sublayers():
            yield from lay.walk()

    def _apply_in_row_blocks(self, k0: Kernel, fname: str):
        """apply_kernel over row blocks of x1, assembled into one result.

        Layer maps act on each pair (x1_i, x2_j) given the variances, so blocks are exact and
        the result is bitwise the same as one pass; blocks keep the temporaries cache-sized,
        and each block is checked for non-finite entries while it is in cache.
        Networks that symmetrize whole kernels (quadrature activations) on x1 = x2 run in one
        pass.
        """
        n1 = k0.n1
        per_row = max(1, k0.nngp[0].numel())
        rows = max(1, self.block_entries // per_row)
        whole = k0.x1_is_x2 and any(not getattr(lay, "symmetric_formula", True)
                                    for lay in self.walk())
        from .engine import apply as apply_layer  # fused or eager (widenets.set_engine)

        if rows >= n1 or whole:
            k = apply_layer(self, k0)
            check_finite(k, fname, layer=self, k0=k0)
            return k
        outs, first = None, None
        for r0 in range(0, n1, rows):
            r1 = min(n1, r0 + rows)
            kb = apply_layer(self, k0.row_block(r0, r1))
            check_finite(kb, fname, layer=self, k0=k0.row_block(r0, r1))
            blocks = kb if isinstance(kb, list) else [kb]
            if outs is None:
                first = blocks
                outs = [{f: None if getattr(b, f) is None else
                         getattr(b, f).new_empty((n1, *getattr(b, f).shape[1:]))
                         for f in ("nngp", "ntk", "cov1")} for b in blocks]
            for out, b in zip(outs, blocks):
                for f, t in out.items():
                    if t is not None:
                        t[r0:r1] = getattr(b, f)
        done = [b.replace(nngp=o["nngp"], ntk=o["ntk"], cov1=o["cov1"],
                          cov2=None if k0.x1_is_x2 else b.cov2, row_offset=0)
                for b, o in zip(first, outs)]
        return done if isinstance(kb, list) else done[0]

    def with_hyperparameters(self, values: dict) -> Layer:
        """A copy of this network with some hyperparameters replaced (floats or tensors).

        Keys are the names `wn.hyperparameters(net)` lists ("0.w_std") or glob patterns
        ("*.w_std": one value tied across every Dense/Conv). See `widenets.hyperparameters`.

        Example:
            >>> import widenets as wn
            >>> net = wn.serial(wn.Dense(8, w_std=1.0), wn.Relu(), wn.Dense(1, w_std=1.0))
            >>> wn.hyperparameters(net.with_hyperparameters({"*.w_std": 2.0}))["2.w_std"]
            2.0
        """
        from ..hyperparameters import with_hyperparameters

        return with_hyperparameters(self, values)

    def hyperparameters_changed(self) -> None:
        """Called on a copy after `with_hyperparameters` set some of its attributes: layers
        that derive other attributes from their hyperparameters update them here."""

    def __rshift__(self, other: Layer) -> Layer:
        from .combinators import serial

        return serial(self, other)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self.name}({args})"


def parse_get(get, fname: str) -> tuple[str, ...]:
    if get is None:
        return _GET
    gets = (get,) if isinstance(get, str) else tuple(get)
    if not gets or any(g not in _GET for g in gets):
        raise ValueError(f"{fname}: get must be None, 'nngp', 'ntk' or a tuple of them, "
                         f"got {get!r}")
    return gets


def check_finite(k, fname: str, *, layer: Layer | None = None, k0: Kernel | None = None) -> None:
    """Raise FloatingPointError if a Kernel (or list of them, one per branch) has NaN/inf.

    The message says which it is: inf is an overflow (too deep or too large w_std for the
    dtype); NaN from finite inputs is a domain error (0/0, a function outside its domain), not
    an overflow. Given the network `layer` and its input kernel `k0`, it also names the first
    layer of a serial network whose output is not finite.
    """
    for kk in k if isinstance(k, list) else [k]:
        _check_finite(kk, fname, layer, k0)


def _check_finite(k: Kernel, fname: str, layer, k0) -> None:
    for name in ("nngp", "ntk"):
        t = getattr(k, name)
        if t is None or bool(torch.isfinite(t).all()):
            continue
        where, first_inf = _first_nonfinite_layer(layer, k0)
        overflow = bool(torch.isinf(t).any()) if first_inf is None else first_inf
        if overflow:
            raise FloatingPointError(
                f"{fname}: the {name} kernel has non-finite entries: it overflowed to infinity "
                f"in {t.dtype}{where}; use dtype=torch.float64, smaller w_std or fewer layers")
        raise FloatingPointError(
            f"{fname}: the {name} kernel has non-finite entries: NaN{where} from finite values "
            f"(not an overflow: a 0/0 or a function evaluated outside its domain, e.g. "
            f"LayerNorm(eps=0) on a zero input, or an activation returning NaN)")


def _first_nonfinite_layer(layer, k0) -> tuple[str, bool | None]:
    """(' (first at layer i of n: Name)', whether that layer's output had inf) for a serial
    network, on the error path only; ('', None) when unknown."""
    from .combinators import Serial

    if not isinstance(layer, Serial) or k0 is None:
        return "", None
    k = k0
    try:
        for i, lay in enumerate(layer.layers):
            k = lay.apply_kernel(k)
            for kk in k if isinstance(k, list) else [k]:
                for t in (kk.nngp, kk.ntk, kk.cov1):
                    if t is not None and not bool(torch.isfinite(t).all()):
                        return (f" (first at layer {i + 1} of {len(layer.layers)}: {lay.name})",
                                bool(torch.isinf(t).any()))
    except Exception:       # noqa: BLE001 - a diagnosis must not mask the real error
        return "", None
    return "", None


def _strip_bookkeeping(k):
    """The returned Kernel: without the per-call bookkeeping (identical-input pairs, LayerNorm
    γ records) that only layers inside one `kernel` call may use."""
    if isinstance(k, list):
        return [_strip_bookkeeping(kk) for kk in k]
    if k.same_input is None and k.gamma_term is None:
        return k
    return k.replace(same_input=None, gamma_term=None)


def _check_underflow(layer: Layer, k, x1, x2, fname: str) -> None:
    """Underflow (docs/math.md §underflow): an output variance K(x, x) that is subnormal, or
    zero for an input x that is not all zeros, means the signal shrank below the smallest
    normal number of the dtype and the kernel's values are lost. Exact zeros are legitimate
    only when the network contains a weight layer with w_std = 0 (its output does not depend
    on the input) or a layer that declares `may_zero_outputs` (Aggregate: a node without
    incoming edges outputs 0), or for inputs that are all zeros (with b_std = 0 the kernel is
    then 0)."""
    for kk in k if isinstance(k, list) else [k]:
        tiny = torch.finfo(kk.dtype).tiny
        allow_zero = any(getattr(lay, "w_std", None) == 0 or lay.may_zero_outputs
                         for lay in layer.walk())
        for x, v, which in ((x1, kk.position_variances()[0], "x1"),
                            (x2, kk.position_variances()[1] if x2 is not None else None, "x2")):
            if x is None or v is None:
                continue
            v = v.reshape(v.shape[0], -1).abs()
            nonzero_input = (x.reshape(x.shape[0], -1) != 0).any(1)
            subnormal = ((v > 0) & (v < tiny)).any(1)
            zero = (v == 0).all(1) & nonzero_input
            bad = subnormal | (zero if not allow_zero else torch.zeros_like(zero))
            if bool(bad.any()):
                rows = bad.nonzero().flatten()
                depth = _underflow_depth(layer, x[rows[:4]], kk.dtype)
                raise FloatingPointError(
                    f"{fname}: the kernel underflowed in {kk.dtype}: the output variance "
                    f"K(x, x) of {int(bad.sum())} nonzero input(s) of {which} (e.g. row "
                    f"{int(rows[0])}) is {'subnormal' if bool(subnormal.any()) else '0'}, "
                    f"below the smallest normal number {tiny:.3g}{depth}, so every entry of "
                    f"their kernel lost its digits; use "
                    f"{'dtype=torch.float64, ' if kk.dtype != torch.float64 else ''}a larger "
                    f"w_std (ReLU keeps the variance at w_std = √2) or fewer layers")


def _underflow_depth(layer, x, dtype) -> str:
    """' (from layer i of n: Name on)' for a serial network (error path only)."""
    from .combinators import Serial

    if not isinstance(layer, Serial) or x.ndim != 2:
        return ""
    tiny = torch.finfo(dtype).tiny
    try:
        k = input_kernel(x, None, want_ntk=False)
        for i, lay in enumerate(layer.layers):
            k = lay.apply_kernel(k)
            if isinstance(k, list):
                return ""
            if bool((k.cov1.abs() < tiny).any()):
                return f" (from layer {i + 1} of {len(layer.layers)}: {lay.name} on)"
    except Exception:       # noqa: BLE001 - a diagnosis must not mask the real error
        return ""
    return ""


def select_kernels(k, gets: tuple[str, ...], single: bool):
    if isinstance(k, list):
        return [select_kernels(kk, gets, single) for kk in k]
    out = tuple(getattr(k, g) for g in gets)
    return out[0] if single else out


def normal_(t: torch.Tensor, generator: torch.Generator | None, std: float = 1.0) -> torch.Tensor:
    """Fill `t` with N(0, std²) draws from `generator` (drawn in float64 for reproducibility
    across dtypes, then cast)."""
    with torch.no_grad():
        draw = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        t.copy_(draw * std)
    return t
