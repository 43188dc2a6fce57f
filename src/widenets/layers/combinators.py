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
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernel import Kernel
from .base import Layer

__all__ = ["serial", "parallel", "Serial", "Parallel", "FanOut", "FanInSum", "FanInConcat"]


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


class FanInConcatModule(nn.Module):
    def forward(self, xs):
        return torch.cat(list(xs), dim=1)


# ---------------------------------------------------------------------------- layers
class Serial(Layer):
    """Layers applied one after another (use `serial(...)`)."""

    accepts_mask = True  # mask= goes on to the layers inside

    def __init__(self, *layers: Layer):
        self.layers = _check_layers(layers, "serial")

    def sublayers(self):
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
    """Compose layers in sequence: serial(Dense(512), Relu(), Dense(1))."""
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
    """Apply `layers[i]` to branch i of a FanOut."""
    return Parallel(*layers)


class FanOut(Layer):
    """Copy the input into `n` branches."""

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
    """Sum the branches (residual connections). See the module docstring for exactness."""

    accepts_mask = True  # mask= goes on to the layers inside

    def apply_kernel(self, ks):
        ks = _check_fan_in(ks, "FanInSum.kernel")
        chans = {k.channels for k in ks}
        if len(chans) != 1:
            raise ValueError(f"FanInSum.kernel: branches must have equal widths to be summed, "
                             f"got {[k.channels for k in ks]}")
        if sum(not k.is_gaussian for k in ks) > 1:
            raise ValueError("FanInSum.kernel: at most one branch may be non-Gaussian (end the "
                             "others with a Dense or Conv); otherwise the branches are "
                             "correlated and the kernel of their sum is not the sum of kernels")
        seen: set = set()
        for k in ks:
            if seen & k.sources:
                raise ValueError("FanInSum.kernel: two branches come from the same weight "
                                 "layer (e.g. two Identity branches), so they are correlated "
                                 "and their kernels do not add; give one branch its own Dense "
                                 "or Conv")
            seen |= k.sources
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


class FanInConcat(Layer):
    """Concatenate the branches along the channel (feature) axis 1."""

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
