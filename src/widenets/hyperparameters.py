"""Hyperparameters of a widenets network: list them, replace them, make them differentiable.

Every layer declares its continuous hyperparameters in `Layer.hyperparameter_domains`
(attribute name -> "positive" or "real"): σw and σb of Dense and Conv, the parameters of the
activations (`LeakyRelu(alpha)`, `Sin(a, b, c)`, ...). A network's hyperparameters are named by
the layer's position in the tree of combinators and the attribute:

    net = wn.serial(wn.Dense(512), wn.Relu(), wn.Dense(1))
    wn.hyperparameters(net)     # {"0.w_std": 1.0, "0.b_std": 0.0, "2.w_std": 1.0, "2.b_std": 0.0}

`with_hyperparameters` returns a copy with some of them replaced; keys may be glob patterns
("*.w_std"), which ties one value to every matching hyperparameter. Values may be 0-d torch
tensors with `requires_grad=True`: `net.kernel(...)` is then differentiable with respect to
them (autograd through the closed forms, docs/math.md §marginal-likelihood).
"""

from __future__ import annotations

import copy
import fnmatch

from .layers.base import Layer, check_real, check_std

__all__ = ["hyperparameters", "hyperparameter_domains", "with_hyperparameters", "match_names",
           "hyperparameter_groups"]

DOMAINS = ("positive", "real")


def _children(layer: Layer) -> tuple[Layer, ...]:
    return tuple(layer.sublayers())


def _walk(layer: Layer, prefix: str = ""):
    """(path, layer) for every layer of the tree, depth first; paths "0", "1.2", ...."""
    yield prefix, layer
    for i, child in enumerate(_children(layer)):
        yield from _walk(child, f"{prefix}{i}.")


def _entries(net: Layer):
    """(name, layer, attribute, domain) for every hyperparameter, in tree order."""
    if not isinstance(net, Layer):
        raise TypeError(f"hyperparameters: net must be a widenets layer, got "
                        f"{type(net).__name__}")
    for path, layer in _walk(net):
        for attr, domain in layer.hyperparameter_domains.items():
            if domain not in DOMAINS:
                raise TypeError(f"{type(layer).__name__}.hyperparameter_domains: domain of "
                                f"{attr!r} must be one of {DOMAINS}, got {domain!r}")
            if getattr(layer, attr, None) is None:        # e.g. Dense(b_std=None): no bias
                continue
            yield f"{path}{attr}", layer, attr, domain


def hyperparameters(net: Layer) -> dict:
    """The continuous hyperparameters of a network, by name (floats or 0-d tensors).

    Args:
        net: a widenets layer or combinator.

    Returns:
        dict name -> value, in the order of the layers; names are "<path>.<attribute>" with
        the path the positions in `serial`/`parallel` (nested: "1.0.w_std").

    Example:
        >>> import widenets as wn
        >>> net = wn.serial(wn.Dense(64, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(1))
        >>> wn.hyperparameters(net)
        {'0.w_std': 1.5, '0.b_std': 0.1, '2.w_std': 1.0, '2.b_std': 0.0}
    """
    return {name: getattr(layer, attr) for name, layer, attr, _ in _entries(net)}


def hyperparameter_domains(net: Layer) -> dict:
    """dict name -> "positive" (σ's, scales: kept ≥ 0) or "real", as `hyperparameters` names.

    Example:
        >>> import widenets as wn
        >>> wn.hyperparameter_domains(wn.serial(wn.Dense(4), wn.LeakyRelu(0.1)))["0.w_std"]
        'positive'
    """
    return {name: domain for name, _, _, domain in _entries(net)}


def match_names(names, patterns, *, func: str, arg: str) -> dict:
    """For each pattern (an exact name or a glob), the names it selects; none selected raises."""
    names = list(names)
    out = {}
    for pat in patterns:
        if not isinstance(pat, str):
            raise TypeError(f"{func}: {arg} keys must be hyperparameter names or glob patterns "
                            f"(str), got {pat!r}")
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise ValueError(f"{func}: {arg} key {pat!r} matches no hyperparameter; the network "
                             f"has {names}")
        out[pat] = hit
    return out


def _check_value(value, *, domain: str, name: str, func: str):
    """The layers' own checks: `check_std` (≥ 0) or `check_real`, numbers or 0-d tensors."""
    check = check_std if domain == "positive" else check_real
    return check(value, func=func, arg=name)


