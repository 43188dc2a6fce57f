"""Deprecated spellings: old argument names kept one release with a `FutureWarning`.

    @renamed_arguments(chunk_size="batch_size", since="0.2")
    def higher_order_kernel(model, x, *, batch_size=None): ...

A call with the old name warns once per call site (Python's default filter) and is forwarded
to the new name; passing both is an error that names the function.
"""

from __future__ import annotations

import functools
import warnings

__all__ = ["renamed_arguments"]


def renamed_arguments(*, since: str, **old_to_new: str):
    """Decorator: accept `old=` as a deprecated alias of `new=` for each pair given."""

    def wrap(func):
        name = func.__qualname__

        @functools.wraps(func)
        def inner(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{name}: got both {old}= (deprecated since {since}) "
                                        f"and {new}=; pass only {new}=")
                    warnings.warn(f"{name}: {old}= is deprecated since {since}; use {new}=",
                                  FutureWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        inner.__deprecated_arguments__ = dict(old_to_new)
        return inner

    return wrap
