"""Layers with two views: `.kernel(x1, x2)` (infinite width) and `.module(in_shape)` (finite)."""

from .activations import (
    ABRelu,
    Abs,
    Activation,
    Elementwise,
    Erf,
    Gelu,
    Identity,
    LeakyRelu,
    Relu,
    Sin,
)
from .aggregate import Aggregate
from .attention import GlobalSelfAttention
from .base import Layer
from .combinators import FanInConcat, FanInSum, FanOut, Parallel, Serial, parallel, serial
from .conv import Conv
from .dense import Dense
from .normalization import LayerNorm
from .patterns import EdgeList
from .pooling import AvgPool, Flatten, GlobalAvgPool

__all__ = [
    "Layer", "Dense", "Activation", "ABRelu", "Abs", "Elementwise", "Erf", "Gelu", "Identity",
    "LeakyRelu", "Relu", "Sin", "serial", "parallel", "Serial", "Parallel", "FanOut",
    "FanInSum", "FanInConcat", "Conv", "AvgPool", "GlobalAvgPool", "Flatten", "LayerNorm",
    "GlobalSelfAttention", "Aggregate", "EdgeList",
]
