"""Describe a net (or a function it holds) by everything that determines its values.

A tile store records a description of the net that computed it, and a resume is accepted only
when the description is the same: two different nets must never get one description, or a
store silently mixes two kernels. A layer's `repr` names its hyperparameters but, for a layer
that holds a Python callable (`Elementwise(fn)`), only the callable's name. This module
describes such callables by content:

* a Python function: its code (bytecode, constants, names, nested code), its defaults, the
  values its closure captured and the values of the module globals it reads, recursively;
* `functools.partial`: the function and the bound arguments;
* `torch.nn.Module`: its class, its repr, the values of its plain attributes, a hash of its
  `state_dict` and, for a class defined outside the libraries, its `forward` code;
* module-level functions of the libraries (torch, numpy, scipy, math, the standard library,
  widenets): their qualified name (the store records the widenets version; library versions
  are the user's to keep fixed); lambdas and closures made inside a library are described by
  content like any other function;
* values: numbers, strings, tensors and arrays (by a hash of their bytes), containers of them.

Anything else (an object with `__call__`, a global holding an arbitrary object) cannot be
described: `DescriptionError`, and the caller asks for an explicit `description=`.

Limits: a function that reads state through an attribute of an imported module of the user's
(`mymodule.SCALE`) or from a file is described by its code only; pass `description=` for such
functions.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import sysconfig
import types

import numpy as np
import torch

__all__ = ["DescriptionError", "describe_callable", "describe_value", "describe_layer"]

# Top-level packages whose functions are described by name (the version pins their code).
_LIBRARIES = {"torch", "numpy", "scipy", "math", "cmath", "builtins", "operator", "functools",
              "widenets", "jax", "sklearn", "_operator", "_functools"}


class DescriptionError(TypeError):
    """A callable (or a value it reads) whose content cannot be described."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib",
                                                      "platlib") if k in paths)


def _is_library(module_name: str | None) -> bool:
    """True for functions of an installed library or the standard library."""
    if not module_name:
        return False
    top = module_name.split(".")[0]
    if top in _LIBRARIES or top in sys.builtin_module_names:
        return True
    mod = sys.modules.get(top)
    path = getattr(mod, "__file__", None)
    return bool(path) and os.path.realpath(path).startswith(_library_dirs())


def describe_value(value, _seen: set | None = None) -> str:
    """A text that identifies `value` by content (see the module docstring).

    Args:
        value: a number, string, tensor, array, container of them, module or callable.

    Returns:
        The description (equal for equal contents, in any process).

    Raises:
        DescriptionError: the value (or something inside it) cannot be described.

    Example:
        >>> describe_value((1, 2.5, "a"))
        "tuple[1, 2.5, 'a']"
    """
    seen = set() if _seen is None else _seen
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, (torch.dtype, torch.device, np.dtype)):
        return repr(value)
    if isinstance(value, np.generic):
        return f"{type(value).__name__}({value!r})"
    if isinstance(value, torch.Tensor):
        arr = np.ascontiguousarray(value.detach().cpu().numpy())
        digest = hashlib.sha256(arr.view(np.uint8).reshape(-1).data).hexdigest()[:16]
        return f"tensor{tuple(arr.shape)}{arr.dtype}@{digest}"
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise DescriptionError("a numpy array of Python objects")
        arr = np.ascontiguousarray(value)
        digest = hashlib.sha256(arr.view(np.uint8).reshape(-1).data).hexdigest()[:16]
        return f"ndarray{tuple(arr.shape)}{arr.dtype}@{digest}"
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if id(value) in seen:
        return "<recursive>"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        seen.add(id(value))
        try:
            if isinstance(value, dict):
                items = sorted((describe_value(k, seen), describe_value(v, seen))
                               for k, v in value.items())
                return "dict{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
            parts = [describe_value(v, seen) for v in value]
            if isinstance(value, (set, frozenset)):
                parts.sort()
            return f"{type(value).__name__}[{', '.join(parts)}]"
        finally:
            seen.discard(id(value))
    if isinstance(value, type):
        return f"class {value.__module__}.{value.__qualname__}"
    if callable(value):
        return describe_callable(value, _seen=seen)
    raise DescriptionError(f"a {type(value).__module__}.{type(value).__qualname__} object")


