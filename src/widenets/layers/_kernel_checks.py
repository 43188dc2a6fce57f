"""Checks of a computed kernel: non-finite entries (per block) and underflow (on the result),
with a diagnosis of the first layer at fault. Below `base`, `_schedule` and `combinators`: a
network's stages are read through `Layer.stages()`, not by importing the combinators."""

from __future__ import annotations

import torch

from ..kernel import Kernel
from ._inputs import input_kernel

__all__ = ["check_finite", "check_underflow", "strip_bookkeeping", "all_finite"]


def check_finite(k, fname: str, *, layer=None, k0: Kernel | None = None) -> None:
    """Raise FloatingPointError if a Kernel (or list of them, one per branch) has NaN/inf.

    The message says which it is: inf is an overflow (too deep or too large w_std for the
    dtype, or inputs whose inner products overflow); NaN from finite values is a domain error
    (0/0, a function outside its domain). Given the network `layer` and its input Kernel `k0`
    (or a function of the offending tensor that builds one, called on the error path only), it
    names the first layer of a serial network whose output is not finite; without them a NaN
    is not called "not an overflow", since a later layer can turn an inf into a NaN.
    """
    for kk in k if isinstance(k, list) else [k]:
        _check_finite(kk, fname, layer, k0)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of t is finite, in one reduction pass when it is: a finite sum
    means no entry is inf or NaN (inf + finite = inf, inf - inf = NaN, NaN propagates); a
    non-finite sum (or a sum that overflowed) is decided by the exact elementwise test."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _check_finite(k: Kernel, fname: str, layer, k0) -> None:
    for name in ("nngp", "ntk"):
        t = getattr(k, name)
        if t is None or all_finite(t):
            continue
        if callable(k0):                      # built on the error path only
            k0 = k0(t)
        where, first_inf = _first_nonfinite_layer(layer, k0)
        if first_inf is None and where == "":
            # not diagnosed: an inf anywhere says overflow; NaN alone may still come from an
            # overflow that a later formula turned into inf/inf or inf - inf
            if bool(torch.isinf(t).any()):
                first_inf = True
        if first_inf:
            remedy = ("scale the inputs down, use smaller w_std or fewer layers"
                      if t.dtype == torch.float64 else
                      "use dtype=torch.float64, smaller w_std or fewer layers")
            raise FloatingPointError(
                f"{fname}: the {name} kernel has non-finite entries: it overflowed to infinity "
                f"in {t.dtype}{where}; {remedy}")
        if first_inf is False:
            raise FloatingPointError(
                f"{fname}: the {name} kernel has non-finite entries: NaN{where} from finite "
                f"values (not an overflow: a 0/0 or a function evaluated outside its domain, "
                f"e.g. LayerNorm(eps=0) on a zero input, or an activation returning NaN)")
        raise FloatingPointError(
            f"{fname}: the {name} kernel has non-finite entries (NaN): an overflow turned into "
            f"inf/inf or inf - inf by a later layer, or a 0/0 or a function evaluated outside "
            f"its domain (e.g. LayerNorm(eps=0) on a zero input); try inputs scaled down, "
            f"smaller w_std{'' if t.dtype == torch.float64 else ', dtype=torch.float64'}")


def _first_nonfinite_layer(layer, k0) -> tuple[str, bool | None]:
    """(' (first at layer i of n: Name)', whether that layer's output had inf) for a serial
    network, or (' (already in the inputs' inner products)', True) when the input Kernel
    itself overflowed; on the error path only; ('', None) when unknown."""
    if k0 is not None and any(t is not None and not bool(torch.isfinite(t).all())
                              for t in (k0.nngp, k0.cov1, k0.cov2)):
        return " (already in the inputs' inner products: the inputs are too large)", True
    stages = None if layer is None else layer.stages()
    if stages is None or k0 is None:
        return "", None
    k = k0
    try:
        for i, lay in enumerate(stages):
            k = lay.apply_kernel(k)
            for kk in k if isinstance(k, list) else [k]:
                for t in (kk.nngp, kk.ntk, kk.cov1):
                    if t is not None and not bool(torch.isfinite(t).all()):
                        return (f" (first at layer {i + 1} of {len(stages)}: {lay.name})",
                                bool(torch.isinf(t).any()))
    except Exception:       # noqa: BLE001 - a diagnosis must not mask the real error
        return "", None
    return "", None


def strip_bookkeeping(k):
    """The returned Kernel: without the per-call bookkeeping (identical-input pairs, LayerNorm
    γ records) that only layers inside one `kernel` call may use."""
    if isinstance(k, list):
        return [strip_bookkeeping(kk) for kk in k]
    if k.same_input is None and k.gamma_term is None:
        return k
    return k.replace(same_input=None, gamma_term=None)


def check_underflow(layer, k, x1, x2, fname: str) -> None:
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
    stages = layer.stages()
    if stages is None or x.ndim != 2:
        return ""
    tiny = torch.finfo(dtype).tiny
    try:
        k = input_kernel(x, None, want_ntk=False)
        for i, lay in enumerate(stages):
            k = lay.apply_kernel(k)
            if isinstance(k, list):
                return ""
            if bool((k.cov1.abs() < tiny).any()):
                return f" (from layer {i + 1} of {len(stages)}: {lay.name} on)"
    except Exception:       # noqa: BLE001 - a diagnosis must not mask the real error
        return ""
    return ""

