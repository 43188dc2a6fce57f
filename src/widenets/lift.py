"""`lift`: a plain torch `nn.Module` -> the equivalent widenets layer graph (via torch.fx).

    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    net = wn.lift(model, (3, 32, 32))            # torch's default init, standard param.
    k = net.kernel(x1, x2)                       # the infinite-width kernel of this family
    twin = net.module_from(model)                # widenets module with model's weights

Supported: nn.Linear, nn.Conv1d/2d (groups = dilation = 1; zeros or circular padding),
nn.ConvTranspose1d/2d (groups = dilation = 1, output_padding = 0, zeros padding),
nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh / nn.Sigmoid / nn.SiLU / nn.Softplus (Gauss-Hermite
quadrature), nn.AvgPool1d/2d (count_include_pad=True, no ceil_mode), nn.AdaptiveAvgPool1d/2d(1),
nn.Flatten(1), nn.LayerNorm over the features of flat inputs, nn.Identity, eval-mode
nn.Dropout, nn.Sequential, residual additions (x + f(x)) and the functional forms
(F.relu, torch.relu, F.leaky_relu, F.gelu, F.softplus, F.silu, torch.tanh, torch.sigmoid,
F.avg_pool1d/2d, F.dropout with training=False, torch.flatten(x, 1), ...). Anything else
(MaxPool, BatchNorm, data-dependent control flow) raises an error that names it;
nn.MultiheadAttention raises one that lists how it differs from the closed-form
`GlobalSelfAttention` (its 1/√d logits with independent queries and keys never have a
closed-form kernel).

Initialization scales, per weight layer of fan-in n (`init`):
* "torch" (default): torch's default init, kaiming_uniform(a=√5) weights and
  U(±1/√n) biases: variances 1/(3n) for both, so σw = 1/√3 and σb = 1/√(3n).
* "weights": measured from the module's current weights: σw = √(n·mean W²), σb = √(mean b²)
  (for a module freshly initialized by your own scheme).
Explicit `w_std` / `b_std` override both for every weight layer.
"""

from __future__ import annotations

import functools
import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .layers import (
    AvgPool,
    Conv,
    ConvTranspose,
    Dense,
    Elementwise,
    FanInSum,
    Flatten,
    Gelu,
    LayerNorm,
    LeakyRelu,
    Relu,
)
from .layers.base import FULL, Layer, check_parameterization, check_std

__all__ = ["lift", "Lifted", "LiftedModule"]

INITS = ("torch", "weights")
_ALTERNATIVE = ("use wn.empirical_ntk(model, x1, x2) for the finite network's kernel or "
                "wn.monte_carlo_kernel for an average over random finite networks")


class LiftError(TypeError):
    """A module or operation that `lift` cannot turn into an exact infinite-width layer."""


def _fail(what: str, fix: str = "") -> LiftError:
    return LiftError(f"lift: {what} has no exact widenets layer; "
                     f"{fix + '; or ' if fix else ''}{_ALTERNATIVE}")


class _Node:
    """One step of the lifted graph: `layer` applied to the values of `args` (node names);
    `source` is the qualified name of the torch submodule it came from (weights to copy)."""

    def __init__(self, name: str, layer: Layer | None, args: list[str], source: str | None):
        self.name, self.layer, self.args, self.source = name, layer, args, source


class LiftedModule(nn.Module):
    """The finite network of a `Lifted` graph: runs its nodes' modules in order."""

    def __init__(self, nodes: list[_Node], mods: dict[str, nn.Module], output: str, inp: str):
        super().__init__()
        self._order = [(n.name, list(n.args)) for n in nodes]
        self.steps = nn.ModuleDict({k.replace(".", "_"): m for k, m in mods.items()})
        self._output, self._input = output, inp

    def forward(self, x):
        env = {self._input: x}
        for name, args in self._order:
            vals = [env[a] for a in args]
            env[name] = self.steps[name.replace(".", "_")](vals if len(vals) > 1 else vals[0])
        return env[self._output]