def _code_text(code: types.CodeType, names: set) -> str:
    """Bytecode, constants (nested code recursively) and names of a code object; collects the
    global names it may read into `names`."""
    names.update(code.co_names)
    consts = [_code_text(c, names) if isinstance(c, types.CodeType) else repr(c)
              for c in code.co_consts]
    return repr((code.co_code.hex(), consts, code.co_names, code.co_varnames[:code.co_argcount]))


def _module_level(fn) -> bool:
    """True when `fn` is the module-level function its module and qualified name point to
    (not a lambda, a nested function or a closure, whose behaviour depends on more)."""
    obj = sys.modules.get(fn.__module__)
    for part in fn.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is fn and fn.__closure__ is None


def _describe_function(fn: types.FunctionType, seen: set) -> str:
    name = f"{fn.__module__}.{fn.__qualname__}"
    if _is_library(fn.__module__) and _module_level(fn):
        return f"function {name}"
    seen.add(id(fn))
    try:
        names: set = set()
        parts = [_code_text(fn.__code__, names)]
        parts.append("defaults=" + describe_value(fn.__defaults__, seen))
        parts.append("kwdefaults=" + describe_value(fn.__kwdefaults__, seen))
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                contents = "<empty>"
            parts.append(f"closure {var}=" + _described(contents, f"captured variable {var!r}",
                                                        seen))
        glob = fn.__globals__
        for var in sorted(names):
            if var in glob:
                parts.append(f"global {var}=" + _described(glob[var], f"global {var!r}", seen))
    finally:
        seen.discard(id(fn))
    return f"function {name}@{_sha(' | '.join(parts))}"


def _described(value, what: str, seen: set) -> str:
    try:
        return describe_value(value, seen)
    except DescriptionError as e:
        raise DescriptionError(f"{what} is {e}") from None


def _describe_module(m: torch.nn.Module, seen: set) -> str:
    cls = type(m)
    parts = [f"{cls.__module__}.{cls.__qualname__}", repr(m)]
    for sub_name, sub in m.named_modules():
        sub_cls = type(sub)
        if not _is_library(sub_cls.__module__):
            fwd = getattr(sub_cls, "forward", None)
            if isinstance(fwd, types.FunctionType):
                parts.append(f"{sub_name}.forward=" + _describe_function(fwd, seen))
        for k, v in sorted(vars(sub).items()):
            if k.startswith("_") or k == "training" or isinstance(v, torch.nn.Module):
                continue
            parts.append(f"{sub_name}.{k}=" + _described(v, f"attribute {sub_name}.{k}", seen))
    state = m.state_dict()
    parts += [f"{k}={describe_value(v)}" for k, v in sorted(state.items())]
    return f"module {cls.__module__}.{cls.__qualname__}@{_sha(' | '.join(parts))}"


