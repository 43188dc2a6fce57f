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
from .layers.base import Layer, as_number

__all__ = ["NNGPKernel", "NTKKernel"]


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
        k = net.kernel(x1, None if same else x2, get=self.get, dtype=self.dtype_)
        k = k.to(x1.dtype)
        return k.diagonal() if diag else k


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
