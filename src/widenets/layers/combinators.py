"""Combinators: serial composition, parallel branches, fan-out and fan-in.

A residual block is
    serial(FanOut(2), parallel(serial(Dense(n), Relu(), Dense(n)), Identity()), FanInSum()).

Fan-in rules at infinite width:
* FanInSum: for branch outputs a, b, E[(a+b)(a'+b')] = E[aa'] + E[bb'] + E[ab'] + E[ba'].
  The cross terms vanish exactly when, in every pair of branches, one is the zero-mean output
  of fresh weights independent of the other. So the sum is exact when at most one branch is
  non-Gaussian and no two branches share their weight layer; otherwise it raises instead of
  returning a wrong kernel. The NTK adds likewise (the cross gradients average to zero).
* FanInConcat (along channels, axis 1): the per-channel average is the channel-weighted mean
  K = Σ_i n_i K_i / Σ_i n_i, for NNGP and NTK alike.
* FanInProd (elementwise product): for independent branches E[(ab)(a'b')] = E[aa'] E[bb'], so
  K = Π_i K_i and Θ = Σ_i Θ_i Π_{j≠i} K_j (product rule; cross gradients average to zero).
  Independence is required exactly as FanInSum requires it (same refusals).
* repeat(layer, n): the layer's kernel map applied n times in a loop (one layer object).
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernel import Kernel
from .base import Layer

__all__ = ["serial", "parallel", "Serial", "Parallel", "FanOut", "FanInSum", "FanInConcat",
           "FanInProd", "Repeat", "repeat"]


def _check_layers(layers, func: str) -> tuple[Layer, ...]:
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
        layers = tuple(layers[0])
    if not layers:
        raise ValueError(f"{func}: needs at least one layer, got none")
    for i, lay in enumerate(layers):
        if not isinstance(lay, Layer):
            raise TypeError(f"{func}: argument {i} must be a widenets layer (Dense, Relu, ...), "
                            f"got {type(lay).__name__}")
    return tuple(layers)


# ---------------------------------------------------------------------------- modules
def call_with_graph(mod: nn.Module, x, pattern, mask):
    """mod(x), also passing the inputs' graph and mask to modules that read them."""
    if getattr(mod, "takes_graph", False) and (pattern is not None or mask is not None):
        return mod(x, pattern, mask=mask)
    return mod(x)


class SerialModule(nn.Sequential):
    """nn.Sequential whose children may pass tuples of tensors (branches) along, and that
    passes forward(x, pattern, mask=...) on to the children that read them."""

    takes_graph = True

    def forward(self, x, pattern=None, mask=None):
        for mod in self:
            x = call_with_graph(mod, x, pattern, mask)
        return x


class ParallelModule(nn.Module):
    takes_graph = True

    def __init__(self, mods):
        super().__init__()
        self.branches = nn.ModuleList(mods)

    def forward(self, xs, pattern=None, mask=None):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(self.branches):
            raise ValueError(f"parallel: expected a tuple of {len(self.branches)} inputs, got "
                             f"{type(xs).__name__}")
        return tuple(call_with_graph(m, x, pattern, mask) for m, x in zip(self.branches, xs))