def describe_callable(fn, *, _seen: set | None = None) -> str:
    """A text that identifies the callable `fn` by everything that determines its values.

    Args:
        fn: a Python function or lambda, a `functools.partial`, a `torch.nn.Module`, a bound
            method of one, or a library function (`torch.tanh`, `np.tanh`, `math.erf`).

    Returns:
        The description: equal for callables that compute the same values, different when the
        code, a captured value, a global it reads, a bound argument or a module's parameters
        differ.

    Raises:
        DescriptionError: `fn` (or a value it reads) cannot be described.

    Example:
        >>> import functools, torch
        >>> a = describe_callable(functools.partial(torch.nn.functional.leaky_relu,
        ...                                         negative_slope=0.1))
        >>> b = describe_callable(functools.partial(torch.nn.functional.leaky_relu,
        ...                                         negative_slope=0.2))
        >>> a == b
        False
    """
    seen = set() if _seen is None else _seen
    if isinstance(fn, functools.partial):
        return (f"partial({describe_callable(fn.func, _seen=seen)}, "
                f"args={_described(fn.args, 'a bound argument', seen)}, "
                f"kwargs={_described(fn.keywords, 'a bound keyword argument', seen)})")
    if isinstance(fn, torch.nn.Module):
        return _describe_module(fn, seen)
    if isinstance(fn, types.FunctionType):
        return _describe_function(fn, seen)
    if isinstance(fn, types.MethodType):
        owner = fn.__self__
        if isinstance(owner, torch.nn.Module):
            return f"method {fn.__name__} of {_describe_module(owner, seen)}: " + \
                describe_callable(fn.__func__, _seen=seen)
        if isinstance(owner, type) or isinstance(owner, types.ModuleType):
            return f"method {fn.__qualname__} of {describe_value(owner, seen)}"
        raise DescriptionError(f"a method bound to a {type(owner).__qualname__} object")
    if isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType, np.ufunc)) or \
            type(fn).__module__ == "torch._ops" or type(fn).__name__ == "builtin_function":
        owner = getattr(fn, "__self__", None)
        if owner is not None and not isinstance(owner, types.ModuleType):
            raise DescriptionError(f"a built-in method bound to a {type(owner).__qualname__} "
                                   f"object")
        module = getattr(fn, "__module__", None) or getattr(owner, "__name__", "?")
        return f"builtin {module}.{getattr(fn, '__qualname__', None) or fn.__name__}"
    if isinstance(fn, (types.MethodDescriptorType, types.WrapperDescriptorType,
                       types.ClassMethodDescriptorType)):  # torch.Tensor.tanh
        owner = fn.__objclass__
        return f"builtin {owner.__module__}.{owner.__qualname__}.{fn.__name__}"
    if isinstance(fn, type):
        return describe_value(fn, seen)
    raise DescriptionError(f"a callable {type(fn).__module__}.{type(fn).__qualname__} object "
                           f"(only functions, functools.partial, torch.nn.Module and library "
                           f"functions are described by content)")


def describe_layer(layer) -> str:
    """The description of a widenets net: its repr plus the content of every callable it holds.

    Args:
        layer: a `wn.Layer` (a single layer or a composite such as `serial(...)`).

    Returns:
        `repr(layer)`, followed by " with " and `path=description` for every Python callable
        found among the public attributes of the layer and its sub-layers (e.g. Elementwise's
        fn), when there are any.

    Raises:
        DescriptionError: a callable the layer holds cannot be described; the message names
            where it is.

    Example:
        >>> import widenets as wn, torch
        >>> describe_layer(wn.serial(wn.Dense(4), wn.Relu()))
        "serial(Dense(out=4, w_std=1.0, b_std=0.0, parameterization='ntk'), Relu())"
        >>> a = describe_layer(wn.Elementwise(lambda z: torch.tanh(2 * z)))
        >>> a == describe_layer(wn.Elementwise(lambda z: torch.tanh(3 * z)))
        False
    """
    found: list[str] = []
    _walk(layer, type(layer).__name__, found, set())
    text = repr(layer)
    return text + (" with " + "; ".join(found) if found else "")


def _walk(obj, path: str, found: list, seen: set) -> None:
    from ..layers.base import Layer

    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Layer):
        items = [(k, v) for k, v in vars(obj).items() if not k.startswith("_")]
    elif isinstance(obj, (list, tuple)):
        items = [(f"[{i}]", v) for i, v in enumerate(obj)]
    elif isinstance(obj, dict):
        items = [(f"[{k!r}]", v) for k, v in obj.items()]
    else:
        return
    for key, v in items:
        where = f"{path}.{key}" if not key.startswith("[") else f"{path}{key}"
        if isinstance(v, (Layer, list, tuple, dict)):
            _walk(v, where, found, seen)
        elif callable(v) and not isinstance(v, type):
            try:
                found.append(f"{where}={describe_callable(v)}")
            except DescriptionError as e:
                raise DescriptionError(f"{where} is {e}") from None