class Lifted(Layer):
    """A widenets layer graph lifted from a torch module (see `lift`).

    Attributes:
        nodes: the graph's steps in execution order (name, layer, input names, torch source).
        in_shape: the input shape (without batch axis) it was lifted for.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        >>> lifted = wn.lift(m, (4,))
        >>> lifted.kernel(torch.randn(3, 4), get="ntk").shape
        torch.Size([3, 3])
        >>> isinstance(lifted, wn.Lifted)
        True
    """

    def __init__(self, nodes: list[_Node], input_name: str, output_name: str, in_shape):
        self.nodes = nodes
        self.in_shape = tuple(in_shape)
        self._input, self._output = input_name, output_name

    @property
    def layers(self) -> list[Layer]:
        """The layers in execution order (a residual sum appears as FanInSum)."""
        return [n.layer for n in self.nodes]

    def sublayers(self) -> tuple[Layer, ...]:
        return tuple(n.layer for n in self.nodes)

    def apply_kernel(self, k):
        env = {self._input: k}
        for n in self.nodes:
            vals = [env[a] for a in n.args]
            env[n.name] = n.layer.apply_kernel(vals if len(vals) > 1 else vals[0])
        return env[self._output]

    def layout_need(self, need):
        needs: dict[str, int] = {self._output: need}
        for n in reversed(self.nodes):
            if n.name not in needs:
                continue
            inner = n.layer.layout_need(needs[n.name])
            if isinstance(inner, list):
                inner = max(inner)
            for a in n.args:
                needs[a] = max(needs.get(a, 0), inner)
        return needs.get(self._input, FULL)

    def build(self, in_shape, generator, dtype):
        shapes = {self._input: tuple(in_shape)}
        mods = {}
        for n in self.nodes:
            ins = [shapes[a] for a in n.args]
            mods[n.name], shapes[n.name] = n.layer.build(ins if len(ins) > 1 else ins[0],
                                                          generator, dtype)
        return LiftedModule(self.nodes, mods, self._output, self._input), shapes[self._output]

    def module_from(self, original: nn.Module) -> LiftedModule:
        """The finite widenets module with `original`'s current weights (its forward equals
        `original`'s). NTK-parameterized layers store weight / multiplier."""
        func = "Lifted.module_from"
        if not isinstance(original, nn.Module):
            raise TypeError(f"{func}: original must be the torch.nn.Module this Lifted was built "
                            f"from (or one of the same architecture), got "
                            f"{type(original).__name__}")
        ref = next(original.parameters(), None)
        dtype = ref.dtype if ref is not None else torch.float32
        mod = self.module(self.in_shape, seed=0, dtype=dtype)
        with torch.no_grad():
            for n in self.nodes:
                if n.source is None:
                    continue
                try:
                    src = original.get_submodule(n.source)
                except AttributeError:
                    raise ValueError(f"{func}: original has no submodule {n.source!r}, expected "
                                     f"the architecture this Lifted was built from") from None
                dst = mod.steps[n.name.replace(".", "_")]
                if not any(True for _ in dst.parameters()):
                    continue
                for attr in ("weight", "bias"):
                    want = getattr(dst, attr, None)
                    got = getattr(src, attr, None)
                    if want is None or got is None:
                        if attr == "weight" and got is None:
                            raise ValueError(f"{func}: original.{n.source} has no weight, "
                                             f"expected one of shape {tuple(want.shape)}")
                        continue
                    if tuple(got.shape) != tuple(want.shape):
                        raise ValueError(f"{func}: original.{n.source}.{attr} has shape "
                                         f"{tuple(got.shape)}, expected {tuple(want.shape)} "
                                         f"(the module this Lifted was built from); lift the "
                                         f"new module instead")
                w_scale = getattr(dst, "w_scale", 1.0)
                dst.weight.copy_(src.weight / w_scale)
                if getattr(dst, "bias", None) is not None:
                    b_scale = getattr(dst, "b_scale", 1.0)
                    if b_scale == 0.0:
                        if src.bias is not None and bool((src.bias != 0).any()):
                            raise ValueError(f"Lifted.module_from: {n.source} has a nonzero "
                                             f"bias but its layer has b_std=0 in the NTK "
                                             f"parameterization; lift with b_std > 0")
                        dst.bias.zero_()
                    else:
                        dst.bias.copy_(src.bias / b_scale)
        return mod

    def __repr__(self) -> str:
        return "Lifted(" + ", ".join(repr(n.layer) for n in self.nodes) + ")"


