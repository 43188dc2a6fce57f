"""GPyTorch kernels from widenets networks: `NNGPKernel(net)` and `NTKKernel(net)`.

    import gpytorch, widenets as wn
    net = wn.serial(wn.Dense(512), wn.Relu(), wn.Dense(1))
    covar = wn.gpytorch.NNGPKernel(net, tied=True)      # raw_all_w_std, raw_all_b_std
    model = MyExactGP(x, y, gpytorch.likelihoods.GaussianLikelihood(), covar)

The network's hyperparameters (`wn.hyperparameters`) become GPyTorch parameters: positive ones
(σw, σb, ...) through a `Positive` constraint, real ones unconstrained, each with an optional
prior. ExactGP, its likelihoods, its solvers and its training loop work unchanged. The kernel
is evaluated by `net.kernel` in float64 (exact symmetric diagonal when x1 is x2) and returned
in the inputs' dtype. Needs the optional extra: `pip install widenets[gp]`.

`diag=True` (GPyTorch's predictive variances) computes only the n kernels K(x1_i, x2_i), O(n):
the n inputs become the n positions of one channels-first input (x.T[None]) and the network
runs in the diagonal layout, which for position-wise layers (Dense, activations, LayerNorm,
the fan-in/fan-out combinators) is, entry by entry, the same computation as the flat kernel's
diagonal (docs/math.md §dense-positions). Networks with any other layer (e.g. Dropout, whose
kernel depends on whether two inputs are the same one) take the diagonals of 256 x 256 blocks
of the flat kernel instead: O(256 n), still exact.
"""

from __future__ import annotations

import re

import torch

try:
    import gpytorch
    from gpytorch.constraints import Positive
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("widenets.gpytorch needs GPyTorch: pip install 'widenets[gp]'") from exc

from .hyperparameters import (
    hyperparameter_domains,
    hyperparameter_groups,
    hyperparameters,
    match_names,
)
from .layers.activations import Activation
from .layers.base import Layer, as_number
from .layers.combinators import (
    FanInConcat,
    FanInProd,
    FanInSum,
    FanOut,
    Parallel,
    Repeat,
    Serial,
)
from .layers.dense import Dense
from .layers.normalization import LayerNorm

__all__ = ["NNGPKernel", "NTKKernel"]


#: layers whose kernel on channels-first inputs acts on every position as on one flat input
#: (Dense on positions is a 1x1 convolution; activations and LayerNorm are per position)
_POSITION_WISE = (Activation, Dense, LayerNorm, FanInConcat, FanInProd, FanInSum, FanOut,
                 Parallel, Repeat, Serial)
_DIAGONAL_BLOCK = 256


def _kernel_diagonal(net: Layer, x1: torch.Tensor, x2: torch.Tensor | None, get: str,
                    dtype: torch.dtype) -> torch.Tensor:
    """K(x1_i, x2_i) for i = 1..n (x2 None: x1), flat (n, d) inputs, without the n x n matrix.

    Position-wise networks: one call on the inputs as positions, diagonal layout (O(n)).
    Others: the diagonals of _DIAGONAL_BLOCK-sized blocks of the flat kernel (O(block·n))."""
    n = x1.shape[0]
    if all(isinstance(lay, _POSITION_WISE) for lay in net.walk()):
        pos1 = x1.T[None]                                        # (1, d, n): inputs at positions
        pos2 = None if x2 is None else x2.T[None]
        k = net.kernel(pos1, pos2, get=get, dtype=dtype, layout="diagonal")
        if isinstance(k, torch.Tensor) and k.shape == (1, 1, n):
            return k.reshape(n)
    blocks = [(net.kernel(x1[i:i + _DIAGONAL_BLOCK],
                          None if x2 is None else x2[i:i + _DIAGONAL_BLOCK], get=get,
                          dtype=dtype)).diagonal() for i in range(0, n, _DIAGONAL_BLOCK)]
    return torch.cat(blocks)


def _parameter_name(label: str) -> str:
    """A group label ("0.w_std", "*.w_std") as a torch parameter name ("0_w_std", "all_w_std")."""
    return re.sub(r"\W", "_", label.replace("*", "all"))


