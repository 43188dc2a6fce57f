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
from .kernel import Kernel
from .layers import (
    ABRelu,
    Abs,
    Aggregate,
    AvgPool,
    Conv,
    Dense,
    EdgeList,
    Elementwise,
    Erf,
    FanInConcat,
    FanInSum,
    FanOut,
    Flatten,
    Gelu,
    GlobalAvgPool,
    GlobalSelfAttention,
    Identity,
    Layer,
    LayerNorm,
    LeakyRelu,
    Relu,
    Sin,
    parallel,
    serial,
)
from .lift import Lifted, lift

__version__ = "0.1.0"

__all__ = [
    "Kernel", "Layer", "Dense", "Relu", "LeakyRelu", "ABRelu", "Abs", "Identity", "Erf", "Gelu",
    "Sin", "Elementwise", "serial", "parallel", "FanOut", "FanInSum", "FanInConcat",
    "Conv", "AvgPool", "GlobalAvgPool", "Flatten", "LayerNorm", "lift", "Lifted",
    "monte_carlo_kernel", "empirical", "predict", "sklearn", "gpytorch", "tiles", "__version__",
    "finite_width", "data",
    "empirical_ntk", "empirical_nngp", "linearize", "taylor_expand", "TaylorModel",
    "LayerStructure", "register_structured_layer",
    "GlobalSelfAttention", "Aggregate", "EdgeList",
]


def __getattr__(name):
    # `wn.sklearn` and `wn.gpytorch` import their libraries only when first used.
    if name in ("sklearn", "gpytorch"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

from .hyperparameters import (  # noqa: E402
    hyperparameter_domains,
    hyperparameter_groups,
    hyperparameters,
    with_hyperparameters,
)

__all__ += ["hyperparameters", "hyperparameter_domains", "hyperparameter_groups",
            "with_hyperparameters"]

# the rest of neural-tangents' layer catalogue (issue 11)
from .layers import (  # noqa: E402
    ConvLocal,
    ConvTranspose,
    Cos,
    Dropout,
    Exp,
    ExpNormalized,
    FanInProd,
    Gabor,
    Gaussian,
    GlobalSumPool,
    Hermite,
    Monomial,
    Polynomial,
    Rbf,
    RectifiedMonomial,
    SigmoidLike,
    Sign,
    SumPool,
    repeat,
)

__all__ += [
    "Cos", "Rbf", "Gabor", "Exp", "Gaussian", "ExpNormalized", "Monomial", "RectifiedMonomial",
    "Polynomial", "Hermite", "Sign", "SigmoidLike", "SumPool", "GlobalSumPool", "FanInProd",
    "repeat", "Dropout", "ConvTranspose", "ConvLocal",
]