def lift(module: nn.Module, in_shape, *, w_std: float | None = None,
         b_std: float | None = None, parameterization: str = "standard",
         init: str = "torch") -> Lifted:
    """Turn a plain torch module into the equivalent widenets layer graph.

    Args:
        module: an `nn.Module` traceable by torch.fx (see the module docstring for the
            supported layers and operations).
        in_shape: shape of one input without the batch axis, e.g. (3, 32, 32) or (784,).
        w_std: σw for every Linear/Conv (None: from `init`).
        b_std: σb for every bias (None: from `init`).
        parameterization: "standard" (default: torch trains W and b directly) or "ntk".
        init: "torch" (torch's default initialization) or "weights" (measured from the
            module's current weights); see the module docstring.

    Returns:
        A `Lifted` layer: `.kernel(x1, x2)`, `.module(in_shape, seed=...)`,
        `.module_from(module)` (same weights).

    Raises:
        LiftError (a TypeError): a module or operation without an exact kernel, naming it.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        >>> lifted = wn.lift(m, (4,))
        >>> lifted.kernel(torch.randn(3, 4), get="ntk").shape
        torch.Size([3, 3])
    """
    func = "lift"
    if not isinstance(module, nn.Module):
        raise TypeError(f"{func}: module must be a torch.nn.Module, got {type(module).__name__}")
    if isinstance(in_shape, int):
        in_shape = (in_shape,)
    if not isinstance(in_shape, (tuple, list)) or not in_shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in in_shape):
        raise ValueError(f"{func}: in_shape must be a tuple of positive ints without the batch "
                         f"axis, e.g. (3, 32, 32), got {in_shape!r}")
    if init not in INITS:
        raise ValueError(f"{func}: init must be one of {INITS}, got {init!r}")
    check_parameterization(parameterization, func=func)
    w_std = check_std(w_std, func=func, arg="w_std", allow_none=True)
    b_std = check_std(b_std, func=func, arg="b_std", allow_none=True)
    try:
        gm = fx.symbolic_trace(module)
    except Exception as e:  # noqa: BLE001 - torch.fx raises many types
        raise LiftError(f"lift: torch.fx cannot trace {type(module).__name__} ({type(e).__name__}"
                        f": {e}); data-dependent control flow has no fixed layer graph; "
                        f"{_ALTERNATIVE}") from e
    ref = next(module.parameters(), None)
    probe = torch.zeros(2, *in_shape, dtype=ref.dtype if ref is not None else torch.float32)
    try:
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(gm).propagate(probe)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"lift: running {type(module).__name__} on an input of shape "
                         f"(batch, {', '.join(map(str, in_shape))}) failed ({e}); check "
                         f"in_shape") from e
    ctx = _Ctx(module, w_std, b_std, parameterization, init)
    nodes: list[_Node] = []
    input_name = output_name = None
    alias: dict[str, str] = {}            # identity ops map to their input
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if input_name is not None:
                raise _fail(f"a second input ({node.name})", "lift models with one input")
            input_name = node.name
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise _fail("an output that is not a single tensor")
            output_name = alias.get(out.name, out.name)
            continue
        if node.op == "get_attr":
            raise _fail(f"a direct use of the parameter or buffer {node.target!r} in forward")
        args = [a for a in node.args if isinstance(a, fx.Node)]
        in_meta = args[0].meta.get("tensor_meta") if args else None
        in_sh = tuple(in_meta.shape[1:]) if in_meta is not None else None
        layer, source = ctx.convert(node, in_sh)
        arg_names = [alias.get(a.name, a.name) for a in args]
        if layer is None:                # identity
            alias[node.name] = arg_names[0]
            continue
        nodes.append(_Node(node.name, layer, arg_names, source))
    if output_name == input_name or not nodes:
        raise _fail("a model without layers (the identity)")
    return Lifted(nodes, input_name, output_name, in_shape)


