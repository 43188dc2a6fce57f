"""The "structured" implementation: layer-wise Gram products for known layers, autograd for
the rest.

One batched forward pass records, for every known layer (see `structure.py`), its input; a zero
tensor δ added to its output makes the cotangents ∂f_a/∂y available as ∂f_a/∂δ, for all O
outputs at once (a backward pass per output, batched over the output basis). Inputs are
processed independently by the model (checked: BatchNorm must be in eval mode), so row i of the
batched cotangent belongs to input i. Each known parameter's contribution is then contracted in
the cheaper of the exact forms of `factors.py`; bare parameters broadcast along the batch get
their per-input gradients from recorded cotangents too (`bare.py`); the other parameters get
per-sample autograd Jacobians (of those parameters only).

`make_plan` decides once per call which modules are known, and verifies each description: on a
probe of two inputs it rebuilds Σ_{i,a} v_ia ∂f_a(x_i)/∂W from the factors (eq. 1 of
`factors.py`) and compares with autograd's gradient for a random v. A description that does not
match (a weight also used outside its module, a batch axis that is not the first, a subclass with
another forward) sends that parameter to the autograd path instead of giving a wrong kernel.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._target import Target
from .attention import (
    SHARED_COTANGENTS,
    AttentionStructure,
    attention_factors,
    describe_attention,
    recording_forward,
)
from .bare import BareRecorder, BareStructure, bare_factor
from .factors import (
    Factor,
    choose_form,
    concat_calls,
    factors_for_call,
    form_costs,
    gram_contract,
    index_contract,
    jacobian_contract,
    jacobian_form,
    row_products,
    trace_rows,
)
from .jacobian import per_sample_jacobians
from .structure import LayerStructure, describe_module

__all__ = ["KnownLayer", "Plan", "Part", "make_plan", "StructuredEngine",
           "output_basis_grads", "state_elements"]


@dataclass
class KnownLayer:
    """A module the structured path accelerates.

    Attributes:
        name: module path in the model ("" for the model itself).
        module: the module.
        structure: its description.
        roles: "weight"/"bias" (attention: the parameter's attribute path) -> trainable
            parameter name.
        ksize: conv kernel size (affine and bare: the parameter's shape); vocab: embedding
            rows.
        batch_axis: the axis of the layer's input that indexes the inputs of the batch (0, or
            1 for sequence-first layouts (L, n, d) of Linear/Embedding/LayerNorm), found by the
            probe.
        order: rank of the layer's first call in the probe's forward pass.
    """

    name: str
    module: nn.Module
    structure: LayerStructure | AttentionStructure | BareStructure
    roles: dict[str, str]
    ksize: tuple[int, ...] = ()
    vocab: int = 0
    batch_axis: int = 0
    # per-input factor shapes from the probe: param name -> (kind, d_in, (O, G, T, d_out))
    shapes: dict[str, tuple] = field(default_factory=dict)
    # when the probe's forward first called the layer (its rank among the layers' first calls)
    order: int = 0


@dataclass
class Plan:
    """What the probe found out about the model.

    Attributes:
        known: verified known layers.
        fallback: parameter names handled by autograd Jacobians.
        out_dim: O, outputs per input (flattened).
        n_params: total trainable parameter count; fallback_params: of the fallback ones.
        flops: forward multiply-adds per input (None when not counted).
        act: output elements of all leaf modules per input (an activation-memory estimate).
        batched_backward: compute the output cotangents by one backward pass vmapped over the
            outputs (set to False when the vmapped pass fails or is wrong: then a loop over
            outputs).
        batched_checked: the vmapped pass was compared with a plain backward pass
            (`output_basis_grads(check=True)`); `make_plan` does it on the probe inputs, so the
            batches skip it.
        ops: tensor operations dispatched by one forward pass (None when not counted).
    """

    known: list[KnownLayer]
    fallback: list[str]
    out_dim: int
    n_params: int
    fallback_params: int
    flops: float | None = None
    act: float = 0.0
    batched_backward: bool = True
    batched_checked: bool = False
    ops: int | None = None
    n_tensors: int = 0


# ----------------------------------------------------------------------------- capturing
@contextlib.contextmanager
def _capture(layers: list[KnownLayer], records: list[list], params: dict[str, torch.Tensor]):
    """Record every call of every layer: records[i] gets (inputs, deltas) per call of layer i,
    with zero tensors δ (requires grad) added to the outputs of its linear maps, so that the
    cotangents ∂f_a/∂y are ∂f_a/∂δ; None for a call that cannot be recorded.

    Module layers get a forward hook (inputs = (x,), deltas = (δ,)); attention layers run
    `attention.recording_forward` instead of their own forward (four inputs and deltas); bare
    parameters (the tensors of `params` passed to this forward) are followed by
    `bare.BareRecorder` (no inputs, one delta per use)."""
    handles = []
    patched = []
    tracked = {id(params[layer.roles["value"]]): i for i, layer in enumerate(layers)
               if layer.structure.kind == "bare"}
    recorder = BareRecorder(tracked, records) if tracked else contextlib.nullcontext()

    def make_hook(idx):
        def hook(mod, args, out):
            if not args or not isinstance(args[0], torch.Tensor) \
                    or not isinstance(out, torch.Tensor):
                records[idx].append(None)
                return None
            delta = torch.zeros_like(out, requires_grad=True)
            records[idx].append(((args[0].detach(),), (delta,)))
            return out + delta
        return hook

    try:
        for i, layer in enumerate(layers):
            if layer.structure.kind == "attention":
                layer.module.forward = recording_forward(layer.module, records[i])
                patched.append(layer.module)
            elif layer.structure.kind != "bare":
                handles.append(layer.module.register_forward_hook(make_hook(i)))
        with recorder:
            yield
    finally:
        for h in handles:
            h.remove()
        for mod in patched:
            del mod.forward


class _Calls(list):
    """A layer's records that note when the layer was first called (a shared counter)."""

    def __init__(self, clock):
        super().__init__()
        self.clock, self.first = clock, 1 << 30

    def append(self, item):
        if not self:
            self.first = next(self.clock)
        super().append(item)


def _deltas(records: list[list]) -> list[torch.Tensor]:
    return [d for rec in records for (_, ds) in rec for d in ds]


def _split(records: list[list], grads: list[torch.Tensor]) -> list[list[tuple]]:
    """The flat list of cotangents (in `_deltas` order) as records[layer][call] tuples."""
    out, pos = [], 0
    for rec in records:
        calls = []
        for _, ds in rec:
            calls.append(tuple(grads[pos:pos + len(ds)]))
            pos += len(ds)
        out.append(calls)
    return out


def output_basis_grads(out: torch.Tensor, inputs: list[torch.Tensor], *,
                       batched: bool = True, check: bool = True, axes=None,
                       status: dict | None = None) -> list[torch.Tensor]:
    """∂out[:, a]/∂inputs for every output a: each (O, *input.shape). out: (n, O).

    batched: one backward pass vmapped over the O outputs (`is_grads_batched`); else (or when
    an op has no batching rule, or a wrong one) one backward pass per output. (torch 2.13 CPU:
    the vmapped pass is the faster one for convolutions too, ~15% on a ResNet-18.)
    check: compare the batched result with one plain backward pass (`_projection_matches`;
    axes: the batch axis of each input, default 0); `make_plan` checks it on the probe
    inputs (`_batched_matches`), the structured engine's batches then skip the check.
    status: if given, status["batched"] says whether the batched result was used.
    """
    n, o = out.shape
    basis = torch.eye(o, dtype=out.dtype, device=out.device)[:, None, :].expand(o, n, o)
    grads = None
    if batched and o > 1:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                grads = torch.autograd.grad(out, inputs, basis, is_grads_batched=True,
                                            allow_unused=True, retain_graph=True)
            grads = _fill(grads, inputs, o)
            if check and not _projection_matches(out, inputs, grads, axes=axes):
                grads = None            # a batching rule that runs but is wrong
        except RuntimeError:            # an op without a batching rule
            grads = None
    if status is not None:
        status["batched"] = grads is not None
    if grads is None:                   # one backward pass per output
        grads = [torch.zeros((o, *x.shape), dtype=x.dtype, device=x.device) for x in inputs]
        for a in range(o):
            per = torch.autograd.grad(out, inputs, basis[a], allow_unused=True,
                                      retain_graph=True)
            for g, p in zip(grads, per, strict=True):
                if p is not None:
                    g[a] = p
    return grads


def _fill(grads, inputs, o: int) -> list[torch.Tensor]:
    return [torch.zeros((o, *x.shape), dtype=x.dtype, device=x.device) if g is None else g
            for g, x in zip(grads, inputs, strict=True)]


def _projection_matches(out: torch.Tensor, inputs: list[torch.Tensor],
                        grads: list[torch.Tensor], seed: int = 0, axes=None) -> bool:
    """Check the batched cotangents against one plain backward pass: with random v (n, O) and
    w (features), Σ_a v[i, a] ⟨grads[a][i], w⟩ must equal ⟨∂(Σ v·out)/∂input[i], w⟩ for every
    row i. Rows attributed to the wrong input or output fail it with probability 1.
    axes: the batch axis of each input (default 0)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    ref = torch.autograd.grad(out, inputs, v, allow_unused=True, retain_graph=True)
    tol = 1e-8 if out.dtype == torch.float64 else 1e-3
    axes = [0] * len(inputs) if axes is None else axes
    for g, r, x, ax in zip(grads, ref, inputs, axes, strict=True):
        if ax:
            g, x = g.movedim(1 + ax, 1), x.movedim(ax, 0)
            r = None if r is None else r.movedim(ax, 0)
        o, n = g.shape[:2]
        w = torch.randn(x[0].numel(), generator=gen, dtype=torch.float64).to(out)
        got = ((g.reshape(o, n, -1) @ w) * v.T).sum(0)                   # (n,)
        want = torch.zeros(n, dtype=out.dtype, device=out.device) if r is None \
            else r.reshape(n, -1) @ w
        scale = float(want.norm()) + float((g.reshape(o, n, -1) @ w).norm()) * 1e-6
        if not float((got - want).norm()) <= tol * scale + 1e-30:
            return False
    return True


def _tied_names(module: nn.Module) -> set[str]:
    """Names of parameters registered under more than one name (tied weights)."""
    by_id: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {name for names in by_id.values() if len(names) > 1 for name in names}


def _candidates(target: Target, *, attention: bool = True) -> list[KnownLayer]:
    module = target.module
    out = []
    if module is None:
        return _bare_candidates(target, set(), out)
    tied = _tied_names(module)
    claimed: set[str] = set()
    if attention:
        for mname, mod in module.named_modules():
            st = describe_attention(mod)
            if st is None:
                continue
            roles = _roles(mname, st, target, tied)
            if roles:
                out.append(KnownLayer(mname, mod, st, roles))
                claimed.update(f"{mname}.{attr}" if mname else attr
                               for _, attr in st.param_attrs())
    for mname, mod in module.named_modules():
        st = describe_module(mod)
        if st is None:
            continue
        roles = _roles(mname, st, target, tied | claimed)
        if not roles:
            continue
        w = getattr(mod, st.weight)
        ksize = tuple(w.shape[2:]) if st.kind == "conv" else ()
        ksize = tuple(w.shape) if st.kind == "affine" else ksize
        vocab = w.shape[0] if st.kind == "embedding" else 0
        out.append(KnownLayer(mname, mod, st, roles, ksize, vocab))
        claimed.update(roles.values())
    return _bare_candidates(target, claimed | tied, out)


def _roles(mname: str, st, target: Target, excluded: set[str]) -> dict[str, str]:
    """role -> full parameter name of a described module's own trainable parameters, leaving
    out `excluded` names (tied, or already claimed by another description)."""
    roles = {}
    for role, attr in st.param_attrs():
        pname = f"{mname}.{attr}" if mname else attr
        if pname in target.params and pname not in excluded:
            roles[role] = pname
    return roles


def _bare_candidates(target: Target, claimed: set[str], out: list[KnownLayer]
                     ) -> list[KnownLayer]:
    """Every other parameter is a candidate bare parameter (bare.py); those the probe sees in
    no rewritable use, or whose rewrite misses a use, end up on the autograd path."""
    for pname, p in target.params.items():
        if pname not in claimed:
            out.append(KnownLayer(pname, None, BareStructure(), {"value": pname},
                                  tuple(p.shape)))
    return out


def _batch_axes(layer: KnownLayer, rec, k: int) -> list[int]:
    """Axes of the layer's input that may index the k probe inputs: 0, and 1 for layers whose
    parameters act on the last axis only (sequence-first layouts)."""
    st = layer.structure
    if st.kind == "bare":
        return [ax for ax in (0, 1) if all(d.ndim > ax and d.shape[ax] == k for _, (d,) in rec)]
    axes = [0] if all(xs[0].shape[0] == k for xs, _ in rec) else []
    per_position = st.kind in ("linear", "embedding") or \
        (st.kind == "affine" and st.param_layout == "trailing")
    min_ndim = 2 if st.kind == "embedding" else 3
    if per_position and all(xs[0].ndim >= min_ndim and xs[0].shape[1] == k for xs, _ in rec):
        axes.append(1)
    return axes


def _call_factors(layer: KnownLayer, rec, grads, n: int) -> dict[str, Factor] | None:
    """Factors of all calls of a layer (calls are extra positions), or None if unusable.

    rec: the layer's recorded calls (inputs, deltas); grads: per call, the cotangents at its
    deltas, each (O, *delta.shape)."""
    st = layer.structure
    if st.kind == "bare":
        f = bare_factor(layer.ksize, [gs[0] for gs in grads], layer.batch_axis, n)
        return None if f is None else {layer.roles["value"]: f}
    per_role: dict[str, list[Factor]] = {r: [] for r in layer.roles}
    ax = layer.batch_axis
    for (xs, _), gs in zip(rec, grads, strict=True):
        if st.kind == "attention":
            if any(x.shape[0] != n for x in xs) or any(g.shape[1] != n for g in gs):
                return None
            fs = attention_factors(st, tuple(layer.roles), xs, gs)
        else:
            xin, g = xs[0], gs[0]
            if xin.ndim <= ax or xin.shape[ax] != n or g.shape[1 + ax] != n:
                return None
            if ax:
                xin, g = xin.movedim(ax, 0), g.movedim(1 + ax, 1)
            if st.kind == "conv" and xin.ndim != 2 + len(layer.ksize):
                return None
            fs = factors_for_call(st, tuple(layer.roles), xin, g, ksize=layer.ksize,
                                  vocab=layer.vocab)
        for role, f in fs.items():
            per_role[role].append(f)
    out = {}
    for role in layer.roles:
        fs = per_role[role]
        if fs[0].kind == "dense" and len({f.a.shape[-1] for f in fs}) > 1:
            return None
        if len({f.c.shape[-1] for f in fs}) > 1 or len({f.c.shape[2] for f in fs}) > 1:
            return None
        out[role] = concat_calls(fs)
    shared = SHARED_COTANGENTS if st.kind == "attention" else (("weight", "bias"),)
    for w, b in shared:
        if w in out and b in out and out[w].c.shape == out[b].c.shape:
            out[b].c = out[w].c         # linear, or conv with groups=1: share one cotangent
    return {layer.roles[role]: f for role, f in out.items()}


def _groups(factors: dict[str, Factor]) -> list[list[str]]:
    """Parameter names grouped by shared cotangent tensor (a layer's weight and bias)."""
    by_c: dict[int, list[str]] = {}
    for name, f in factors.items():
        by_c.setdefault(id(f.c), []).append(name)
    return list(by_c.values())


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-8, torch.float32: 1e-3}.get(dtype, 3e-2)


def _graph_size(fn) -> int:
    """Nodes of the autograd graph below `fn`: the differentiable operations of the forward."""
    seen, stack = set(), [fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(nxt for nxt, _ in node.next_functions)
    return len(seen)


def _forward_ops(target: Target, x_probe: torch.Tensor) -> int:
    """Tensor operations one plain forward pass of one input dispatches (torch functions and
    tensor methods that return a tensor, attribute reads excluded), for the cost model's
    per-op overhead. Counted by a `TorchFunctionMode`, not from the autograd graph: the graph
    of the same forward had 21 nodes for a 3-layer MLP under torch 2.13 and 5 under torch
    2.11, which made `auto` choose by multiply-adds alone and pick "jacobian" on a GPU where
    "structured" was 1.2-1.4x faster."""
    counter, x = _OpCounter(), x_probe[:1]
    with torch.no_grad(), counter:
        target(target.params, x)
    return counter.n


class _OpCounter(TorchFunctionMode):
    """Counts the torch calls that return a tensor (a kernel launch, or a view)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and getattr(func, "__name__", "") != "__get__":
            self.n += 1
        return out


def _forward_macs(verified: list[KnownLayer], records: list[list], layers: list[KnownLayer],
                  fallback: list[str], target: Target) -> float:
    """Forward multiply-adds per input: exact for the known layers (G T d_in d_out for a
    dense factor, T d for the others but biases), plus the attention products (2 L S E per
    call), plus one multiply-add per parameter of the autograd part (a parameter used once)."""
    macs = 0.0
    for layer in verified:
        for kind, d_in, (_, g, t, d) in layer.shapes.values():
            macs += {"dense": g * t * d_in * d, "ones": 0}.get(kind, t * d)
    for layer, rec in zip(layers, records, strict=True):
        if layer.structure.kind == "attention" and layer in verified:
            for (xq, xk, _, o), _ in rec:
                macs += 2.0 * xq.shape[1] * xk.shape[1] * o.shape[-1]
    return macs + sum(target.params[name].numel() for name in fallback)


def make_plan(target: Target, x_probe: torch.Tensor, *, count_flops: bool = False,
              seed: int = 0, x_shape=None, attention: bool = True) -> Plan:
    """Run the model on a small probe batch: output size, verified known layers, FLOPs.

    Args:
        target: the model.
        x_probe: (k, ...) a few inputs (2 are enough to detect batch-axis mix-ups).
        count_flops: also estimate forward multiply-adds per input and count the forward's
            operations (for implementation="auto").
        seed: seed of the random cotangent used to verify the layer descriptions.
        x_shape: shape of the user's x1, for error messages.
        attention: describe nn.MultiheadAttention modules (attention.py); False sends their
            parameters to the autograd path.
    """
    layers = _candidates(target, attention=attention)
    clock = itertools.count()
    records: list[list] = [_Calls(clock) for _ in layers]
    act = [0]

    def count_act(mod, args, out):
        if isinstance(out, torch.Tensor) and not list(mod.children()):
            act[0] += out.numel()

    p_req = {k: v.detach().requires_grad_() for k, v in target.params.items()}
    act_handle = nn.modules.module.register_module_forward_hook(count_act)
    try:
        with torch.enable_grad(), _capture(layers, records, p_req):
            probe = Target(p_req, target.module, target.fn, target.func)
            out = probe.call_checked(x_probe, "x1", x_shape)
    finally:
        act_handle.remove()
    k = x_probe.shape[0]
    ops = _forward_ops(target, x_probe) if count_flops else None
    o = out.shape[1]
    n_params = sum(v.numel() for v in target.params.values())

    if any(layer.structure.kind == "attention" for layer in layers):
        # The attention layers ran `attention.recording_forward`: it must be the same function
        # as the modules' own forward, else describe the model without it.
        with torch.no_grad():
            plain = target(target.params, x_probe)
        if not _close(out.detach(), plain, _tolerance(out.dtype)):
            return make_plan(target, x_probe, count_flops=count_flops, seed=seed,
                             x_shape=x_shape, attention=False)
    for layer, rec in zip(layers, records, strict=True):
        layer.order = rec.first
    # the check of the vmapped backward pass over the outputs rides on the verification: the
    # same operations run on every batch, so the batches skip it
    verified, batched = _verify(layers, records, out, p_req, k, seed, check_batched=o > 1)
    known_names = {p for layer in verified for p in layer.roles.values()}
    fallback = [name for name in target.params if name not in known_names]
    flops = _forward_macs(verified, records, layers, fallback, target) if count_flops else None
    return Plan(known=verified, fallback=fallback, out_dim=o, n_params=n_params,
                fallback_params=sum(target.params[n].numel() for n in fallback), flops=flops,
                act=act[0] / k, batched_backward=batched, batched_checked=True, ops=ops,
                n_tensors=len(target.params))


def _rows_match(j: torch.Tensor, ref: torch.Tensor, tol: float) -> bool:
    """Whether the (k, k, P) Jacobian rows j[i, r] equal ref[r] (k, P) for i = r and 0
    otherwise, to `tol` relative to the norm of ref: `_close(j, want)` with want that block
    diagonal, without forming want or j - want (k² P entries each)."""
    k = ref.shape[0]
    if j.shape != (k, k, ref.shape[1]):
        return False
    idx = torch.arange(k, device=j.device)
    sq = torch.linalg.vector_norm(j, dim=-1).square()              # (k, k)
    off = float(sq.masked_fill(torch.eye(k, dtype=torch.bool, device=j.device), 0).sum())
    err = float((j[idx, idx] - ref).square().sum()) + off
    return err ** 0.5 <= tol * float(ref.norm()) + 1e-30


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    return a.shape == b.shape and float((a - b).norm()) <= tol * float(b.norm()) + 1e-30


def _verify(layers: list[KnownLayer], records: list[list], out: torch.Tensor,
            p_req: dict[str, torch.Tensor], k: int, seed: int, *, check_batched: bool = False
            ) -> tuple[list[KnownLayer], bool]:
    """Keep the layer descriptions (and parameters) whose factors give autograd's per-input
    gradients on the probe.

    For a random cotangent v (k, O) and each probe input r, autograd gives g_r = ∂(v_r·f(x_r))/∂θ
    and the cotangents at the layers' δ for v restricted to row r. The factors built from those
    (the k rows playing the role of outputs) must give Jacobian rows J[i, r] = g_r if i = r and
    0 otherwise (eq. 1 of factors.py). A parameter also used outside its module gives a
    different g_r; an input axis that does not index the batch (sequence-first layouts: tried as
    axis 0 and 1) puts g_r on the wrong row i. Both fail, with probability 1 over v.

    check_batched: also run the k cotangents v_r through one backward pass vmapped over them
    (`output_basis_grads`' batched pass) and compare with the k plain passes at the recorded
    δ: a batching rule that attributes a row to the wrong input or cotangent fails it.

    Returns:
        (the verified layers, whether the vmapped pass ran and matched; False unless
        check_batched).
    """
    usable = [i for i, rec in enumerate(records) if rec and all(r is not None for r in rec)]
    if not usable:
        return [], False
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    recs = [records[i] for i in usable]
    deltas = _deltas(recs)
    names = list(p_req)
    leaves = [p_req[n] for n in names] + deltas
    rows = []
    vs = torch.zeros((k, *v.shape), dtype=v.dtype, device=v.device)
    for r in range(k):
        vs[r, r] = v[r]
        g = torch.autograd.grad(out, leaves, vs[r], allow_unused=True,
                                retain_graph=check_batched or r < k - 1)
        rows.append([torch.zeros_like(x) if gi is None else gi for gi, x in zip(g, leaves,
                                                                                 strict=True)])
    stacked = [torch.stack([row[j] for row in rows]) for j in range(len(leaves))]
    batched_ok = check_batched and _batched_matches(out, deltas, vs, stacked[len(names):])
    true = dict(zip(names, stacked[:len(names)], strict=True))
    calls = _split(recs, stacked[len(names):])
    tol = _tolerance(out.dtype)
    verified = []
    for i, gs in zip(usable, calls, strict=True):
        layer, rec = layers[i], records[i]
        axes = [0] if layer.structure.kind == "attention" else _batch_axes(layer, rec, k)
        best = None
        for ax in axes:
            layer.batch_axis = ax
            fs = _call_factors(layer, rec, gs, k)
            if fs is None:
                continue
            ok = {}
            for role, pname in layer.roles.items():
                f = fs[pname]
                if _rows_match(jacobian_form(f), true[pname].reshape(k, -1), tol):
                    ok[role] = (f.kind, f.d_in, (1, *f.shape[1:]))
            if best is None or len(ok) > len(best[1]):
                best = (ax, ok)
        if best is None or not best[1]:
            continue
        layer.batch_axis = best[0]
        layer.roles = {role: p for role, p in layer.roles.items() if role in best[1]}
        layer.shapes = {layer.roles[role]: shape for role, shape in best[1].items()}
        verified.append(layer)
    return verified, batched_ok


def _batched_matches(out: torch.Tensor, deltas: list[torch.Tensor], vs: torch.Tensor,
                     plain: list[torch.Tensor]) -> bool:
    """One backward pass vmapped over the cotangents vs (m, *out.shape) equals the m plain
    passes `plain` (each (m, *delta.shape)); False also when an op has no batching rule."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            got = torch.autograd.grad(out, deltas, vs, is_grads_batched=True, allow_unused=True)
    except RuntimeError:
        return False
    tol = _tolerance(out.dtype)
    return all(_close(torch.zeros_like(p) if g is None else g, p, tol)
               for g, p in zip(got, plain, strict=True))


# ------------------------------------------------------------------------------- engine
@dataclass
class StructuredState:
    """Factors of one block of inputs, and per-sample Jacobians (n, O, P) (trace mode:
    (n, 1, O P) rows) of the autograd part and of the parameters stored as Jacobians
    (`StructuredEngine.configure`), contracted pairwise in list order."""

    n: int
    factors: dict[str, Factor]
    fallback: list[torch.Tensor]


def _columns(f: Factor, d0: int, d1: int) -> Factor:
    """The factor of output features d0:d1 of a parameter (its Jacobian's columns for them)."""
    return Factor(f.kind, f.a, f.c[..., d0:d1], f.scale, f.d_in)


def _jacobian_pair(f1: Factor, f2: Factor, mode: str, same: bool, budget: int) -> torch.Tensor:
    """Eq. 1 contracted: the Jacobian forms of one parameter, built and contracted a slice of
    output features (columns of the weight) at a time, at most `budget` elements alive, and
    never kept: memory is bounded by the factors, not by n O P. Every mode is a sum over the
    parameter axis, so the slices' contributions add."""
    if f1.kind != "dense":
        if mode == "trace":
            j1 = trace_rows(f1)
            return row_products(j1, j1 if same else trace_rows(f2))
        j1 = jacobian_form(f1)
        return jacobian_contract(j1, j1 if same else jacobian_form(f2), mode)
    o, g, _, d = f1.shape
    per_column = (f1.n + (0 if same else f2.n)) * o * g * f1.d_in
    step = max(1, min(d, budget // max(1, per_column)))
    out = None
    for d0 in range(0, d, step):
        s1 = _columns(f1, d0, min(d, d0 + step))
        s2 = s1 if same else _columns(f2, d0, min(d, d0 + step))
        if mode == "trace":
            j1 = trace_rows(s1)
            part = row_products(j1, j1 if same else trace_rows(s2))
        else:
            j1 = jacobian_form(s1)
            part = jacobian_contract(j1, j1 if same else jacobian_form(s2), mode)
        del j1
        out = part if out is None else out.add_(part)
    return out


@dataclass(frozen=True)
class Part:
    """A subset of the state: the known layers `layers` (indices into `Plan.known`) and, if
    `fallback`, the autograd Jacobians. `fits`: its state for all inputs fits the budget."""

    layers: tuple[int, ...]
    fallback: bool
    fits: bool = True


def state_elements(plan: Plan, n1: int, n2: int, mode: str, symmetric: bool
                   ) -> tuple[set[str], list[float]]:
    """How the structured engine stores each known parameter for a kernel over n1 x n2
    inputs in `mode`, and the state elements per input of each known layer.

    A parameter is stored as its per-input Jacobian rows (eq. 1 of factors.py) rather than
    its factors when its Jacobian form is the cheaper contraction (`factors.form_costs`) and
    its O P entries per input are no more than its factors' (normalization scales and biases,
    convolutions with many positions and few channels): the Jacobian is then formed once per
    input instead of once per pair of blocks, and the state only shrinks.

    Returns:
        (names stored as Jacobians, elements per input of each layer of `plan.known`).
    """
    o = plan.out_dim
    as_jacobian: set[str] = set()
    per_layer = []
    for layer in plan.known:
        elements = 0.0
        shared_c = any(kind != "ones" for kind, _, _ in layer.shapes.values())
        for pname, (kind, d_in, (_, g, t, d)) in layer.shapes.items():
            shape = (o, g, t, d)
            kx, kc, jac, _ = form_costs(shape, shape, kind, d_in, n1, n2, mode, symmetric)
            a = {"dense": g * t * d_in, "index": t, "diag": t * d}.get(kind, 0)
            c = o * g * t * d
            rows = o * g * d_in * d
            if kind != "index" and jac < kx + kc and rows <= a + c:
                as_jacobian.add(pname)
                elements += rows
            else:           # a bias shares its weight's cotangent
                elements += a + (0 if (kind == "ones" and shared_c) else c)
        per_layer.append(elements)
    return as_jacobian, per_layer


class StructuredEngine:
    """prepare(x) -> StructuredState; contract(s1, s2, mode) -> Θ block (trace: sum)."""

    def __init__(self, target: Target, plan: Plan, *, budget: int):
        self.target = target
        self.plan = plan
        self.budget = budget        # elements per intermediate
        self.params = target.params
        self.mode = "full"
        self.as_jacobian: set[str] = set()
        self.layer_elements = [0.0] * len(plan.known)

    def configure(self, n1: int, n2: int, mode: str, symmetric: bool) -> None:
        """Decide, for a kernel over n1 x n2 inputs in `mode`, which parameters are stored as
        per-input Jacobian rows instead of factors (`state_elements`)."""
        self.mode = mode
        self.as_jacobian, self.layer_elements = state_elements(self.plan, n1, n2, mode,
                                                               symmetric)

    def parts(self, n: int, budget_bytes: int) -> list[Part]:
        """Known layers (in forward order) and the autograd part grouped so that each group's
        state for n inputs stays within budget_bytes: one forward pass and one backward pass
        (down to the group's first layer) per group, instead of recomputing the states of
        column blocks for every row block. A layer whose state alone is larger makes a part
        with fits=False (computed in blocks by the caller)."""
        itemsize = torch.empty((), dtype=self.target.dtype).element_size()
        cap = budget_bytes / (itemsize * max(1, n))     # elements per input
        # in the order of the forward pass: a part's backward passes stop at its first layer
        order = sorted(range(len(self.layer_elements)), key=lambda i: self.plan.known[i].order)
        items = [((i,), False, self.layer_elements[i]) for i in order]
        if self.plan.fallback:
            items.append(((), True, float(self.plan.out_dim * self.plan.fallback_params)))
        out: list[Part] = []
        layers: list[int] = []
        fallback, total = False, 0.0
        for idx, fb, e in items:
            if (layers or fallback) and total + e > cap:
                out.append(Part(tuple(layers), fallback, total <= cap))
                layers, fallback, total = [], False, 0.0
            layers += idx
            fallback = fallback or fb
            total += e
        if layers or fallback or not out:
            out.append(Part(tuple(layers), fallback, total <= cap))
        return out

    def merge(self, states: list[StructuredState]) -> StructuredState:
        """One state from the states of consecutive blocks of inputs (concatenated along the
        inputs; the blocks' tensors are released one parameter at a time)."""
        if len(states) == 1:
            return states[0]
        factors: dict[str, Factor] = {}
        merged_c: dict[int, torch.Tensor] = {}
        for name in list(states[0].factors):
            fs = [s.factors.pop(name) for s in states]
            f0 = fs[0]
            key = id(f0.c)          # a layer's weight and bias share one cotangent tensor
            if key not in merged_c:
                merged_c[key] = torch.cat([f.c for f in fs], dim=1)
            a = None if f0.a is None else torch.cat([f.a for f in fs], dim=0)
            factors[name] = Factor(f0.kind, a, merged_c[key], f0.scale, f0.d_in)
            del fs, f0
        jacobians = []
        for k in range(len(states[0].fallback)):
            jacobians.append(torch.cat([s.fallback[k] for s in states]))
            for s in states:
                s.fallback[k] = None
        return StructuredState(sum(s.n for s in states), factors, jacobians)

    def prepare(self, x: torch.Tensor, part: Part | None = None) -> StructuredState:
        n = x.shape[0]
        if part is None:
            layers = self.plan.known
        else:
            layers = [self.plan.known[i] for i in part.layers]
        factors: dict[str, Factor] = {}
        if layers:
            records: list[list] = [[] for _ in layers]
            with torch.enable_grad(), _capture(layers, records, self.params):
                out = self.target(self.params, x)
            if any(r is None for rec in records for r in rec):
                raise RuntimeError(
                    f"{self.target.func}: a layer changed how it is called between the probe "
                    f"and the batch of {n}; use implementation='jacobian'")
            plan = self.plan
            axes = [0 if layer.structure.kind == "attention" else layer.batch_axis
                    for layer, rec in zip(layers, records, strict=True)
                    for _, ds in rec for _ in ds]
            status: dict = {}
            grads = output_basis_grads(out, _deltas(records), batched=plan.batched_backward,
                                       check=not plan.batched_checked, axes=axes,
                                       status=status)
            if plan.batched_backward:
                plan.batched_checked = True
                plan.batched_backward = status["batched"]
            del out
            for layer, rec, gs in zip(layers, records, _split(records, grads), strict=True):
                fs = _call_factors(layer, rec, gs, n)
                if fs is None:
                    raise RuntimeError(
                        f"{self.target.func}: layer '{layer.name}' changed how it is called "
                        f"between the probe and the batch of {n}; use implementation="
                        f"'jacobian'")
                factors.update(fs)
        fallback = []
        if self.plan.fallback and (part is None or part.fallback):
            fallback = per_sample_jacobians(self.target, self.plan.fallback, x)
        for name in [k for k in factors if k in self.as_jacobian]:
            f = factors.pop(name)
            # trace: Σ_a J_a J'_aᵀ needs one fixed order of the O P entries (trace_rows)
            fallback.append(trace_rows(f)[:, None] if self.mode == "trace"
                            else jacobian_form(f))
        return StructuredState(n, factors, fallback)

    def contract(self, s1: StructuredState, s2: StructuredState, mode: str) -> torch.Tensor:
        symmetric = s1 is s2
        out = None
        for names in _groups(s1.factors):
            f1s = [s1.factors[k] for k in names]
            f2s = [s2.factors[k] for k in names]
            form = choose_form(f1s, f2s, mode, symmetric, self.budget)
            if form == "sparse" and all(f.kind == "index" for f in f1s):
                parts = [index_contract(f1, f2, mode, self.budget // 4)
                         for f1, f2 in zip(f1s, f2s, strict=True)]
            elif form in ("gram", "sparse"):
                # intermediates get a quarter of the budget: two blocks' states may hold the
                # rest (ntk._auto_block), so the peak stays under about 1.5 budgets
                parts = [gram_contract(f1s, f2s, mode, self.budget // 4)]
            else:
                parts = [_jacobian_pair(s1.factors[k], s2.factors[k], mode, symmetric,
                                        self.budget // 4) for k in names]
            for part in parts:
                out = part if out is None else out.add_(part)
        for j1, j2 in zip(s1.fallback, s2.fallback, strict=True):
            part = jacobian_contract(j1, j2, mode)
            out = part if out is None else out.add_(part)
        return out

    @staticmethod
    def state_bytes(state: StructuredState) -> int:
        seen: set[int] = set()
        total = 0
        for f in state.factors.values():
            if f.a is not None:
                total += f.a.numel() * f.a.element_size()
            if id(f.c) not in seen:         # shared by a layer's weight and bias
                seen.add(id(f.c))
                total += f.c.numel() * f.c.element_size()
        return total + sum(j.numel() * j.element_size() for j in state.fallback)
