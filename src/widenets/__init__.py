"""widenets: the theory of wide neural networks, runnable (PyTorch).

    import widenets as wn
    net = wn.serial(wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(), wn.Dense(1, w_std=1.5))
    k = net.kernel(x1, x2)            # infinite-width NNGP and NTK, float64
    model = net.module((784,), seed=0)  # the finite torch network it describes
"""

from . import empirical  # noqa: F401  (wn.empirical subpackage)
from .empirical import monte_carlo_kernel
from .kernel import Kernel
from .layers import (
    ABRelu,
    Abs,
    AvgPool,
    Conv,
    Dense,
    Elementwise,
    Erf,
    FanInConcat,
    FanInSum,
    FanOut,
    Flatten,
    Gelu,
    GlobalAvgPool,
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
    "monte_carlo_kernel", "__version__",
    "Conv", "AvgPool", "GlobalAvgPool", "Flatten", "LayerNorm", "lift", "Lifted",
]
