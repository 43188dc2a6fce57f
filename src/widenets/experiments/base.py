"""Shared machinery of every experiment: results, typed configs, progress bars.

An experiment is a module with
* `ID` (the figure id on the command line), `TITLE`, `RUNTIME` (default-scale runtime on the
  2-core development machine, for the docs) and `QUICK` (config overrides for `--quick`);
* `Config`: a dataclass of keyword options, every one with a default (`seed` among them);
* `run(config) -> Result`: computes the data and the key numbers, no plotting;
* `plot(result, path)`: draws the figure into one PNG file.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

ACTIVATION_HELP = "activation must be one of relu, erf, gelu, abs, identity, got {!r}"

__all__ = ["Result", "ConfigError", "make_config", "parse_value", "progress", "to_jsonable",
           "fit_slope", "check_distinct_seeds"]


class ConfigError(ValueError):
    """A configuration the user asked for cannot be built (unknown key, wrong type).

    Example:
        >>> from widenets import experiments
        >>> experiments.make_config(experiments.load("lee-fig2"), overrides={"no_such_key": "1"})
        Traceback (most recent call last):
        ...
        widenets.experiments...ConfigError: ...
    """


@dataclass
class Result:
    """What `run` returns: the data a plot needs and the numbers a reader checks.

    Attributes:
        figure: the experiment id, e.g. "lee-fig1".
        config: the Config dataclass instance the run used.
        data: arrays and lists the plot draws (tensors, numpy arrays, floats, nested dicts).
        metrics: the key numbers (floats, ints, strings) shown in the report and checked by tests.
        caption: one or two sentences saying what the figure shows and what the paper claims.
        timings: seconds spent in named stages.

    Example:
        >>> from widenets import experiments
        >>> result = experiments.Result(figure="demo", config=None, data={},
        ...                             metrics={"accuracy": 0.9},
        ...                             caption="a caption")
        >>> result.metrics["accuracy"]
        0.9
    """

    figure: str
    config: Any
    data: dict
    metrics: dict
    caption: str
    timings: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ configs
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse_value(text: str, tp, *, key: str):
    """Parse `text` as a value of the annotated type `tp` (int, float, bool, str, tuples and
    lists of those, `X | None`). Raises ConfigError naming the key and the expected type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if type(None) in args and text.strip().lower() in ("none", "null", ""):
            return None
        errors = []
        for a in inner:
            try:
                return parse_value(text, a, key=key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"--set {key}={text}: expected {_type_name(tp)}")
    if origin in (tuple, list):
        parts = [p for p in text.replace("(", "").replace(")", "").replace("[", "")
                 .replace("]", "").split(",") if p.strip() != ""]
        elem = args[0] if args else str
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            elem = args[0]
        elif origin is tuple and args and args[-1] is not Ellipsis:
            if len(parts) != len(args):
                raise ConfigError(f"--set {key}={text}: expected {len(args)} comma-separated "
                                  f"values")
            pairs = zip(parts, args, strict=True)
            return tuple(parse_value(p.strip(), a, key=key) for p, a in pairs)
        if not parts:
            raise ConfigError(f"--set {key}={text}: expected a comma-separated list of "
                              f"{_type_name(elem)}, e.g. {key}=1,2,3")
        vals = [parse_value(p.strip(), elem, key=key) for p in parts]
        return tuple(vals) if origin is tuple else vals
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={text}: expected a bool (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected an int") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected a float") from None
        if not math.isfinite(value):
            raise ConfigError(f"--set {key}={text}: expected a finite float")
        return value
    if tp is str:
        return text
    raise ConfigError(f"--set {key}: values of type {_type_name(tp)} cannot be set from the "
                      f"command line")


def make_config(module, *, quick: bool = False, seed: int | None = None,
                overrides: dict[str, str] | None = None):
    """Build `module.Config`: defaults, then `module.QUICK` when quick, then the seed, then the
    `--set key=value` overrides (strings parsed against the field annotations).

    Raises:
        ConfigError: an unknown key (the message lists the known ones) or a value that does not
            parse as the field's type.

    Example:
        >>> from widenets import experiments
        >>> config = experiments.make_config(experiments.load("lee-fig2"), quick=True, seed=3)
        >>> config.seed
        3
    """
    cls = module.Config
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    if quick:
        values.update(getattr(module, "QUICK", {}))
    if seed is not None:
        values["seed"] = seed
    for key, text in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"--set {key}: unknown key for {module.ID}; known keys: "
                              f"{', '.join(names)}")
        values[key] = parse_value(text, hints[key], key=key)
    try:
        config = cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{module.ID}: {e}") from None
    check_distinct_seeds(config, module_id=module.ID)
    check = getattr(config, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{module.ID}: {e}") from None
    return config


def check_distinct_seeds(config, *, module_id: str) -> None:
    """Refuse a config whose seed list (a field named `seeds` or `*_seeds`) repeats a seed.

    Repeated seeds repeat the same run: the spread over seeds (and every confidence interval
    drawn from it) would shrink with no new information, down to a zero-width interval.

    Raises:
        ConfigError: naming the field, the duplicated seeds and what is expected.
    """
    for f in dataclasses.fields(config):
        if not (f.name == "seeds" or f.name.endswith("_seeds")):
            continue
        value = getattr(config, f.name)
        if not isinstance(value, (list, tuple)):
            continue
        dupes = sorted({s for s in value if list(value).count(s) > 1}, key=repr)
        if dupes:
            raise ConfigError(f"--set {f.name}: {module_id} needs distinct seeds (a repeated "
                              f"seed repeats the same run and fakes a narrower confidence "
                              f"interval), got {','.join(map(str, value))} with "
                              f"{', '.join(map(str, dupes))} repeated")


def split_sets(items: Iterable[str]) -> dict[str, str]:
    """['a=1', 'b=x,y'] -> {'a': '1', 'b': 'x,y'}; ConfigError on an item without '='."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value, e.g. --set widths=64,256")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


# ------------------------------------------------------------------------------ helpers
def progress(iterable: Iterable, *, desc: str, total: int | None = None):
    """`iterable`, wrapped in a tqdm bar when stderr is a terminal (quiet in logs and CI)."""
    if not sys.stderr.isatty():
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)


def to_jsonable(obj):
    """Tensors, arrays, numpy scalars, dataclasses, tuples and dicts -> plain JSON types.
    Non-finite floats become None (JSON has no NaN)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def fit_slope(x, y) -> float:
    """Least-squares slope of log(y) against log(x) (a power law's exponent)."""
    lx = np.log(np.asarray(x, dtype=float))
    ly = np.log(np.asarray(y, dtype=float))
    if not (np.isfinite(lx).all() and np.isfinite(ly).all()):
        raise ValueError("fit_slope: x and y must be positive and finite for a log-log fit")
    return float(np.polyfit(lx, ly, 1)[0])
