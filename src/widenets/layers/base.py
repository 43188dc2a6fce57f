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

import contextlib
import math
import uuid
from collections.abc import Sequence

import torch
from torch import nn

from .._checks import as_input_tensor
from .._checks import describe as _describe
from .._parallel import big_op_threads, block_threads, torch_threads
from ._blocks import spatial_kernel
from ._inputs import DIAGONAL, FULL, input_kernel
from ._kernel_checks import check_finite, check_underflow, strip_bookkeeping
from ._schedule import kernel_in_row_blocks

__all__ = ["Layer", "as_input_tensor", "input_kernel", "check_std", "check_parameterization",
           "check_hyperparameter_tensor", "check_real", "as_number",
           "PARAMETERIZATIONS", "LAYOUTS", "DIAGONAL", "FULL", "check_finite"]

PARAMETERIZATIONS = ("ntk", "standard")
LAYOUTS = ("auto", "diagonal", "full")
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
        # One thread count for the whole call (widenets._parallel): the blocks' threads; on
        # this thread one torch thread (every OpenMP region costs a barrier, which on a busy
        # machine costs more than a small operation), more only for large steps.
        cpu = not (isinstance(x1, torch.Tensor) and x1.device.type != "cpu")
        threads = block_threads() if cpu else 1
        with torch_threads(1) if cpu else contextlib.nullcontext():
            return self._kernel(x1, x2, pattern, mask, get, dtype, layout, batch_size, threads)

    def _kernel(self, x1, x2, pattern, mask, get, dtype, layout, batch_size, threads):
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
            gram = x1.shape[0] * (x1 if x2 is None else x2).shape[0] * x1.shape[1]
            with big_op_threads(threads, gram) if x1.device.type == "cpu" else \
                    contextlib.nullcontext():
                k0 = input_kernel(x1, x2, want_ntk="ntk" in gets)
            k = kernel_in_row_blocks(self, k0, fname, threads=threads)
        else:
            k = spatial_kernel(self, x1, x2, want_ntk="ntk" in gets, layout=layout,
                               batch_size=batch_size, fname=fname, aux=aux, threads=threads)
        k = strip_bookkeeping(k)
        check_underflow(self, k, x1, x2, fname)
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

    def stages(self) -> tuple[Layer, ...] | None:
        """The layers this one applies one after another (a serial network), for error
        messages that name the first layer at fault; None for other layers."""
        return None

    #: the combinator `a >> b` builds: the subclass declared with `serial_composition=True`
    #: (`Serial`), registered here so that this module need not import the combinators
    _serial_type: type | None = None

    def __init_subclass__(cls, serial_composition: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        if serial_composition:
            Layer._serial_type = cls

    def __rshift__(self, other: Layer) -> Layer:
        return Layer._serial_type(self, other)

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
