"""Linearized and Taylor-expanded models around the current parameters p0.

    f_lin(x; p)    = f(x; p0) + J(x; p0) (p - p0)                    (Lee et al. 2019, eq. 5;
                                                                      docs/math.md §linearization)
    f_taylor(x; p) = Σ_{k=0}^{K} (1/k!) D^k f(x; p0)[p - p0, ..., p - p0]

Both are computed with forward-mode products (`torch.func.jvp`, nested K times), never with a
Jacobian. The returned object is an `nn.Module` whose trainable parameters start at p0, so it can
be trained with any torch optimizer; called as f(x, params) it evaluates at a given dict instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import jvp

from ._target import resolve_target
from .attention import math_attention

__all__ = ["TaylorModel", "linearize", "taylor_expand"]


class TaylorModel(nn.Module):
    """Degree-K Taylor expansion of a model in its parameters around p0.

    Attributes:
        degree: K (1 = the linearized model).
        names: trainable parameter names, in the order of `self.params`.
        params: nn.ParameterList of the expansion's own parameters (initialized at p0).

    Call as `f(x)` (uses `self.params`) or `f(x, params)` with params a dict name -> tensor.
    Buffers p0 (the expansion point) move with `.to()`; the wrapped model is not a submodule
    (its parameters are not trained through this module) and must live on the same device.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 2))
        >>> x1, x2 = torch.randn(3, 4), torch.randn(5, 4)
        >>> f_lin = wn.linearize(model)
        >>> isinstance(f_lin, wn.TaylorModel), f_lin.degree
        (True, 1)
    """

    def __init__(self, model, degree: int, *, params=None, func: str = "taylor_expand"):
        super().__init__()
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"{func}: degree must be an int >= 1, got {degree!r}")
        target = resolve_target(model, params, func=func)
        self.degree = degree
        self.names = tuple(target.params)
        object.__setattr__(self, "_target", target)     # not a submodule on purpose
        for i, v in enumerate(target.params.values()):
            self.register_buffer(f"p0_{i}", v.detach().clone())
        self.params = nn.ParameterList([nn.Parameter(v.detach().clone())
                                        for v in target.params.values()])

    @property
    def p0(self) -> dict[str, torch.Tensor]:
        """The expansion point, by name."""
        return {k: getattr(self, f"p0_{i}") for i, k in enumerate(self.names)}

    def params_dict(self) -> dict[str, torch.Tensor]:
        """The module's own (trainable) parameters, by name."""
        return dict(zip(self.names, self.params, strict=True))

    def terms(self, x: torch.Tensor, params=None) -> list[torch.Tensor]:
        """[f(x; p0), D f[δ], D² f[δ, δ], ..., D^K f[δ^K]] with δ = params - p0 (no 1/k!)."""
        p = self._check(params)
        p0 = self.p0
        delta = {k: p[k] - p0[k] for k in self.names}
        fn = self._target.fn

        def expand(order):
            if order == 0:
                return lambda q: (fn(q, x),)

            inner = expand(order - 1)

            def g(q):
                primal, tangent = jvp(inner, (q,), (delta,))
                return (*primal, tangent[-1])

            return g

        try:
            with math_attention():
                return list(expand(self.degree)(p0))
        except NotImplementedError as err:
            raise NotImplementedError(
                f"{type(self).__name__}: the expansion uses forward-mode AD (jvp), which an op "
                f"of this model does not support ({err}); for fused kernels such as "
                f"nn.TransformerEncoderLayer's eval fast path, keep the module in train mode "
                f"with dropout=0") from err

    def forward(self, x: torch.Tensor, params=None) -> torch.Tensor:
        """Σ_k D^k f(x; p0)[δ^k] / k!; x as the model takes it."""
        out = None
        for k, term in enumerate(self.terms(x, params)):
            term = term if k < 2 else term / math.factorial(k)
            out = term if out is None else out + term
        return out

    def _check(self, params) -> dict[str, torch.Tensor]:
        if params is None:
            return self.params_dict()
        if not isinstance(params, dict):
            raise TypeError(f"{type(self).__name__}: params must be a dict name -> tensor, got "
                            f"{type(params).__name__}")
        missing = sorted(set(self.names) - set(params))
        extra = sorted(set(params) - set(self.names))
        if missing or extra:
            raise ValueError(f"{type(self).__name__}: params keys must be the expanded "
                             f"parameters; missing {missing[:5]}, unexpected {extra[:5]}")
        return dict(params)

    def extra_repr(self) -> str:
        return f"degree={self.degree}, params={len(self.names)} tensors"


def linearize(model, *, params=None) -> TaylorModel:
    """The linearized model f_lin(x; p) = f(x; p0) + J(x; p0)(p - p0), via jvp.

    Args:
        model: an nn.Module or a function f(params, x) (then params is required). As in
            `empirical_ntk`, a BatchNorm in train mode or an active Dropout raises ValueError.
        params: None for the module's trainable parameters (p0 = their current values), or a
            dict giving p0.

    Returns:
        A `TaylorModel` of degree 1: call f_lin(x, params) with a dict, or f_lin(x) with its
        own parameters (initialized at p0), which any torch optimizer can train.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 2))
        >>> x1, x2 = torch.randn(3, 4), torch.randn(5, 4)
        >>> f_lin = wn.linearize(model)
        >>> bool(torch.allclose(f_lin(x1), model(x1)))        # equal at the expansion point
        True
    """
    return TaylorModel(model, 1, params=params, func="linearize")


def taylor_expand(model, degree: int, *, params=None) -> TaylorModel:
    """Taylor expansion of degree `degree` in the parameters around p0 (nested jvp).

    Args:
        model, params: as in `linearize`.
        degree: K >= 1; the error of the expansion at p0 + εv is O(ε^(K+1)).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 2))
        >>> x1, x2 = torch.randn(3, 4), torch.randn(5, 4)
        >>> f2 = wn.taylor_expand(model, 2)
        >>> bool(torch.allclose(f2(x1), model(x1)))
        True
    """
    return TaylorModel(model, degree, params=params, func="taylor_expand")