class FanOutModule(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return (x,) * self.n


class FanInSumModule(nn.Module):
    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class FanInProdModule(nn.Module):
    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class FanInConcatModule(nn.Module):
    def forward(self, xs):
        return torch.cat(list(xs), dim=1)


# ---------------------------------------------------------------------------- layers
class Serial(Layer, serial_composition=True):
    """Layers applied one after another (use `serial(...)`; `a >> b` builds one too)."""

    accepts_mask = True  # mask= goes on to the layers inside

    def __init__(self, *layers: Layer):
        self.layers = _check_layers(layers, "serial")

    def sublayers(self):
        return self.layers

    def stages(self):
        return self.layers

    def apply_kernel(self, k):
        for lay in self.layers:
            k = lay.apply_kernel(k)
        return k

    def layout_need(self, need):
        for lay in reversed(self.layers):
            need = lay.layout_need(need)
        return need

    def build(self, in_shape, generator, dtype):
        mods = []
        for lay in self.layers:
            mod, in_shape = lay.build(in_shape, generator, dtype)
            mods.append(mod)
        return SerialModule(*mods), in_shape

    def __repr__(self) -> str:
        return "serial(" + ", ".join(map(repr, self.layers)) + ")"


def serial(*layers: Layer) -> Serial:
    """Compose layers in sequence: serial(Dense(512), Relu(), Dense(1)).

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> net.kernel(torch.randn(3, 4), get="nngp").shape
        torch.Size([3, 3])
        >>> net.module((4,), seed=0)
        SerialModule(...)
    """
    return Serial(*layers)


class Parallel(Layer):
    """Apply layer i to branch i (use `parallel(...)`, after FanOut)."""

    accepts_mask = True  # mask= goes on to the layers inside

    def __init__(self, *layers: Layer):
        self.layers = _check_layers(layers, "parallel")

    def sublayers(self):
        return self.layers

    def _check_branches(self, xs, what: str, func: str):
        if not isinstance(xs, list) or len(xs) != len(self.layers):
            got = f"{len(xs)} branches" if isinstance(xs, list) else "a single input"
            raise ValueError(f"parallel.{func}: expected {len(self.layers)} branches (put "
                             f"FanOut({len(self.layers)}) before it), got {got} {what}")

    def apply_kernel(self, ks):
        self._check_branches(ks, "", "kernel")
        return [lay.apply_kernel(k) for lay, k in zip(self.layers, ks)]

    def layout_need(self, need):
        needs = need if isinstance(need, list) else [need] * len(self.layers)
        return [lay.layout_need(n) for lay, n in zip(self.layers, needs)]

    def build(self, in_shapes, generator, dtype):
        self._check_branches(in_shapes, f"{in_shapes!r}", "module")
        built = [lay.build(s, generator, dtype) for lay, s in zip(self.layers, in_shapes)]
        return ParallelModule([m for m, _ in built]), [s for _, s in built]

    def __repr__(self) -> str:
        return "parallel(" + ", ".join(map(repr, self.layers)) + ")"


def parallel(*layers: Layer) -> Parallel:
    """Apply `layers[i]` to branch i of a FanOut.

    Example:
        >>> branch = wn.serial(wn.Relu(), wn.Dense(64))
        >>> block = wn.serial(wn.FanOut(2), wn.parallel(branch, wn.Identity()),
        ...                   wn.FanInSum())
        >>> net = wn.serial(wn.Dense(64), block, wn.Relu(), wn.Dense(1))
        >>> net.kernel(torch.randn(3, 4), get="ntk").shape
        torch.Size([3, 3])
    """
    return Parallel(*layers)


class FanOut(Layer):
    """Copy the input into `n` branches.

    Example:
        >>> branch = wn.serial(wn.Relu(), wn.Dense(64))
        >>> block = wn.serial(wn.FanOut(2), wn.parallel(branch, wn.Identity()),
        ...                   wn.FanInSum())
        >>> net = wn.serial(wn.Dense(64), block, wn.Relu(), wn.Dense(1))
        >>> net.kernel(torch.randn(3, 4), get="ntk").shape
        torch.Size([3, 3])
    """

    accepts_mask = True  # mask= goes on to the layers inside

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"FanOut: n must be a positive int, got {n!r}")
        self.n = n

    def apply_kernel(self, k):
        if isinstance(k, list):
            raise ValueError(f"FanOut.kernel: expected one input, got {len(k)} branches")
        return [k] * self.n

    def layout_need(self, need):
        return max(need) if isinstance(need, list) else need

    def build(self, in_shape, generator, dtype):
        return FanOutModule(self.n), [in_shape] * self.n


def _check_fan_in(ks, func: str) -> list[Kernel]:
    if not isinstance(ks, list):
        raise ValueError(f"{func}: expected several branches (after FanOut and parallel), got "
                         f"a single input")
    return ks


class FanInSum(Layer):
    """Sum the branches (residual connections). See the module docstring for exactness.

    Example:
        >>> branch = wn.serial(wn.Relu(), wn.Dense(64))
        >>> block = wn.serial(wn.FanOut(2), wn.parallel(branch, wn.Identity()),
        ...                   wn.FanInSum())
        >>> net = wn.serial(wn.Dense(64), block, wn.Relu(), wn.Dense(1))
        >>> net.kernel(torch.randn(3, 4), get="ntk").shape
        torch.Size([3, 3])
        >>> correlated = wn.serial(wn.Dense(8), wn.FanOut(2), wn.parallel(wn.Relu(), wn.Erf()),
        ...                        wn.FanInSum())
        >>> correlated.kernel(torch.randn(2, 3))
        Traceback (most recent call last):
        ...
        ValueError: FanInSum...
    """

    accepts_mask = True  # mask= goes on to the layers inside

    def apply_kernel(self, ks):
        ks = _check_fan_in(ks, "FanInSum.kernel")
        seen = _independent_sources(ks, "FanInSum.kernel", "summed", "of their sum is not the "
                                    "sum of kernels", "do not add")
        first = ks[0]
        ntk = None
        if first.ntk is not None:
            ntk = sum(k.ntk for k in ks[1:]) + first.ntk
        return first.replace(
            nngp=sum(k.nngp for k in ks[1:]) + first.nngp, ntk=ntk,
            cov1=sum(k.cov1 for k in ks[1:]) + first.cov1,
            cov2=None if first.cov2 is None else sum(k.cov2 for k in ks[1:]) + first.cov2,
            is_gaussian=all(k.is_gaussian for k in ks),
            is_input=False, sources=frozenset(seen))

    def build(self, in_shapes, generator, dtype):
        _check_fan_in(in_shapes, "FanInSum.module")
        if len(set(map(tuple, in_shapes))) != 1:
            raise ValueError(f"FanInSum.module: branch shapes must be equal, got {in_shapes}")
        return FanInSumModule(), in_shapes[0]


