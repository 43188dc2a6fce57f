"""SPEC: a small text (or JSON) description of a widenets net, for the command line.

Text grammar (whitespace, ",", "|" or ">>" may separate layers; names are case-insensitive
and ignore "_"):

    spec    := item (sep? item)*
    item    := layer | "[" spec "]" "*" INT          (repeat a group INT times)
    layer   := NAME [ "(" [ arg ("," arg)* ] ")" ]
    arg     := value | NAME "=" value                 (positional, then keyword arguments)
    value   := NUMBER | none | true | false | WORD | 'string' | "string"

NAME is any widenets layer that takes plain arguments: dense, relu, leakyrelu, abrelu, abs,
identity, erf, gelu, sin (and conv, pooling, flatten, layernorm... when present). The layers are
composed with `serial`. Example, a depth-3 ReLU net:

    [dense(512, w_std=1.5, b_std=0.05) relu]*3 dense(1, w_std=1.5, b_std=0.05)

JSON form: a list whose items are text layers ("relu", "dense(512, w_std=1.5)"), objects
{"layer": "dense", "args": [512], "w_std": 1.5} (every key besides "layer" and "args" is a
keyword argument), or {"repeat": 3, "layers": [...]}:

    [{"repeat": 3, "layers": [{"layer": "dense", "args": [512], "w_std": 1.5}, "relu"]},
     {"layer": "dense", "args": [1]}]

A SPEC that names an existing .json file is read from it.

A SPEC builds at most MAX_LAYERS layers in all (repeats and nested repeats multiplied out);
a larger one is refused before anything is built.
"""

from __future__ import annotations

import inspect
import json
import os
import re

__all__ = ["parse_spec", "layer_names", "MAX_LAYERS"]

# The most layers a SPEC may build (after expanding repeats): a net this deep is already far
# beyond what a kernel recursion is accurate for, and each layer is a Python object.
MAX_LAYERS = 10_000

# Layers that need other layers or a Python function: not expressible in a SPEC.
_EXCLUDED = {"serial", "parallel", "fanout", "faninsum", "faninconcat", "elementwise", "layer",
             "activation", "faninprod"}

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<str>'[^']*'|"[^"]*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<arrow>>>)
  | (?P<punct>[()\[\],=*|])