def _arg(node: fx.Node, pos: int, name: str, default):
    """The value of a call's argument given by position `pos` or keyword `name`."""
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _avg_pool(where: str, window, stride, padding, ceil_mode, count_include_pad,
              divisor_override):
    if ceil_mode or not count_include_pad or divisor_override is not None:
        raise _fail(f"{where} with ceil_mode=True, count_include_pad=False or a "
                    f"divisor_override", "use the defaults")
    if isinstance(stride, (tuple, list)) and not stride:       # F.avg_pool2d(stride=[])
        stride = window
    return AvgPool(window, stride=stride,
                   padding="VALID" if padding in (0, (0,), (0, 0)) else padding)


_ELEMENTWISE_FNS = {
    torch.tanh: ("tanh", torch.tanh), F.tanh: ("tanh", torch.tanh),
    torch.sigmoid: ("sigmoid", torch.sigmoid), F.sigmoid: ("sigmoid", torch.sigmoid),
}
_RELU_FNS = (F.relu, torch.relu)
_ADD_FNS = (operator.add, torch.add, operator.iadd)


def _attention_difference(mod: nn.MultiheadAttention) -> str:
    """How an nn.MultiheadAttention differs from widenets' closed-form GlobalSelfAttention."""
    diffs = ["it scales the logits by 1/√head_dim with independent query and key projections, "
             "which has no closed-form kernel (widenets' exact kernel needs 1/head_dim "
             "scaling with tied query and key weights, linear_scaling=True)"]
    if not mod.batch_first:
        diffs.append("batch_first=False (sequence-first inputs)")
    if mod.in_proj_bias is not None:
        diffs.append("biases on the query/key/value projections (bias=True)")
    if mod.bias_k is not None or mod.add_zero_attn:
        diffs.append("add_bias_kv / add_zero_attn")
    if mod.training and mod.dropout > 0:
        diffs.append(f"attention dropout p={mod.dropout} in training mode")
    if not mod._qkv_same_embed_dim:
        diffs.append("kdim/vdim different from embed_dim")
    return "; ".join(diffs)


