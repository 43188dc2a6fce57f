"""What every empirical-kernel function needs first: the model as f(params, x), checked inputs.

A `Target` wraps either a `torch.nn.Module` (evaluated with `torch.func.functional_call`, so the
trainable parameters can be swapped for other values without touching the module) or a plain
function `f(params, x)` with `params` a dict of tensors. Every public function of
`widenets.empirical` goes through `resolve_target` and `check_inputs`, so the checks and their
messages live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from .._checks import as_tensor, check_batch_size, check_choice, check_finite_values
from .._checks import describe as _describe

__all__ = ["Target", "resolve_target", "check_inputs", "check_choice", "check_batch_size",
           "check_fixed_function", "MODES", "IMPLEMENTATIONS"]

MODES = ("trace", "full", "diagonal")
IMPLEMENTATIONS = ("auto", "jacobian", "ntvp", "structured")


@dataclass
class Target:
    """A model reduced to `f(params, x) -> (n, O)`.

    Attributes:
        params: the trainable parameters by name, detached (the point p0 the kernel is taken at).
        module: the nn.Module, or None for a plain function.
        fn: the raw callable f(params_dict, x); for a module, functional_call with the dict
            (entries missing from the dict, e.g. frozen parameters and buffers, come from the
            module itself).
        func: name of the public function, for error messages.
    """

    params: dict[str, torch.Tensor]
    module: nn.Module | None
    fn: Callable
    func: str

    def __call__(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """(n, O) outputs, flattened after the batch axis."""
        out = self.fn(dict(params), x)
        return out.reshape(out.shape[0], -1)

    def call_checked(self, x: torch.Tensor, arg: str, shape=None) -> torch.Tensor:
        """Run the model on `x` with p0; report the model's own error with our context.

        `shape` is the user's whole input shape for the message (x may be a few rows of it).
        """
        try:
            out = self.fn(dict(self.params), x)
        except Exception as err:  # noqa: BLE001 - re-raised with context below
            shape = tuple(x.shape) if shape is None else tuple(shape)
            raise ValueError(
                f"{self.func}: the model rejected {arg} of shape {shape} and dtype "
                f"{x.dtype} ({type(err).__name__}: {err}); pass {arg} as (n, *input_shape) with "
                f"the model's dtype and device") from err
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{self.func}: the model must return one tensor of shape (n, ...), "
                            f"got {type(out).__name__}; wrap it to return a single tensor")
        if out.ndim < 1 or out.shape[0] != x.shape[0]:
            raise ValueError(f"{self.func}: the model's output must keep the batch axis first, "
                             f"got shape {tuple(out.shape)} for {arg} of shape {tuple(x.shape)}")
        if not torch.is_floating_point(out):
            raise TypeError(f"{self.func}: the model's output must be floating point, got "
                            f"{out.dtype}")
        return out.reshape(out.shape[0], -1)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype


def _check_train_mode(model: nn.Module, func: str) -> None:
    """Batch statistics or random masks make f(x_i) depend on the batch or on chance.

    The empirical NTK is a property of a deterministic function of one input; a BatchNorm in
    train mode (or without running statistics) normalizes with the statistics of the whole batch,
    so "the NTK of x_i" would depend on which other inputs share its block and the implementations
    (per-sample Jacobians vs batched passes) would disagree; its forward also overwrites the
    running statistics. We raise instead of warning because no result would be correct.
    """
    for name, mod in model.named_modules():
        if isinstance(mod, _BatchNorm) and (mod.training or not mod.track_running_stats):
            where = name or type(model).__name__
            raise ValueError(
                f"{func}: module '{where}' ({type(mod).__name__}) normalizes with batch "
                f"statistics (train mode or track_running_stats=False), so its output for one "
                f"input depends on the rest of the batch and the NTK is not defined per input; "
                f"call model.eval() first (and keep running statistics)")
        if isinstance(mod, _DropoutNd) and mod.training and mod.p > 0:
            where = name or type(model).__name__
            raise ValueError(
                f"{func}: module '{where}' ({type(mod).__name__}, p={mod.p}) is random in train "
                f"mode, so the model is not a fixed function; call model.eval() first")


def resolve_target(model, params, *, func: str) -> Target:
    """Check `model` and `params` and return the Target.

    Args:
        model: an nn.Module, or a callable f(params, x).
        params: None (a module's parameters with requires_grad=True), or a dict name -> tensor.
            For a module its keys must be exactly the trainable parameter names; for a function
            it is required and every entry is differentiated.
        func: public function name for messages.
    """
    if isinstance(model, nn.Module):
        _check_train_mode(model, func)
        trainable = {k: v for k, v in model.named_parameters() if v.requires_grad}
        if params is None:
            if not trainable:
                raise ValueError(f"{func}: the model has no trainable parameters (all have "
                                 f"requires_grad=False), so its NTK is zero; unfreeze some with "
                                 f"p.requires_grad_(True)")
            chosen = {k: v.detach() for k, v in trainable.items()}
        else:
            chosen = _check_params_dict(params, func)
            missing = sorted(set(trainable) - set(chosen))
            extra = sorted(set(chosen) - set(trainable))
            if missing or extra:
                frozen = {k for k, v in model.named_parameters() if not v.requires_grad}
                hint = (" (frozen parameters, requires_grad=False, are not part of params)"
                        if set(extra) & frozen else "")
                raise ValueError(f"{func}: params keys must be the model's trainable parameter "
                                 f"names; missing {missing[:5]}, unexpected {extra[:5]}{hint}")
            for k, v in chosen.items():
                if v.shape != trainable[k].shape:
                    raise ValueError(f"{func}: params['{k}'] must have shape "
                                     f"{tuple(trainable[k].shape)}, got {tuple(v.shape)}")

        def fn(p, x, _model=model):
            return functional_call(_model, p, (x,))

        return Target(params=chosen, module=model, fn=fn, func=func)
    if callable(model):
        if params is None:
            raise ValueError(f"{func}: model is a function f(params, x), so params (a dict of "
                             f"tensors) is required; pass params={{'w': w, ...}}")
        chosen = _check_params_dict(params, func)
        return Target(params=chosen, module=None, fn=lambda p, x: model(p, x), func=func)
    raise TypeError(f"{func}: model must be a torch.nn.Module or a function f(params, x), got "
                    f"{_describe(model)}")


def _check_params_dict(params, func: str) -> dict[str, torch.Tensor]:
    if not isinstance(params, Mapping):
        raise TypeError(f"{func}: params must be a dict name -> tensor, got {_describe(params)}")
    if not params:
        raise ValueError(f"{func}: params is empty, so the NTK is zero; pass the parameters to "
                         f"differentiate")
    out = {}
    dtypes = set()
    for k, v in params.items():
        if not isinstance(v, torch.Tensor) or not torch.is_floating_point(v):
            raise TypeError(f"{func}: params['{k}'] must be a floating-point tensor, got "
                            f"{_describe(v)}")
        out[str(k)] = v.detach()
        dtypes.add(v.dtype)
    if len(dtypes) > 1:
        raise TypeError(f"{func}: all params must share one dtype, got {sorted(map(str, dtypes))}")
    return out


def check_inputs(x1, x2, *, func: str):
    """x1, x2 as tensors with a batch axis, same trailing shape and device (x2 may be None)."""
    x1 = _as_tensor(x1, func, "x1")
    if x2 is None:
        return x1, None
    x2 = _as_tensor(x2, func, "x2")
    if x2.shape[1:] != x1.shape[1:]:
        raise ValueError(f"{func}: x1 and x2 must have the same shape after the batch axis, got "
                         f"x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)}")
    if x2.device != x1.device or x2.dtype != x1.dtype:
        raise ValueError(f"{func}: x1 and x2 must share device and dtype, got {x1.device}/"
                         f"{x1.dtype} and {x2.device}/{x2.dtype}")
    return x1, x2


def _as_tensor(x, func: str, arg: str) -> torch.Tensor:
    x = as_tensor(x, func=func, arg=arg)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{func}: {arg} must have a non-empty batch axis first, shape "
                         f"(n, *input_shape), got shape {tuple(x.shape)}")
    check_finite_values(x, func=func, arg=arg)
    return x


# ------------------------------------------------------------------ a fixed function per input
def _probe_pair(x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor | None:
    """Two different inputs from the user's data: x1[0] and the first other row that differs
    from it (x1, then x2); else x1[0] with its entries rolled (a different input of the same
    dtype and value set). None when no different input can be made (a constant input)."""
    a = x1[0]
    for xs in (x1[1:9], None if x2 is None else x2[:8]):
        if xs is None:
            continue
        for row in xs:
            if not torch.equal(row, a):
                return torch.stack([a, row])
    b = a.flatten().roll(1).reshape(a.shape)
    if torch.equal(b, a) and torch.is_floating_point(a):
        b = a + 1.0
    return None if torch.equal(b, a) else torch.stack([a, b])


def _rng_states(device: torch.device) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda" and torch.cuda.is_available():
        states.append(torch.cuda.get_rng_state(device))
    return states


def check_fixed_function(target: Target, x1: torch.Tensor, x2: torch.Tensor | None) -> None:
    """Raise ValueError unless the model is a fixed function applied to each input on its own.

    The empirical kernels are properties of x -> f(x; θ). Two ways a forward breaks that
    without any module saying so (the module-level checks of `resolve_target` see nn.Dropout and
    BatchNorm, not functional calls):

    * randomness, e.g. ``F.dropout(h, p, training=True)`` or ``torch.randn`` inside forward:
      detected when one forward pass consumes random numbers of the global generators, or when
      two forward passes on the same inputs differ;
    * coupling of the batch, e.g. ``h - h.mean(0)`` or ``softmax(h, dim=0)``: detected when the
      rows of a forward pass on two different inputs differ from forward passes on each input
      alone. Without this check the batched implementations ("structured", "ntvp") and the
      per-input one ("jacobian") silently give different, meaningless kernels (zero for
      ``h - h.mean(0)`` per input).

    Cost: four forward passes of one or two inputs. Tolerance: differences below 1e-8 (float64;
    1e-4 float32, 1e-2 lower precisions) of the output's scale are rounding (batched and single
    matrix products round differently); the coupling and randomness above are O(1).
    """
    func = target.func
    pair = _probe_pair(x1, x2)
    if pair is None:
        return
    params = target.params
    device = pair.device
    try:
        with torch.no_grad():
            before = _rng_states(device)
            out = target(params, pair)
            after = _rng_states(device)
            again = target(params, pair)
            single = torch.cat([target(params, pair[:1]), target(params, pair[1:])])
    except Exception:  # noqa: BLE001 - a made-up second input the model rejects: no check
        return
    if not torch.is_floating_point(out):
        return
    consumed = any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    if not consumed and not all(bool(torch.isfinite(t).all()) for t in (out, again, single)):
        # outputs that overflow on these inputs are not a sign of randomness (inf - inf is
        # NaN): the kernel's finiteness check reports them as what they are
        return
    scale = float(out.abs().max()) + float(single.abs().max())
    tol = {torch.float64: 1e-8, torch.float32: 1e-4}.get(out.dtype, 1e-2) * scale + 1e-300
    repeat_diff = float((out - again).abs().max())
    if consumed or not repeat_diff <= tol:
        why = ("one forward pass consumed random numbers" if consumed else
               f"two forward passes on the same inputs differ by {repeat_diff:.2e}")
        raise ValueError(
            f"{func}: the model is random ({why}), e.g. F.dropout(..., training=True) or "
            f"torch.randn inside forward, so it is not a fixed function and its empirical kernel "
            f"is undefined; make forward deterministic (pass training=self.training to "
            f"F.dropout and call model.eval())")
    couple_diff = float((out - single).abs().max())
    if not couple_diff <= tol:
        raise ValueError(
            f"{func}: the model's output for one input depends on the other inputs of its batch "
            f"(a batch of 2 differs from the same 2 inputs run one at a time by "
            f"{couple_diff:.2e}, output scale {scale / 2:.2e}), e.g. h - h.mean(0), "
            f"softmax(..., dim=0) or batch statistics in forward; the empirical kernel is "
            f"defined for a function of one input, so make forward treat each row of the batch "
            f"independently")