""", re.VERBOSE)


def _key(name: str) -> str:
    return name.lower().replace("_", "")


def layer_names() -> dict[str, type]:
    """The SPEC names: normalized name -> widenets layer class (from `widenets.__all__`)."""
    import widenets as wn
    from widenets.layers.base import Layer

    out = {}
    for name in getattr(wn, "__all__", []):
        obj = getattr(wn, name, None)
        if inspect.isclass(obj) and issubclass(obj, Layer) and _key(name) not in _EXCLUDED:
            out[_key(name)] = obj
    return out


def _tokens(text: str) -> list[tuple[str, str, int]]:
    toks, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"parse_spec: unexpected character {text[pos]!r} at position {pos} "
                             f"of {text!r}")
        kind = m.lastgroup
        if kind != "ws":
            toks.append((kind, m.group(), pos))
        pos = m.end()
    return toks


def _value(kind: str, tok: str):
    if kind == "num":
        return float(tok) if any(c in tok for c in ".eE") else int(tok)
    if kind == "str":
        return tok[1:-1]
    low = tok.lower()
    return {"none": None, "true": True, "false": False}.get(low, tok)


class _Parser:
    def __init__(self, text: str):
        self.text, self.toks, self.i = text, _tokens(text), 0
        self.names = layer_names()

    def error(self, msg: str) -> ValueError:
        pos = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text)
        text = self.text if len(self.text) <= 120 else self.text[:117] + "..."
        return ValueError(f"parse_spec: {msg} at position {pos} of {text!r}; see "
                          f"widenets.tiles.spec for the grammar, e.g. "
                          f"'dense(512, w_std=1.5) relu dense(1)'")

    def peek(self, value: str | None = None):
        if self.i >= len(self.toks):
            return None
        tok = self.toks[self.i]
        return tok if value is None or tok[1] == value else None

    def take(self, value: str):
        if not self.peek(value):
            raise self.error(f"expected {value!r}")
        self.i += 1

    def spec(self, closing: str | None = None) -> list:
        layers = []
        while self.peek() is not None and not self.peek(closing or "\0"):
            kind, tok, _ = self.peek()
            if kind in ("arrow",) or tok in (",", "|"):
                self.i += 1
                continue
            if tok == "[":
                self.i += 1
                group = self.spec("]")
                self.take("]")
                self.take("*")
                if not self.peek() or self.peek()[0] != "num" or not self.peek()[1].isdigit():
                    raise self.error("expected a repeat count after ']*'")
                count = _repeat_count(self.peek()[1], len(group), len(layers), self.error)
                layers += group * count
                self.i += 1
            elif kind == "name":
                layers.append(self.layer())
            else:
                raise self.error(f"expected a layer name, got {tok!r}")
        if not layers:
            raise self.error("expected at least one layer")
        return layers

    def layer(self):
        _, name, _ = self.toks[self.i]
        self.i += 1
        args, kwargs = [], {}
        if self.peek("("):
            self.i += 1
            while not self.peek(")"):
                if self.peek() is None:
                    raise self.error("missing ')'")
                kind, tok, _ = self.toks[self.i]
                if kind == "name" and self.i + 1 < len(self.toks) and \
                        self.toks[self.i + 1][1] == "=":
                    self.i += 2
                    if self.peek() is None or self.peek()[0] not in ("num", "str", "name"):
                        raise self.error(f"expected a value for {tok}=")
                    kwargs[tok] = _value(*self.toks[self.i][:2])
                elif kind in ("num", "str", "name"):
                    if kwargs:
                        raise self.error("positional argument after a keyword argument")
                    args.append(_value(kind, tok))
                else:
                    raise self.error(f"expected an argument, got {tok!r}")
                self.i += 1
                if self.peek(","):
                    self.i += 1
                elif not self.peek(")"):
                    raise self.error("expected ',' or ')'")
            self.i += 1
        make_layer(name, args, kwargs, self.names)  # fail early, at the right position
        return (name, args, kwargs)


def _repeat_count(text, group: int, before: int, error) -> int:
    """The repeat count `text` of a group of `group` layers after `before` layers, or an error
    when the expanded SPEC would exceed MAX_LAYERS (checked before anything is built)."""
    digits = str(text).lstrip("+")
    if len(digits) > 12:  # int() of a huge literal is itself slow; any such count is too big
        count = None
    else:
        count = int(digits)
    if count is not None and count < 1:
        raise error(f"a repeat count must be a positive int, got {text}")
    if count is None or before + group * count > MAX_LAYERS:
        total = "more than 10^12" if count is None else f"{before + group * count}"
        raise error(f"the repeat [...]*{text if count is not None else digits[:12] + '...'} "
                    f"would build {total} layers; a SPEC may build at most {MAX_LAYERS} layers "
                    f"(widenets.tiles.spec.MAX_LAYERS)")
    return count


def make_layer(name: str, args: list, kwargs: dict, names: dict | None = None):
    """Instantiate the layer called `name` (SPEC spelling) with the given arguments."""
    names = layer_names() if names is None else names
    cls = names.get(_key(name))
    if cls is None:
        raise ValueError(f"parse_spec: unknown layer {name!r}; known layers: "
                         f"{', '.join(sorted(names))}")
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"parse_spec: bad arguments for {name}: {e}") from e


def _from_json(items, names) -> list:
    """Layer recipes (name, args, kwargs) from the JSON form."""
    if not isinstance(items, list):
        items = [items]
    layers = []
    for item in items:
        if isinstance(item, str):
            layers += _Parser(item).spec()
        elif isinstance(item, dict) and "repeat" in item:
            n = item["repeat"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"parse_spec: 'repeat' must be a positive int, got {n!r}")
            group = _from_json(item.get("layers", []), names)

            def error(msg):
                return ValueError(f"parse_spec: {msg} in the JSON SPEC")

            layers += group * _repeat_count(str(n), len(group), len(layers), error)
        elif isinstance(item, dict) and "layer" in item:
            kw = {k: v for k, v in item.items() if k not in ("layer", "args")}
            recipe = (item["layer"], list(item.get("args", [])), kw)
            make_layer(*recipe, names)
            layers.append(recipe)
        else:
            raise ValueError(f"parse_spec: a JSON item must be a string, "
                             f"{{'layer': ..., 'args': [...], ...}} or "
                             f"{{'repeat': n, 'layers': [...]}}, got {item!r}")
    if not layers:
        raise ValueError("parse_spec: the JSON SPEC has no layers")
    return layers


def parse_spec(spec: str):
    """A widenets net (`serial` of the layers) from a SPEC string, JSON, or .json file.

    Args:
        spec: text or JSON (see the module docstring), or the path of a .json file.

    Returns:
        A `wn.Layer` (a single layer, or `serial(...)` of several).
    """
    import widenets as wn

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"parse_spec: SPEC must be a non-empty string, got {spec!r}")
    text = spec.strip()
    if text.endswith(".json") and os.path.isfile(text):
        with open(text) as f:
            text = f.read().strip()
    layers = None
    if text[:1] in "[{":
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if data is not None:
            layers = _from_json(data, layer_names())
    if layers is None:
        layers = _Parser(text).spec()
    if len(layers) > MAX_LAYERS:
        raise ValueError(f"parse_spec: the SPEC would build {len(layers)} layers; a SPEC may "
                         f"build at most {MAX_LAYERS} layers (widenets.tiles.spec.MAX_LAYERS)")
    # A fresh layer object per occurrence (a repeated group gives independent layers).
    names = layer_names()
    layers = [make_layer(*recipe, names) for recipe in layers]
    return layers[0] if len(layers) == 1 else wn.serial(*layers)