class _NetworkKernel(gpytorch.kernels.Kernel):
    get = "nngp"
    is_stationary = False

    def __init__(self, net: Layer, *, names=None, tied=False, priors: dict | None = None,
                 dtype: torch.dtype = torch.float64, **kwargs):
        func = type(self).__name__
        if not isinstance(net, Layer):
            raise TypeError(f"{func}: net must be a widenets network, got {type(net).__name__}")
        super().__init__(**kwargs)
        self.net, self.dtype_ = net, dtype
        self.groups = hyperparameter_groups(net, names=names, tied=tied, func=func)
        domains = hyperparameter_domains(net)
        start = {n: float(as_number(v)) for n, v in hyperparameters(net).items()}
        self._raw_names = {}
        for label, members in self.groups.items():
            raw = "raw_" + _parameter_name(label)
            value = torch.tensor(start[members[0]], dtype=torch.float64)
            if domains[members[0]] == "positive":
                constraint = Positive()
                value = constraint.inverse_transform(value.clamp(min=1e-4))
            else:
                constraint = None
            self.register_parameter(raw, torch.nn.Parameter(value))
            if constraint is not None:
                self.register_constraint(raw, constraint)
            self._raw_names[label] = raw
        for pat, labels in match_names(self.groups, (priors or {}).keys(), func=func,
                                       arg="priors").items():
            for label in labels:
                raw = self._raw_names[label]
                self.register_prior(f"{raw[4:]}_prior", priors[pat],
                                    lambda m, r=raw: m.value(r),
                                    lambda m, v, r=raw: m.set_value(r, v))

    def value(self, raw: str) -> torch.Tensor:
        """The constrained value of one raw parameter."""
        c = self.constraint_for_parameter_name(raw)
        p = getattr(self, raw)
        return p if c is None else c.transform(p)

    def set_value(self, raw: str, value) -> None:
        """Set one parameter by its constrained value."""
        value = torch.as_tensor(value, dtype=torch.float64)
        c = self.constraint_for_parameter_name(raw)
        self.initialize(**{raw: value if c is None else c.inverse_transform(value)})

    def hyperparameter_values(self) -> dict:
        """Every network hyperparameter by name (`wn.hyperparameters` names), as tensors."""
        out = {}
        for label, members in self.groups.items():
            v = self.value(self._raw_names[label])
            out.update({m: v for m in members})
        return out

    def fitted_net(self) -> Layer:
        """The network with the current values, as floats."""
        return self.net.with_hyperparameters(
            {k: float(v.detach()) for k, v in self.hyperparameter_values().items()})

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        func = f"{type(self).__name__}.forward"
        if last_dim_is_batch or x1.ndim != 2 or x2.ndim != 2:
            raise ValueError(f"{func}: expected (n, d) inputs without batch dimensions, got "
                             f"{tuple(x1.shape)} and {tuple(x2.shape)}")
        net = self.net.with_hyperparameters(self.hyperparameter_values())
        same = x1 is x2 or (x1.shape == x2.shape and torch.equal(x1, x2))
        if diag:
            if x1.shape != x2.shape:
                raise ValueError(f"{func}: diag=True needs x1 and x2 of the same shape (the "
                                 f"kernels K(x1_i, x2_i)), got {tuple(x1.shape)} and "
                                 f"{tuple(x2.shape)}")
            k = _kernel_diagonal(net, x1, None if same else x2, self.get, self.dtype_)
        else:
            k = net.kernel(x1, None if same else x2, get=self.get, dtype=self.dtype_)
        return k.to(x1.dtype)


class NNGPKernel(_NetworkKernel):
    """The NNGP kernel of a widenets network as a `gpytorch.kernels.Kernel`.

    Args:
        net: a widenets network (its `wn.hyperparameters` become GPyTorch parameters).
        names: which hyperparameters to expose as parameters (None: all; names or globs).
        tied: False, True (one parameter per attribute name), or dict label -> glob.
        priors: dict label-or-glob -> `gpytorch.priors.Prior`.
        dtype: precision of the kernel computation (float64).

    Example:
        >>> import torch, widenets as wn
        >>> k = wn.gpytorch.NNGPKernel(wn.serial(wn.Dense(8), wn.Erf(), wn.Dense(1)), tied=True)
        >>> sorted(n for n, _ in k.named_parameters())
        ['raw_all_b_std', 'raw_all_w_std']
        >>> k(torch.randn(4, 3, dtype=torch.float64)).to_dense().shape
        torch.Size([4, 4])
    """

    get = "nngp"


class NTKKernel(_NetworkKernel):
    """The NTK of a widenets network as a `gpytorch.kernels.Kernel` (as `NNGPKernel`).

    Example:
        >>> import torch, widenets as wn
        >>> k = wn.gpytorch.NTKKernel(wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1)))
        >>> k(torch.randn(4, 3, dtype=torch.float64)).to_dense().shape
        torch.Size([4, 4])
    """

    get = "ntk"