def _rebuild(layer: Layer, new_children: list[Layer]) -> Layer:
    """A shallow copy of a composite with its children replaced, in `sublayers()` order.

    Children are found among the copy's attributes (a Layer, or a tuple/list of Layers), in
    attribute order; a composite that keeps them elsewhere must say so by raising here.
    """
    out = copy.copy(layer)
    old = _children(layer)
    queue = list(new_children)
    seen = []
    for attr, value in list(vars(out).items()):
        if isinstance(value, Layer):
            seen.append(value)
            setattr(out, attr, queue.pop(0))
        elif isinstance(value, (tuple, list)) and value and all(isinstance(v, Layer)
                                                                 for v in value):
            seen.extend(value)
            setattr(out, attr, type(value)(queue.pop(0) for _ in value))
    if len(seen) != len(old) or any(a is not b for a, b in zip(seen, old)):
        raise TypeError(f"with_hyperparameters: cannot copy {type(layer).__name__}: its "
                        f"sublayers() are not its Layer-valued attributes in order")
    return out


def with_hyperparameters(net: Layer, values: dict) -> Layer:
    """A copy of `net` with hyperparameters replaced (see the module docstring).

    Args:
        net: a widenets layer or combinator (unchanged).
        values: dict name-or-glob -> new value (a number, or a 0-d floating tensor, e.g. one
            with requires_grad=True). A glob ties one value to every hyperparameter it matches.

    Returns:
        A new network sharing nothing mutable with `net`.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1))
        >>> s = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
        >>> k = net.with_hyperparameters({"*.w_std": s}).kernel(torch.randn(3, 5), get="nngp")
        >>> k.sum().backward(); s.grad is not None
        True
    """
    func = "with_hyperparameters"
    if not isinstance(values, dict):
        raise TypeError(f"{func}: values must be a dict name -> value, got "
                        f"{type(values).__name__}")
    entries = list(_entries(net))
    domains = {name: domain for name, _, _, domain in entries}
    chosen: dict[str, object] = {}
    for pat, names in match_names(domains, values, func=func, arg="values").items():
        for name in names:
            chosen[name] = _check_value(values[pat], domain=domains[name], name=name, func=func)

    def rebuild(layer: Layer, prefix: str) -> Layer:
        kids = _children(layer)
        new = layer if not kids else _rebuild(
            layer, [rebuild(c, f"{prefix}{i}.") for i, c in enumerate(kids)])
        mine = {attr: chosen[prefix + attr] for attr in layer.hyperparameter_domains
                if prefix + attr in chosen}
        if mine:
            new = copy.copy(new) if new is layer else new
            for attr, v in mine.items():
                setattr(new, attr, v)
            new.hyperparameters_changed()
        return new

    return rebuild(net, "")


def hyperparameter_groups(net: Layer, *, names=None, tied=False,
                          func: str = "hyperparameter_groups") -> dict[str, list[str]]:
    """The free parameters of a fit: group label -> the hyperparameter names sharing a value.

    Args:
        net: a widenets network.
        names: which hyperparameters: None (all), a name or glob, or a list of them.
        tied: False (each its own group), True (one group per attribute name, labelled
            "*.w_std"), or a dict label -> glob pattern (the rest stay free).
        func: the public function to name in errors.

    Example:
        >>> import widenets as wn
        >>> net = wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1))
        >>> wn.hyperparameter_groups(net, tied=True)["*.w_std"]
        ['0.w_std', '2.w_std']
    """
    domains = hyperparameter_domains(net)
    chosen = list(domains) if names is None else [
        n for hits in match_names(domains, [names] if isinstance(names, str) else names,
                                  func=func, arg="names").values() for n in hits]
    chosen = list(dict.fromkeys(chosen))
    if tied is False or tied is None:
        return {n: [n] for n in chosen}
    if tied is True:               # one value per attribute name: all w_std, all b_std, ...
        out: dict[str, list[str]] = {}
        for n in chosen:
            out.setdefault("*." + n.rsplit(".", 1)[-1], []).append(n)
        return out
    if isinstance(tied, dict):
        out, used = {}, set()
        for label, hits in match_names(chosen, tied.values(), func=func, arg="tied").items():
            label = next(k for k, v in tied.items() if v == label)
            out[label] = hits
            used.update(hits)
        out.update({n: [n] for n in chosen if n not in used})
        return out
    raise TypeError(f"{func}: tied must be True (one value per attribute name), False, or a "
                    f"dict label -> glob pattern, got {tied!r}")