def _independent_sources(ks, func: str, verb: str, wrong: str, fails: str) -> set:
    """The independence rules of FanInSum and FanInProd: equal widths, at most one
    non-Gaussian branch, no weight layer shared by two branches. Returns the union of the
    branches' sources."""
    chans = {k.channels for k in ks}
    if len(chans) != 1:
        raise ValueError(f"{func}: branches must have equal widths to be {verb}, "
                         f"got {[k.channels for k in ks]}")
    if sum(not k.is_gaussian for k in ks) > 1:
        raise ValueError(f"{func}: at most one branch may be non-Gaussian (end the "
                         f"others with a Dense or Conv); otherwise the branches are "
                         f"correlated and the kernel {wrong}")
    seen: set = set()
    for k in ks:
        if seen & k.sources:
            raise ValueError(f"{func}: two branches come from the same weight "
                             f"layer (e.g. two Identity branches), so they are correlated "
                             f"and their kernels {fails}; give one branch its own Dense "
                             f"or Conv")
        seen |= k.sources
    return seen


class FanInProd(Layer):
    """Elementwise product of the branches (NT's `stax.FanInProd`).

    For independent branches (docs/math.md §faninprod):
        K = Π_i K_i,     Θ = Σ_i Θ_i Π_{j≠i} K_j,
    in every layout (position pair by position pair). Like `FanInSum` it refuses branches
    that are correlated: more than one non-Gaussian branch, or two branches sharing a weight
    layer. The output is not Gaussian.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.FanOut(2), wn.parallel(wn.Dense(4), wn.Dense(4, w_std=2.0)),
        ...                 wn.FanInProd())
        >>> x = torch.ones(1, 3)
        >>> k = net.kernel(x)                         # K = 1 · 4, Θ = 1 · 4 + 4 · 1
        >>> float(k.nngp[0, 0]), float(k.ntk[0, 0])
        (4.0, 8.0)
    """

    def apply_kernel(self, ks):
        func = "FanInProd.kernel"
        ks = _check_fan_in(ks, func)
        if len({k.nngp.shape for k in ks}) != 1:
            raise ValueError(f"{func}: branches must have the same shape to be multiplied, got "
                             f"kernel shapes {[tuple(k.nngp.shape) for k in ks]}")
        seen = _independent_sources(ks, func, "multiplied", "of their product is not the "
                                    "product of kernels", "do not multiply")

        def prod(name, skip=None):
            out = None
            for i, k in enumerate(ks):
                if i == skip:
                    continue
                t = getattr(k, name)
                out = t.clone() if out is None else out.mul_(t)
            return out

        ntk = None
        if ks[0].ntk is not None:            # Θ = Σ_i Θ_i Π_{j≠i} K_j (product rule)
            for i, k in enumerate(ks):
                term = prod("nngp", skip=i).mul_(k.ntk)
                ntk = term if ntk is None else ntk.add_(term)
        cov2 = None if ks[0].cov2 is None else prod("cov2")
        out = ks[0].replace(nngp=prod("nngp"), ntk=ntk, cov1=prod("cov1"), cov2=cov2,
                            is_gaussian=False, is_input=False, sources=frozenset(seen))
        return out

    def build(self, in_shapes, generator, dtype):
        _check_fan_in(in_shapes, "FanInProd.module")
        if len(set(map(tuple, in_shapes))) != 1:
            raise ValueError(f"FanInProd.module: branch shapes must be equal, got {in_shapes}")
        return FanInProdModule(), in_shapes[0]