class _Ctx:
    def __init__(self, root, w_std, b_std, parameterization, init):
        self.root, self.w_std, self.b_std = root, w_std, b_std
        self.parameterization, self.init = parameterization, init

    # ---------------------------------------------------------------- init scales
    def _scales(self, mod, fan_in: int, name: str):
        if self.w_std is not None:
            ws = self.w_std
        elif self.init == "torch":
            ws = 1 / math.sqrt(3)                 # kaiming_uniform(a=√5): Var = 1/(3 fan_in)
        else:
            ws = math.sqrt(fan_in * float(mod.weight.detach().double().pow(2).mean()))
        if mod.bias is None:
            bs = None
        elif self.b_std is not None:
            bs = self.b_std
        elif self.init == "torch":
            bs = 1 / math.sqrt(3 * fan_in)        # U(±1/√fan_in): Var = 1/(3 fan_in)
        else:
            bs = math.sqrt(float(mod.bias.detach().double().pow(2).mean()))
        return ws, bs

    # ---------------------------------------------------------------- conversion
    def convert(self, node: fx.Node, in_sh):
        if node.op == "call_module":
            mod = self.root.get_submodule(node.target)
            return self._module(mod, node, in_sh), node.target
        if node.op == "call_function":
            return self._function(node), None
        if node.op == "call_method":
            return self._method(node), None
        raise _fail(f"the graph operation {node.op} {node.target!r}")

    def _module(self, mod: nn.Module, node, in_sh):
        where = f"{type(mod).__name__} at {node.target!r}"
        if isinstance(mod, nn.Linear):
            if in_sh is None or len(in_sh) != 1:
                raise _fail(f"{where} applied to inputs of shape {in_sh} (not flat)",
                            "flatten before the Linear layer")
            ws, bs = self._scales(mod, mod.in_features, where)
            return Dense(mod.out_features, w_std=ws, b_std=bs,
                         parameterization=self.parameterization)
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return self._conv(mod, where, in_sh)
        if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
            return self._conv_transpose(mod, where)
        if isinstance(mod, nn.ReLU):
            return Relu()
        if isinstance(mod, nn.LeakyReLU):
            return LeakyRelu(mod.negative_slope)
        if isinstance(mod, nn.GELU):
            if mod.approximate == "none":
                return Gelu()
            return Elementwise(functools.partial(F.gelu, approximate=mod.approximate),
                               name=f"gelu_{mod.approximate}")
        if isinstance(mod, nn.Tanh):
            return Elementwise(torch.tanh, name="tanh")
        if isinstance(mod, nn.Sigmoid):
            return Elementwise(torch.sigmoid, name="sigmoid")
        if isinstance(mod, nn.SiLU):
            return Elementwise(F.silu, name="silu")
        if isinstance(mod, nn.Softplus):
            return Elementwise(functools.partial(F.softplus, beta=mod.beta,
                                                 threshold=mod.threshold), name="softplus")
        if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d)):
            return _avg_pool(where, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                             mod.count_include_pad, getattr(mod, "divisor_override", None))
        if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            size = mod.output_size
            sizes = (size,) if isinstance(size, int) else tuple(size)
            if any(s != 1 for s in sizes):
                raise _fail(f"{where} with output_size={size}", "use output size 1 (global "
                            "average pooling) or nn.AvgPool2d")
            return AvgPool(tuple(in_sh[1:]), padding="VALID")   # one window: (N, C, 1, 1)
        if isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise _fail(f"{where} with start_dim={mod.start_dim}, end_dim={mod.end_dim}",
                            "use nn.Flatten() (start_dim=1)")
            return Flatten()
        if isinstance(mod, nn.LayerNorm):
            return self._layer_norm(mod, where, in_sh)
        if isinstance(mod, nn.Identity):
            return None
        if isinstance(mod, nn.Dropout):
            if not mod.training or mod.p == 0:
                return None
            raise _fail(f"{where} in training mode (p={mod.p}): its kernel depends on whether "
                        f"inputs share a mask", "call model.eval() before lift")
        hint = ""
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            hint = "max pooling has no closed-form kernel; replace it with nn.AvgPool2d"
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            hint = "batch norm couples the inputs of a batch; try nn.LayerNorm"
        elif isinstance(mod, nn.MultiheadAttention):
            raise _fail(f"{where} ({_attention_difference(mod)})",
                        "wn.GlobalSelfAttention(..., linear_scaling=False) builds this finite "
                        "layer (channels-first), and linear_scaling=True is the variant with "
                        "an exact kernel")
        raise _fail(where, hint)

    def _conv(self, mod, where, in_sh):
        if mod.groups != 1 or any(d != 1 for d in mod.dilation):
            raise _fail(f"{where} with groups={mod.groups}, dilation={mod.dilation}",
                        "use groups=1 and dilation=1")
        if mod.padding_mode not in ("zeros", "circular"):
            raise _fail(f"{where} with padding_mode={mod.padding_mode!r}",
                        "use padding_mode='zeros' or 'circular'")
        k = mod.kernel_size
        if isinstance(mod.padding, str):
            padding = mod.padding.upper()
        elif all(p == 0 for p in mod.padding):
            padding = "VALID"
        else:
            padding = tuple(mod.padding)
        if mod.padding_mode == "circular":
            same = tuple((kk - 1) // 2 for kk in k)
            if (padding != "SAME" and padding != same) or any(s != 1 for s in mod.stride) \
                    or any(kk % 2 == 0 for kk in k):
                raise _fail(f"{where} with circular padding {mod.padding}, stride "
                            f"{mod.stride}", "use odd kernels, stride 1 and padding "
                            "(k - 1) / 2")
            padding = "CIRCULAR"
        fan_in = mod.in_channels * math.prod(k)
        ws, bs = self._scales(mod, fan_in, where)
        return Conv(mod.out_channels, tuple(k), stride=tuple(mod.stride), padding=padding,
                    w_std=ws, b_std=bs, parameterization=self.parameterization)

    def _conv_transpose(self, mod, where):
        if mod.groups != 1 or any(d != 1 for d in mod.dilation) or any(
                p != 0 for p in mod.output_padding) or mod.padding_mode != "zeros":
            raise _fail(f"{where} with groups={mod.groups}, dilation={mod.dilation}, "
                        f"output_padding={mod.output_padding}, padding_mode="
                        f"{mod.padding_mode!r}", "use groups=1, dilation=1, output_padding=0 "
                        "and zeros padding")
        k = tuple(mod.kernel_size)
        fan_in = mod.in_channels * math.prod(k)         # widenets' fan-in (as NT)
        ws, bs = self._scales(mod, fan_in, where)
        if self.init == "torch":
            # torch initializes the (in, out, *k) weight with its fan-in taken from axis 1:
            # Var W = Var b = 1/(3 out |D|), i.e. σw² = in / (3 out) at fan-in in·|D|
            torch_fan = mod.out_channels * math.prod(k)
            if self.w_std is None:
                ws = math.sqrt(fan_in / (3 * torch_fan))
            if mod.bias is not None and self.b_std is None:
                bs = 1 / math.sqrt(3 * torch_fan)
        return ConvTranspose(mod.out_channels, k, stride=tuple(mod.stride),
                             padding=tuple(mod.padding), w_std=ws, b_std=bs,
                             parameterization=self.parameterization)

    def _layer_norm(self, mod, where, in_sh):
        shape = tuple(mod.normalized_shape)
        if in_sh is None or len(in_sh) != 1 or shape != tuple(in_sh):
            raise _fail(f"{where} normalizing {shape} of inputs shaped {in_sh}",
                        "nn.LayerNorm is supported over the features of flat (N, d) inputs; "
                        "for images use wn.LayerNorm() (over channels) in a hand-built net")
        affine = mod.elementwise_affine
        if affine:
            if mod.bias is None:
                raise _fail(f"{where} with bias=False", "use bias=True")
            if self.init == "weights" and not (bool((mod.weight == 1).all())
                                               and bool((mod.bias == 0).all())):
                raise _fail(f"{where} with affine parameters other than γ = 1, β = 0",
                            "lift a freshly initialized model")
        return LayerNorm(eps=mod.eps, affine=affine)

    def _function(self, node):
        t = node.target
        if t in _ADD_FNS:
            return self._add(node)
        if t in _RELU_FNS:
            return Relu()
        if t in _ELEMENTWISE_FNS:
            name, fn = _ELEMENTWISE_FNS[t]
            return Elementwise(fn, name=name)
        if t is F.gelu:
            approximate = _arg(node, 1, "approximate", "none")
            if approximate == "none":
                return Gelu()
            return Elementwise(functools.partial(F.gelu, approximate=approximate),
                               name=f"gelu_{approximate}")
        if t is F.leaky_relu:
            return LeakyRelu(_arg(node, 1, "negative_slope", 0.01))
        if t is F.softplus:
            beta, threshold = _arg(node, 1, "beta", 1.0), _arg(node, 2, "threshold", 20.0)
            return Elementwise(functools.partial(F.softplus, beta=beta, threshold=threshold),
                               name="softplus")
        if t is F.silu:
            return Elementwise(F.silu, name="silu")
        if t in (F.avg_pool1d, F.avg_pool2d):
            window = _arg(node, 1, "kernel_size", None)
            return _avg_pool(f"the function {t.__name__} (node {node.name})", window,
                             _arg(node, 2, "stride", None) or window,
                             _arg(node, 3, "padding", 0), _arg(node, 4, "ceil_mode", False),
                             _arg(node, 5, "count_include_pad", True),
                             _arg(node, 6, "divisor_override", None))
        if t is F.dropout:
            if not _arg(node, 2, "training", True) or _arg(node, 1, "p", 0.5) == 0:
                return None
            raise _fail(f"F.dropout in training mode (node {node.name}): its kernel depends "
                        f"on whether inputs share a mask", "pass training=self.training and "
                        "call model.eval() before lift")
        if t is torch.flatten and (node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1) \
                and node.kwargs.get("end_dim", -1) == -1 and len(node.args) <= 2:
            return Flatten()
        raise _fail(f"the function {getattr(t, '__name__', t)!r} (node {node.name})")

    def _method(self, node):
        t = node.target
        if t in ("add", "__add__", "add_"):
            return self._add(node)
        if t == "relu":
            return Relu()
        if t in ("tanh", "sigmoid"):
            return Elementwise(getattr(torch, t), name=t)
        if t == "flatten" and (node.args[1:] == (1,) or node.kwargs == {"start_dim": 1}):
            return Flatten()
        raise _fail(f"the tensor method .{t}() (node {node.name})")

    def _add(self, node):
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if len(tensors) != 2 or len(node.args) != 2 or node.kwargs:
            raise _fail(f"the addition at node {node.name} (not a sum of two tensors)")
        return FanInSum()
