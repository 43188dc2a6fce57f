"""Which modules the "structured" NTK accelerates: a small registry of layer descriptions.

A layer is accelerated when its output is linear in each of its parameters in one of three
known ways (`LayerStructure.kind`):

* "linear":    y[..., o] = s_w Σ_k W[o, k] x[..., k] + s_b b[o]            (nn.Linear)
* "conv":      y = s_w conv(x, W; stride, padding, dilation, groups) + s_b b (nn.Conv1d/2d/3d)
* "embedding": y[..., :] = W[idx[...], :]                                  (nn.Embedding)

`s_w`, `s_b` are forward multipliers (1 for torch layers; σw/√n and σb for widenets' own
`DenseModule` in the NTK parameterization). A module type joins with

    register_structured_layer(MyConv, lambda m: LayerStructure("conv", ...))

where the function returns None for configurations it cannot describe (those modules then go
through the generic autograd path). Before a description is used it is verified once per call of
`empirical_ntk` against autograd (see `structured.make_plan`), so a wrong description falls back
to the generic path instead of giving a wrong kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..layers.dense import DenseModule

__all__ = ["LayerStructure", "register_structured_layer", "describe_module", "KINDS"]

KINDS = ("linear", "conv", "embedding")


@dataclass(frozen=True)
class LayerStructure:
    """How a module's output depends on its parameters.

    Attributes:
        kind: "linear", "conv" or "embedding" (see the module docstring).
        weight: attribute name of the weight; shape (out, in) for linear, (C_out, C_in/groups,
            *kernel_size) for conv, (num_embeddings, dim) for embedding.
        bias: attribute name of the bias (shape (out,)), or None.
        weight_scale: s_w, multiplier applied to the weight's contribution in forward.
        bias_scale: s_b, multiplier applied to the bias in forward.
        stride, dilation: per spatial axis (conv only).
        padding: per spatial axis ints, or "same" / "valid" (conv only).
        padding_mode: "zeros", "reflect", "replicate" or "circular" (conv only).
        groups: conv groups.
        padding_idx: embedding row that receives no gradient (embedding only).
    """

    kind: str
    weight: str = "weight"
    bias: str | None = "bias"
    weight_scale: float = 1.0
    bias_scale: float = 1.0
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    padding_mode: str = "zeros"
    padding_idx: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"LayerStructure: kind must be one of {KINDS}, got {self.kind!r}")

    def param_attrs(self) -> tuple[tuple[str, str], ...]:
        """(role, attribute) pairs: role "weight" or "bias"."""
        out = (("weight", self.weight),)
        return out + ((("bias", self.bias),) if self.bias is not None else ())


_REGISTRY: dict[type, Callable[[nn.Module], LayerStructure | None]] = {}


def register_structured_layer(module_type: type,
                              describe: Callable[[nn.Module], LayerStructure | None]) -> None:
    """Teach the "structured" NTK a module type.

    Args:
        module_type: an nn.Module subclass (subclasses of it match too, unless registered
            themselves).
        describe: module -> LayerStructure, or None when this instance cannot be described.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_structured_layer: module_type must be an nn.Module subclass, "
                        f"got {module_type!r}")
    if not callable(describe):
        raise TypeError(f"register_structured_layer: describe must be callable, got "
                        f"{describe!r}")
    _REGISTRY[module_type] = describe


def describe_module(module: nn.Module) -> LayerStructure | None:
    """The registered description of `module` (nearest registered base class), or None."""
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls](module)
    return None


# --------------------------------------------------------------------------- built-in layers
def _linear(m: nn.Linear) -> LayerStructure:
    return LayerStructure("linear", bias="bias" if m.bias is not None else None)


def _conv(m: nn.modules.conv._ConvNd) -> LayerStructure | None:
    if m.transposed:
        return None
    return LayerStructure("conv", bias="bias" if m.bias is not None else None,
                          stride=tuple(m.stride), dilation=tuple(m.dilation),
                          padding=m.padding if isinstance(m.padding, str) else tuple(m.padding),
                          groups=m.groups, padding_mode=m.padding_mode)


def _embedding(m: nn.Embedding) -> LayerStructure | None:
    # max_norm renormalizes rows in place, scale_grad_by_freq and sparse change the backward:
    # leave those to autograd.
    if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
        return None
    return LayerStructure("embedding", bias=None, padding_idx=m.padding_idx)


def _dense_module(m: DenseModule) -> LayerStructure:
    # DenseModule.forward: F.linear(x, W) * w_scale + b * b_scale.
    return LayerStructure("linear", bias="bias" if m.bias is not None else None,
                          weight_scale=float(m.w_scale), bias_scale=float(m.b_scale))


register_structured_layer(nn.Linear, _linear)
register_structured_layer(nn.Conv1d, _conv)
register_structured_layer(nn.Conv2d, _conv)
register_structured_layer(nn.Conv3d, _conv)
register_structured_layer(nn.Embedding, _embedding)
register_structured_layer(DenseModule, _dense_module)
