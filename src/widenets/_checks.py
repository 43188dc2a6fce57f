"""The one set of input checks every package uses (issue 15, part 3).

Each check raises `TypeError`/`ValueError` whose message starts with the public function's
name (`func`), names the argument (`arg`), says what was expected and what arrived; none of
them modifies its input. Packages import these names (they are public within widenets);
users never need them.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch

__all__ = ["describe", "as_tensor", "as_input_tensor", "check_finite_values", "check_positive",
           "check_int", "check_choice", "check_batch_size"]


def describe(x) -> str:
    """A short description of what arrived, for error messages."""
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    if isinstance(x, np.ndarray):
        return f"a {x.dtype} numpy array of shape {x.shape}"
    return f"{type(x).__name__} {x!r}"[:120]


def as_tensor(x, *, func: str, arg: str, what: str = "a torch.Tensor or numpy array",
              allow_lists: bool = False) -> torch.Tensor:
    """`x` as a real-valued tensor (numpy arrays shared, not copied; nested lists only when
    `allow_lists`). Raises TypeError for anything else, or complex/bool values."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif allow_lists and isinstance(x, (list, tuple)):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(f"{func}: {arg} must be {what}, got {describe(x)}") from None
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{func}: {arg} must be {what}, got {describe(x)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{func}: {arg} must hold real numbers, got dtype {x.dtype}")
    return x


def check_finite_values(x: torch.Tensor, *, func: str, arg: str,
                        hint: str = "remove or impute them first") -> None:
    """Raise ValueError naming how many entries of `x` are NaN or infinite."""
    if torch.is_floating_point(x) and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{func}: {arg} contains {bad} NaN or infinite entries; {hint}")


def as_input_tensor(x, *, func: str, arg: str, dtype: torch.dtype) -> torch.Tensor:
    """Check a user's input batch (n, features...) and return it as a `dtype` tensor.

    Raises:
        TypeError: not array-like, or integer/bool/complex dtype.
        ValueError: rank < 2 (no batch axis), an empty axis, a meta tensor or non-finite
            entries.
    """
    x = as_tensor(x, func=func, arg=arg, what="a torch.Tensor or numpy array of floats")
    if not torch.is_floating_point(x):
        raise TypeError(f"{func}: {arg} must hold floating-point values, got dtype {x.dtype}; "
                        f"convert with {arg}.to(torch.float64)")
    if x.ndim < 2:
        raise ValueError(f"{func}: {arg} must have a batch axis first, shape (n, features...), "
                         f"got shape {tuple(x.shape)}; use {arg}[None] for a single input")
    if x.device.type == "meta":
        raise ValueError(f"{func}: {arg} must hold values, got a meta tensor of shape "
                         f"{tuple(x.shape)} (shape only, no data); create it on a real device")
    if x.shape[0] == 0:
        raise ValueError(f"{func}: {arg} must hold at least one input (row), got shape "
                         f"{tuple(x.shape)} with 0 rows")
    if 0 in x.shape[1:]:
        raise ValueError(f"{func}: {arg} must have at least one feature per input, got shape "
                         f"{tuple(x.shape)} (an axis of size 0 after the batch axis)")
    check_finite_values(x, func=func, arg=arg)
    return x.to(dtype)


def check_positive(value, *, func: str, arg: str, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with `allow_zero`), as a float."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and \
        (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{func}: {arg} must be a finite number "
                         f"{'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def check_int(value, *, func: str, arg: str, minimum: int = 1, allow_none: bool = False):
    """An int >= `minimum` (numpy integers accepted; bools refused), or None if allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{func}: {arg} must be {what}{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return int(value)


def check_choice(value, allowed: tuple, *, func: str, arg: str):
    """One of the `allowed` words (or None, where None is among them)."""
    if not any(value is a or (isinstance(value, str) and value == a) for a in allowed):
        raise ValueError(f"{func}: {arg} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_batch_size(batch_size, *, func: str) -> int | None:
    """A positive int (inputs per block) or None (one block)."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"{func}: batch_size must be a positive int (inputs per block) or None "
                         f"for one block, got {batch_size!r}")
    return batch_size
