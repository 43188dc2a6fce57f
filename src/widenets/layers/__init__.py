"""Layers with two views: `.kernel(x1, x2)` (infinite width) and `.module(in_shape)` (finite)."""

from .activations import (
    ABRelu,
    Abs,
    Activation,
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
from .combinators import (
    FanInConcat,
    FanInProd,
    FanInSum,
    FanOut,
    Parallel,
    Repeat,
    Serial,
    parallel,
    repeat,
    serial,
)
from .conv import Conv
from .dense import Dense
from .elementwise import Elementwise
from .normalization import LayerNorm
from .patterns import EdgeList
from .pooling import AvgPool, Flatten, GlobalAvgPool, GlobalSumPool, SumPool

__all__ = [
    "Layer", "Dense", "Activation", "ABRelu", "Abs", "Elementwise", "Erf", "Gelu", "Identity",
    "LeakyRelu", "Relu", "Sin", "serial", "parallel", "Serial", "Parallel", "FanOut",
    "FanInSum", "FanInConcat", "Conv", "AvgPool", "GlobalAvgPool", "Flatten", "LayerNorm",
    "GlobalSelfAttention", "Aggregate", "EdgeList",
]
from .conv_local import ConvLocal  # noqa: E402
from .conv_transpose import ConvTranspose  # noqa: E402
from .dropout import Dropout  # noqa: E402
from .exponential import Exp, ExpNormalized, Gaussian  # noqa: E402
from .polynomial import Hermite, Monomial, Polynomial, RectifiedMonomial  # noqa: E402
from .sigmoidal import SigmoidLike, Sign  # noqa: E402
from .trigonometric import Cos, Gabor, Rbf  # noqa: E402

__all__ += [
    "Cos", "Rbf", "Gabor", "Exp", "Gaussian", "ExpNormalized", "Monomial", "RectifiedMonomial",
    "Polynomial", "Hermite", "Sign", "SigmoidLike", "SumPool", "GlobalSumPool", "FanInProd",
    "Repeat", "repeat", "Dropout", "ConvTranspose", "ConvLocal",
]
