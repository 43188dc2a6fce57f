"""Which modules the "structured" NTK accelerates: a small registry of layer descriptions.

A layer is accelerated when its output is linear in each of its parameters in one of four
known ways (`LayerStructure.kind`):

* "linear":    y[..., o] = s_w Σ_k W[o, k] x[..., k] + s_b b[o]            (nn.Linear)
* "conv":      y = s_w conv(x, W; stride, padding, dilation, groups) + s_b b (nn.Conv1d/2d/3d)
* "embedding": y[..., :] = W[idx[...], :]                                  (nn.Embedding)
* "affine":    y = s_w W ⊙ z(x) + s_b b, W and b broadcast along the channel axis 1 or over
               the trailing axes, z a parameter-free map of the input (the normalized input of
               nn.LayerNorm, nn.GroupNorm, nn.BatchNorm in eval mode, nn.InstanceNorm)

`s_w`, `s_b` are forward multipliers (1 for torch layers; σw/√n and σb for widenets' own
`DenseModule` and `ConvModule` in the NTK parameterization). A module type joins with

    register_structured_layer(MyConv, lambda m: LayerStructure("conv", ...))

where the function returns None for configurations it cannot describe (those modules then go
through the generic autograd path). Before a description is used it is verified once per call of
`empirical_ntk` against autograd (see `structured.make_plan`), so a wrong description falls back
to the generic path instead of giving a wrong kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from ..layers.conv import ConvModule
from ..layers.dense import DenseModule
from ..layers.normalization import LayerNormModule

__all__ = ["LayerStructure", "register_structured_layer", "describe_module", "KINDS"]

KINDS = ("linear", "conv", "embedding", "affine")


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
        padding: per spatial axis ints or (left, right) pairs, or "same" / "valid" (conv
            only).
        padding_mode: "zeros", "reflect", "replicate" or "circular" (conv only).
        groups: conv groups.
        padding_idx: embedding row that receives no gradient (embedding only).
        transform: z = transform(x), the parameter-free part of an "affine" layer.
        param_layout: "channel" (parameters index axis 1 of the output) or "trailing"
            (parameters cover the trailing axes, as LayerNorm's normalized_shape); affine only.

    Example:
        >>> class MyLinear(torch.nn.Linear):
        ...     pass
        >>> wn.register_structured_layer(MyLinear, lambda m: wn.LayerStructure("linear"))
        >>> model = torch.nn.Sequential(MyLinear(4, 8), torch.nn.ReLU(), MyLinear(8, 1))
        >>> wn.empirical_ntk(model, torch.randn(3, 4), implementation="structured").shape
        torch.Size([3, 3])
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
    transform: Callable | None = None
    param_layout: str = "channel"

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

    Example:
        >>> class MyLinear(torch.nn.Linear):
        ...     pass
        >>> wn.register_structured_layer(MyLinear, lambda m: wn.LayerStructure("linear"))
        >>> model = torch.nn.Sequential(MyLinear(4, 8), torch.nn.ReLU(), MyLinear(8, 1))
        >>> wn.empirical_ntk(model, torch.randn(3, 4), implementation="structured").shape
        torch.Size([3, 3])
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


def _affine_roles(m) -> dict:
    return {"weight": "weight" if getattr(m, "weight", None) is not None else None,
            "bias": "bias" if getattr(m, "bias", None) is not None else None}


def _layer_norm(m: nn.LayerNorm) -> LayerStructure | None:
    if getattr(m, "weight", None) is None:
        return None
    return LayerStructure(
        "affine", bias=_affine_roles(m)["bias"], param_layout="trailing",
        transform=lambda x, m=m: F.layer_norm(x, m.normalized_shape, None, None, m.eps))


def _group_norm(m: nn.GroupNorm) -> LayerStructure | None:
    if getattr(m, "weight", None) is None:
        return None
    return LayerStructure(
        "affine", bias=_affine_roles(m)["bias"],
        transform=lambda x, m=m: F.group_norm(x, m.num_groups, None, None, m.eps))


def _batch_norm(m: nn.modules.batchnorm._BatchNorm) -> LayerStructure | None:
    # Eval mode with running statistics only (empirical_ntk refuses the others).
    if getattr(m, "weight", None) is None or m.training or not m.track_running_stats:
        return None
    return LayerStructure(
        "affine", bias=_affine_roles(m)["bias"],
        transform=lambda x, m=m: F.batch_norm(x, m.running_mean, m.running_var, None, None,
                                              False, 0.0, m.eps))


def _instance_norm(m: nn.modules.instancenorm._InstanceNorm) -> LayerStructure | None:
    if getattr(m, "weight", None) is None or m.track_running_stats:
        return None
    return LayerStructure(
        "affine", bias=_affine_roles(m)["bias"],
        transform=lambda x, m=m: F.instance_norm(x, None, None, None, None, True, 0.0, m.eps))


def _dense_module(m: DenseModule) -> LayerStructure:
    # DenseModule.forward: F.linear(x, W) * w_scale + b * b_scale.
    return LayerStructure("linear", bias="bias" if m.bias is not None else None,
                          weight_scale=float(m.w_scale), bias_scale=float(m.b_scale))


def _widenets_conv(m: ConvModule) -> LayerStructure:
    # ConvModule.forward: pad (zeros or circular, (left, right) per axis), conv with stride,
    # times w_scale, plus b * b_scale.
    return LayerStructure("conv", bias="bias" if m.bias is not None else None,
                          weight_scale=float(m.w_scale), bias_scale=float(m.b_scale),
                          stride=tuple(m.stride), dilation=(1,) * len(m.kernel_size),
                          padding=tuple((left, right) for left, right, _ in m.pads),
                          padding_mode="circular" if m.circular else "zeros")


def _widenets_layer_norm(m: LayerNormModule) -> LayerStructure | None:
    if not m.affine:
        return None

    def normalize(x, m=m):
        v = x.var(1, unbiased=False, keepdim=True)
        return (x - x.mean(1, keepdim=True)) / (v + m.eps).sqrt()

    return LayerStructure("affine", transform=normalize)


register_structured_layer(nn.Linear, _linear)
register_structured_layer(nn.Conv1d, _conv)
register_structured_layer(nn.Conv2d, _conv)
register_structured_layer(nn.Conv3d, _conv)
register_structured_layer(nn.Embedding, _embedding)
register_structured_layer(nn.LayerNorm, _layer_norm)
register_structured_layer(nn.GroupNorm, _group_norm)
register_structured_layer(nn.modules.batchnorm._BatchNorm, _batch_norm)
register_structured_layer(nn.modules.instancenorm._InstanceNorm, _instance_norm)
register_structured_layer(DenseModule, _dense_module)
register_structured_layer(ConvModule, _widenets_conv)
register_structured_layer(LayerNormModule, _widenets_layer_norm)
