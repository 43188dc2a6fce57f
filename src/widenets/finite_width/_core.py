"""Shared machinery of `widenets.finite_width`: parameters as dicts, the functional model, the
empirical NTK (one helper), Jacobians, Hessian-vector products, input checks.

Everything here works on any `torch.nn.Module` whose trainable parameters (requires_grad=True)
are the θ of the theory; frozen parameters and buffers are left alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from .._checks import as_input_tensor
from ..empirical import empirical_ntk

__all__ = ["ntk", "params_of", "outputs", "jacobian", "jvp_outputs", "vjp_outputs", "hvp",
           "CONVENTIONS", "flow_rate", "check_model", "check_x", "check_y",
           "load_params", "flat_dot"]

#: Loss conventions. "mean": L = (1/2n) Σ_i ||f(x_i) - y_i||² (Huang & Yau 2020, seed 000,
#: eq. 2); "sum": L = (1/2) Σ_i ||f(x_i) - y_i||² (Lee et al. 2019, seed 002, §2.2).
CONVENTIONS = ("mean", "sum")


def ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """The empirical NTK used everywhere in `finite_width` (the ONE switch point).

    (n1, n2) kernel, mean over the outputs of J(x1) J(x2)ᵀ ("trace" mode), by the fastest
    exact implementation `wn.empirical_ntk` estimates (no full Jacobian in memory).
    """
    return empirical_ntk(model, x1, x2, mode="trace", implementation="auto")


def flow_rate(convention: str, learning_rate: float, n: int) -> float:
    """c in df/dt = -c K2 r: η/n for the "mean" loss (seed 000, eq. 9), η for "sum" (seed 002)."""
    return learning_rate / n if convention == "mean" else learning_rate


# ------------------------------------------------------------------------------ parameters
def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, detached (the θ of the theory)."""
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def load_params(model: nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Copy `params` into the model's parameters in place."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in params.items():
            named[k].copy_(v)


def flat_dot(a: dict, b: dict) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


# ------------------------------------------------------------------------------ functional
def outputs(model: nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    """(n, O) outputs of the model at parameters `params`."""
    return functional_call(model, params, (x,)).reshape(x.shape[0], -1)


def _scalar(model: nn.Module, params: dict, xi: torch.Tensor) -> torch.Tensor:
    return functional_call(model, params, (xi[None],)).reshape(())


def jacobian(model: nn.Module, params: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """∇θ f(x_i) for a scalar-output model: dict name -> (n, *param.shape)."""
    return vmap(jacrev(lambda p, xi: _scalar(model, p, xi)), in_dims=(None, 0))(params, x)


def jvp_outputs(model, params, x, v) -> torch.Tensor:
    """J v: (n, O) directional derivative of the outputs along the parameter direction v."""
    return jvp(lambda p: outputs(model, p, x), (params,), (v,))[1]


def vjp_outputs(model, params, x, u) -> dict:
    """Jᵀ u for u of shape (n, O): a parameter-shaped dict."""
    _, pull = vjp(lambda p: outputs(model, p, x), params)
    return pull(u)[0]


def hvp(model, params, x, e, v) -> dict:
    """(Σ_i e_i ∇²θ f_i) v, a Hessian-vector product (forward-over-reverse), e: (n, O)."""
    def g(p):
        _, pull = vjp(lambda q: outputs(model, q, x), p)
        return pull(e)[0]

    return jvp(g, (params,), (v,))[1]


# ------------------------------------------------------------------------------ input checks
def check_model(model, func: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{func}: model must be a torch.nn.Module, got {type(model).__name__}; "
                        f"build one with net.module(in_shape, seed=...)")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{func}: model has no trainable parameters (requires_grad=True)")
    return model


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        return p.dtype
    return torch.get_default_dtype()


def check_x(x, func: str, arg: str, model: nn.Module | None = None) -> torch.Tensor:
    dtype = model_dtype(model) if model is not None else torch.float64
    return as_input_tensor(x, func=func, arg=arg, dtype=dtype)


def check_y(y, func: str, n: int, n_out: int, dtype) -> torch.Tensor:
    """Targets as (n, O); a 1-D y of length n is read as one output."""
    if not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{func}: y must be a tensor of targets, got {type(y).__name__}") \
                from None
    if not torch.is_floating_point(y):
        y = y.to(dtype)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape != (n, n_out):
        raise ValueError(f"{func}: y must have shape ({n}, {n_out}) (or ({n},) for one output) "
                         f"to match x and the model's outputs, got {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError(f"{func}: y contains NaN or infinite entries")
    return y.to(dtype)


def check_convention(value, func: str) -> str:
    if value not in CONVENTIONS:
        raise ValueError(f"{func}: convention must be 'mean' (loss (1/2n) Σ r², seed 000) or "
                         f"'sum' (loss (1/2) Σ r², seed 002), got {value!r}")
    return value
