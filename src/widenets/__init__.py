"""widenets: the theory of wide neural networks, runnable (PyTorch).

    import widenets as wn
    net = wn.serial(wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(), wn.Dense(1, w_std=1.5))
    k = net.kernel(x1, x2)            # infinite-width NNGP and NTK, float64
    model = net.module((784,), seed=0)  # the finite torch network it describes
"""

from . import data, empirical, finite_width, predict, tiles
from .empirical import (
    LayerStructure,
    TaylorModel,
    empirical_nngp,
    empirical_ntk,
    linearize,
    monte_carlo_kernel,
    register_structured_layer,
    taylor_expand,
)
from .hyperparameters import (
    hyperparameter_domains,
    hyperparameter_groups,
    hyperparameters,
    with_hyperparameters,
)
from .kernel import Kernel
from .layers import (
    ABRelu,
    Abs,
    Aggregate,
    AvgPool,
    Conv,
    ConvLocal,
    ConvTranspose,
    Cos,
    Dense,
    Dropout,
    EdgeList,
    Elementwise,
    Erf,
    Exp,
    ExpNormalized,
    FanInConcat,
    FanInProd,
    FanInSum,
    FanOut,
    Flatten,
    Gabor,
    Gaussian,
    Gelu,
    GlobalAvgPool,
    GlobalSelfAttention,
    GlobalSumPool,
    Hermite,
    Identity,
    Layer,
    LayerNorm,
    LeakyRelu,
    Monomial,
    Polynomial,
    Rbf,
    RectifiedMonomial,
    Relu,
    SigmoidLike,
    Sign,
    Sin,
    SumPool,
    parallel,
    repeat,
    serial,
)
from .layers.engine import get_engine, set_engine
from .lift import Lifted, lift

__version__ = "0.1.0"

__all__ = [
    # the kernel and layers
    "Kernel", "Layer", "Dense", "Conv", "ConvTranspose", "ConvLocal", "AvgPool", "SumPool",
    "GlobalAvgPool", "GlobalSumPool", "Flatten", "LayerNorm", "Dropout",
    "GlobalSelfAttention", "Aggregate", "EdgeList",
    "Relu", "LeakyRelu", "ABRelu", "Abs", "Identity", "Erf", "Gelu", "Sin", "Cos", "Rbf",
    "Gabor", "Exp", "Gaussian", "ExpNormalized", "Monomial", "RectifiedMonomial", "Polynomial",
    "Hermite", "Sign", "SigmoidLike", "Elementwise",
    "serial", "parallel", "repeat", "FanOut", "FanInSum", "FanInConcat", "FanInProd",
    "lift", "Lifted",
    # hyperparameters
    "hyperparameters", "hyperparameter_domains", "hyperparameter_groups", "with_hyperparameters",
    # empirical kernels
    "empirical_ntk", "empirical_nngp", "linearize", "taylor_expand", "TaylorModel",
    "LayerStructure", "register_structured_layer", "monte_carlo_kernel",
    # subpackages
    "empirical", "predict", "sklearn", "gpytorch", "tiles", "finite_width", "data",
    "__version__",
    # the kernel engine (fused or eager per-pair arithmetic)
    "set_engine", "get_engine",
]


def __getattr__(name):
    # `wn.sklearn` and `wn.gpytorch` import their libraries only when first used.
    if name in ("sklearn", "gpytorch"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