class Repeat(Layer):
    """`layer` applied `n` times (use `repeat(layer, n)`).

    The kernel is computed in a loop over one layer object: memory does not grow with n. The
    finite module has n independent copies of the layer's parameters, as `serial(*[layer] *
    n)` (NT's `stax.repeat`). The layer must keep its input's shape.

    Args:
        layer: the layer (or `serial`) to repeat.
        n: the number of applications, >= 1.

    Example:
        >>> import widenets as wn
        >>> wn.repeat(wn.serial(wn.Dense(4), wn.Relu()), 3)
        repeat(serial(Dense(out=4, w_std=1.0, b_std=0.0, parameterization='ntk'), Relu()), 3)
    """

    def __init__(self, layer: Layer, n: int):
        if not isinstance(layer, Layer):
            raise TypeError(f"repeat: layer must be a widenets layer (Dense, serial(...), ...), "
                            f"got {type(layer).__name__}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"repeat: n must be a positive int, got {n!r}")
        self.layer, self.n = layer, n

    def sublayers(self):
        return (self.layer,)

    def apply_kernel(self, k):
        for _ in range(self.n):
            k = self.layer.apply_kernel(k)
        return k

    def layout_need(self, need):
        for _ in range(self.n):
            prev, need = need, self.layer.layout_need(need)
            if need == prev:                 # a fixed point: the rest of the loop repeats it
                break
        return need

    def build(self, in_shape, generator, dtype):
        mods = []
        shape = in_shape
        for i in range(self.n):
            mod, out = self.layer.build(shape, generator, dtype)
            if out != shape:
                raise ValueError(f"repeat.module: the layer must keep its input shape, got "
                                 f"{shape} -> {out} at copy {i}")
            mods.append(mod)
        return SerialModule(*mods), shape

    def __repr__(self) -> str:
        return f"repeat({self.layer!r}, {self.n})"


def repeat(layer: Layer, n: int) -> Repeat:
    """`layer` (a layer or a `serial`) applied n times, in a loop (NT's `stax.repeat`).

    Args:
        layer: a widenets layer whose output has the shape of its input.
        n: the number of applications, >= 1.

    Returns:
        A layer equivalent to serial(layer, ..., layer) (n times), each copy with its own
        parameters in the finite module; its kernel is computed in a loop over the single
        layer object, with memory independent of n.

    Example:
        >>> import torch, widenets as wn
        >>> block = wn.serial(wn.Dense(8, w_std=1.5), wn.Relu())
        >>> x = torch.randn(3, 8, dtype=torch.float64)
        >>> a = wn.repeat(block, 4).kernel(x).ntk
        >>> b = wn.serial(block, block, block, block).kernel(x).ntk
        >>> bool(torch.equal(a, b))
        True
    """
    return Repeat(layer, n)


class FanInConcat(Layer):
    """Concatenate the branches along the channel (feature) axis 1.

    Example:
        >>> net = wn.serial(wn.Dense(16), wn.FanOut(2),
        ...                 wn.parallel(wn.serial(wn.Relu(), wn.Dense(8)),
        ...                             wn.serial(wn.Erf(), wn.Dense(24))),
        ...                 wn.FanInConcat(), wn.Relu(), wn.Dense(1))
        >>> net.kernel(torch.randn(3, 4), get="ntk").shape
        torch.Size([3, 3])
        >>> net.module((4,), seed=0)(torch.randn(3, 4)).shape
        torch.Size([3, 1])
    """

    accepts_mask = True  # mask= goes on to the layers inside

    def apply_kernel(self, ks):
        ks = _check_fan_in(ks, "FanInConcat.kernel")
        if len({k.nngp.shape for k in ks}) != 1:
            raise ValueError(f"FanInConcat.kernel: branches must agree in all but the channel "
                             f"axis, got kernel shapes {[tuple(k.nngp.shape) for k in ks]}")
        total = sum(k.channels for k in ks)

        def mean(name):
            if getattr(ks[0], name) is None:
                return None
            return sum(k.channels / total * getattr(k, name) for k in ks)

        return ks[0].replace(nngp=mean("nngp"), ntk=mean("ntk"), cov1=mean("cov1"),
                             cov2=mean("cov2"), is_gaussian=all(k.is_gaussian for k in ks),
                             is_input=all(k.is_input for k in ks), channels=total,
                             sources=frozenset().union(*(k.sources for k in ks)))

    def build(self, in_shapes, generator, dtype):
        _check_fan_in(in_shapes, "FanInConcat.module")
        rest = {tuple(s[1:]) for s in in_shapes}
        if len(rest) != 1:
            raise ValueError(f"FanInConcat.module: branch shapes must agree beyond the channel "
                             f"axis, got {in_shapes}")
        return FanInConcatModule(), (sum(s[0] for s in in_shapes), *rest.pop())
