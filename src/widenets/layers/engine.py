"""The kernel engine: each layer's per-pair arithmetic in one pass, or eager torch ops.

A layer map acts entry by entry on the (block of the) kernel: the eager code runs each
elementwise operation as its own pass over memory (about 13 for a Dense + ReLU pair), each a
parallel region ending in a barrier. Two engines fuse them:

* `"native"` (the default): a whole flat network that is a serial chain of Dense and ABRelu
  layers (Relu, LeakyRelu, Abs; the MLPs of Lee et al. 2019) runs as ONE compiled C++ pass
  per row strip (`widenets.layers._native`): read the input kernel once, carry each entry
  through every layer in cache, write the NNGP and NTK once; symmetric kernels compute only
  j >= i and mirror. The strips are tasks of the block scheduler (`widenets._parallel`), no
  barrier inside. The library (plain C++, no torch headers) builds in about a second with the
  system's compiler, once per machine (cached on disk); a kernel below `NATIVE_MIN_ENTRIES`
  entries never uses it (not even when cached: the engine depends on the size only).
  Networks on images of Conv, ABRelu, pooling, Flatten and Dense layers with a flat output run
  natively too, one input pair at a time in cache (`spatial_network_kernel`,
  `widenets.layers._native_spatial`, a second library; kernels of at least
  `NATIVE_MIN_SPATIAL_WORK` input pairs x position pairs). Other networks, and kernels under
  autograd, run eagerly.
  Chosen by measurement (benchmarks/analytic_fc.py, docs/guide/kernels.md §engine): on the
  2-core machine the native pass made the N = 4000 depth-3 ReLU kernel several times faster
  than eager, with no first-call penalty beyond the one-time build, where torch.compile's
  fused units saved ~10% after a compile of 15-60 s.
* `"fused"`: `torch.compile` (Inductor: C++ on CPU, Triton on CUDA) of *units* — an optional
  weight layer's affine map (Dense, docs/math.md §dense) followed by an activation's closed form
  (`Activation.fused_formula`) — for any activation with a fused form, in any layout:
  - one compiled graph per (activation kind, NTK or not, dtype, device, flat or spatial
    layout, thread count): hyperparameters travel in a tensor and the sizes are dynamic;
  - Inductor caches the generated code on disk (warm starts took 2-4 s per graph, cold ones
    15-60 s on the busy 2-core development machine).
* `"auto"`: the native chains, and the fused units elsewhere for kernels of at least
  `AUTO_MIN_ENTRIES` entries, compiled in a background thread (eager until they are ready).
* `"eager"`: plain torch operations.

Everything that is not per-pair arithmetic is identical to the eager engine: the variances
(`Kernel.map_variances`), the exact diagonal of x1 = x2 kernels and the exact values on pairs
of identical inputs (written from the same eager formulas on the per-input values), the
non-finite and underflow errors, bookkeeping fields. Kernels with LayerNorm γ records, tensor
hyperparameters or anything under autograd take the eager path. When the compiler is missing
or fails the eager path is taken, announced once by an `EngineWarning`.
"""

from __future__ import annotations

import math
import os
import threading
import types
import warnings
import weakref

import torch

from .._parallel import run_in_order, spans
from ..kernel import Kernel
from . import _native, _native_spatial
from ._inputs import _mark_same_inputs
from ._kernel_checks import check_finite
from ._native_spatial import flat_layers, native_abrelu, native_dense
from ._schedule import use_block_engine, use_network_engine, use_spatial_engine
from .activations import ABRelu, Activation, _is_gamma_token
from .base import new_source
from .combinators import Parallel, Repeat, Serial
from .dense import Dense

__all__ = ["ENGINES", "AUTO_MIN_ENTRIES", "NATIVE_MIN_ENTRIES", "NATIVE_MIN_SPATIAL_WORK",
           "EngineWarning", "set_engine",
           "get_engine", "apply", "fused_available", "native_available", "network_kernel",
           "spatial_network_kernel"]

#: the engine names (`set_engine`, the WIDENETS_ENGINE environment variable)
ENGINES = ("auto", "native", "fused", "eager")
#: the engine when neither `set_engine` nor WIDENETS_ENGINE chose one
DEFAULT_ENGINE = "native"
#: "auto" uses the fused engine for kernels of at least this many entries (input pairs x
#: position pairs); below, eager (a 100-input kernel never compiles anything)
AUTO_MIN_ENTRIES = 1 << 20
#: kernels with fewer entries never use the native library (neither build nor load it)
NATIVE_MIN_ENTRIES = 1 << 20
#: kernels of images with less work (input pairs n1 n2 times position pairs P² in the full
#: layout, times positions P in the diagonal one) never use the native spatial library. Its
#: one-time build took 4-7 s on the busy 2-core machine, about the eager time at this size (the
#: CNN-GAP of benchmarks/analytic_conv.py at N = 128 on 8 x 8 images is exactly 2^26), so a
#: smaller kernel (N = 100: 0.6 x 2^26) never waits for a build
NATIVE_MIN_SPATIAL_WORK = 1 << 26
_ENV = "WIDENETS_ENGINE"


class EngineWarning(RuntimeWarning):
    """The fused engine is unavailable (no compiler, compile failure): widenets computes its
    kernels with the eager engine instead (same results, slower). Emitted once per process."""


_engine: str | None = None


def _check_engine(engine, func: str, arg: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"{func}: {arg} must be one of {ENGINES}, got {engine!r}")
    return engine


def set_engine(engine: str = DEFAULT_ENGINE) -> str:
    """Choose how analytic kernels evaluate each layer's per-pair arithmetic.

    Args:
        engine: "native" (default): flat networks that are chains of Dense and ABRelu
            layers (Relu, LeakyRelu, Abs) in one compiled C++ pass (built once per machine
            with the system's compiler; only kernels of at least `NATIVE_MIN_ENTRIES`
            entries use it), and image networks of Conv, ABRelu, pooling, Flatten and Dense
            layers one input pair at a time (kernels of at least `NATIVE_MIN_SPATIAL_WORK`
            input pairs x position pairs), everything else eager; "auto": native chains, and the
            torch.compile units for other activations once compiled in the background;
            "fused": always the torch.compile units (compiles on first use, waits for it);
            "eager": plain torch operations, one pass per operation. The environment
            variable WIDENETS_ENGINE sets the initial value. Results agree to rounding;
            the exact diagonal, symmetry and errors are the same.

    Returns:
        The previous engine name (to restore it).

    Example:
        >>> import torch, widenets as wn
        >>> previous = wn.set_engine("eager")
        >>> net = wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1))
        >>> net.kernel(torch.randn(3, 4), get="nngp").shape
        torch.Size([3, 3])
        >>> wn.set_engine(previous)
        'eager'
    """
    global _engine
    previous = get_engine()
    _engine = _check_engine(engine, "set_engine", "engine")
    return previous


def get_engine() -> str:
    """The engine analytic kernels use now (see `set_engine`).

    Returns:
        "auto", "native", "fused" or "eager".

    Example:
        >>> import widenets as wn
        >>> wn.get_engine() in ("auto", "native", "fused", "eager")
        True
    """
    if _engine is None:
        value = os.environ.get(_ENV, DEFAULT_ENGINE).strip().lower() or DEFAULT_ENGINE
        return _check_engine(value, "widenets", f"the environment variable {_ENV}")
    return _engine


# ----------------------------------------------------------------------------- compiled units
_lock = threading.RLock()          # the tables below (held briefly)
_compile_lock = threading.Lock()   # one compile at a time (held for seconds)
_compiled: dict = {}               # key -> compiled unit (ready)
_failed: dict = {}                 # key -> reason
_pending: set = set()              # keys compiling in the background
_announce: list = []               # reasons not yet announced (background failures)
_announced = False
_native_announced = False
#: per kernel call (id of its shared variance tensor -> (weak reference, {key: unit})), the
#: decision taken per key: every block of a call takes the same engine (exact symmetry needs
#: the same rounding on (i, j) and (j, i))
_sticky: dict = {}


def _unit_source(formula, want_ntk: bool, name: str):
    """The function compiled for one key: the affine map of the Dense before the activation
    (coefficients c = (w, b, α, β, γ): K' = w K + b, Θ' = α K + β + γ Θ, docs/math.md §dense),
    then the activation. A fresh code object per key keeps each key's compiled code apart."""
    if want_ntk:
        def unit(x, y, u1, u2, c, p):
            k12 = c[0] * x + c[1]
            theta = c[2] * x + c[3] + c[4] * y
            t, tdot = formula(u1, u2, k12, p, True)
            return t, tdot * theta               # Θ' = Tdot(K) Θ  (docs/math.md §activations)
    else:
        def unit(x, u1, u2, c, p):
            return formula(u1, u2, c[0] * x + c[1], p, False)[0]
    code = unit.__code__.replace(co_name=name)
    return types.FunctionType(code, unit.__globals__, name, unit.__defaults__, unit.__closure__)


def _dummy_inputs(key, prep):
    """Small inputs of the key's class: sizes >= 2, distinct from each other and from the
    lengths of the coefficient tensors (5 and < 5), so that no size is specialized."""
    _, want_ntk, dtype, device, flat, _ = key
    m, n, r = 7, 9, (1 if flat else 11)
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    v1, v2 = 1 + rand(m, 1, r), 1 + rand(1, n, r)
    x, y = (rand(m, n, r) - 0.5) * torch.sqrt(v1 * v2), rand(m, n, r)
    c = torch.tensor([1.5, 0.1, 1.5, 0.1, 1.5], dtype=dtype)
    args = [x, y] if want_ntk else [x]
    dev = lambda ts: tuple(t.to(device) for t in ts)  # noqa: E731
    return [*dev(args), dev(prep(v1)), dev(prep(v2)), c.to(device)]


def _compile(key, prep, formula, consts):
    """Compile and check the unit of `key` (the caller holds `_compile_lock`)."""
    import torch._dynamo  # noqa: F401  (fails where torch.compile is unsupported)

    kind, want_ntk, dtype, device, flat, _ = key
    if not torch._dynamo.is_dynamo_supported():
        raise RuntimeError("torch.compile is not supported on this Python/platform")
    name = f"widenets_{kind}_{'ntk' if want_ntk else 'nngp'}_{str(dtype)[6:]}_" \
           f"{'flat' if flat else 'spatial'}"
    src = _unit_source(formula, want_ntk, name)
    fn = torch.compile(src, dynamic=True, fullgraph=True)
    args = _dummy_inputs(key, prep)
    p = torch.tensor(consts, dtype=dtype, device=device).reshape(-1)
    with torch.no_grad():
        got = fn(*args, p)
        want = src(*args, p)
    for g, w in zip(got if want_ntk else (got,), want if want_ntk else (want,)):
        if not torch.allclose(g, w, rtol=1e-5, atol=1e-6):
            raise RuntimeError(f"the compiled {name} differs from its eager form on a test input")
    return fn


def _reason(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}"


def _warn_once(reason: str, stacklevel: int = 4, what: str = "fused") -> None:
    """The one EngineWarning per process and engine ("fused" or "native")."""
    global _announced, _native_announced
    with _lock:
        if (_announced if what == "fused" else _native_announced):
            return
        if what == "fused":
            _announced = True
        else:
            _native_announced = True
    how = "for torch.compile on CPU" if what == "fused" else "for the native engine"
    warnings.warn(f"widenets: the {what} kernel engine is unavailable ({reason}); kernels are "
                  f"computed by the eager engine (same results, slower). Install a C++ "
                  f"compiler (g++ or clang++) {how}, or silence this with "
                  f"wn.set_engine('eager') / {_ENV}=eager", EngineWarning,
                  stacklevel=stacklevel)


def _compiled_now(key, prep, formula, consts):
    """The compiled unit of `key`, compiling it here if needed; None if that failed."""
    with _compile_lock:
        with _lock:
            if key in _compiled:
                return _compiled[key]
            if key in _failed:
                return None
        try:
            fn = _compile(key, prep, formula, consts)
        except Exception as err:  # noqa: BLE001 - any failure means: stay eager
            with _lock:
                _failed[key] = reason = _reason(err)
        else:
            with _lock:
                _compiled[key] = fn
            return fn
    _warn_once(reason)
    return None


def _compile_in_background(key, prep, formula, consts) -> None:
    with _lock:
        if key in _compiled or key in _failed or key in _pending:
            return
        _pending.add(key)

    def work():
        torch.set_num_threads(key[-1])     # this thread's own setting (compiled into the code)
        try:
            with _compile_lock:
                fn = _compile(key, prep, formula, consts)
            with _lock:
                _compiled[key] = fn
        except Exception as err:  # noqa: BLE001 - announced by the next kernel call
            with _lock:
                _failed[key] = _reason(err)
                _announce.append(_failed[key])
        finally:
            with _lock:
                _pending.discard(key)

    threading.Thread(target=work, name="widenets-compile", daemon=True).start()


def wait_for_compiles(timeout: float | None = None) -> bool:
    """Wait until the background compiles of the "auto" engine are done (benchmarks, tests);
    returns True when none is pending."""
    import time

    end = None if timeout is None else time.monotonic() + timeout
    while True:
        with _lock:
            if not _pending:
                return True
        if end is not None and time.monotonic() > end:
            return False
        time.sleep(0.05)


def fused_available(dtype: torch.dtype = torch.float64, device="cpu") -> bool:
    """Whether the fused engine works here: compiles (or finds) the ABRelu unit of `dtype` on
    `device` now. False (and the one `EngineWarning`) when the compiler is missing or fails.

    Args:
        dtype: torch.float32 or torch.float64.
        device: a torch device ("cpu", "cuda").

    Returns:
        True when fused kernels are computed, False when the eager engine stands in.

    Example:
        >>> import torch
        >>> from widenets.layers.engine import fused_available
        >>> isinstance(fused_available(torch.float64), bool)
        True
    """
    from .activations import Relu

    kind, prep, formula, consts = Relu().fused_formula()
    key = (kind, True, dtype, torch.device(device), True, torch.get_num_threads())
    return _compiled_now(key, prep, formula, consts) is not None


# ----------------------------------------------------------------------------- the walk
class _Call:
    """One engine entry: the mode, the kernel's size and the anchor of sticky decisions."""

    def __init__(self, mode: str, k: Kernel):
        self.mode = mode
        self.anchor = k.cov1 if k.cov2 is None else k.cov2
        per_row = k.nngp[0].numel()
        rows = k.n2 if k.x1_is_x2 else max(k.n1, k.n2)
        self.work = rows * per_row

    def unit(self, key, prep, formula, consts):
        """The compiled unit to use for `key` in this call, or None (eager)."""
        if self.mode == "fused":
            return _compiled_now(key, prep, formula, consts)
        if self.work < AUTO_MIN_ENTRIES:
            return None
        with _lock:
            if _announce:
                reason = _announce.pop()
                _announce.clear()
            else:
                reason = None
            entry = _sticky.get(id(self.anchor))
            if entry is None or entry[0]() is not self.anchor:
                entry = (weakref.ref(self.anchor), {})
                _sticky[id(self.anchor)] = entry
                weakref.finalize(self.anchor, _sticky.pop, id(self.anchor), None)
            decided = entry[1]
            if key not in decided:
                decided[key] = _compiled.get(key)
                if decided[key] is None and key not in _failed:
                    _compile_in_background(key, prep, formula, consts)
            fn = decided[key]
        if reason is not None:
            _warn_once(reason, stacklevel=5)
        return fn


def apply(layer, k):
    """`layer.apply_kernel(k)`, with the runs of per-pair arithmetic in the fused engine.

    The result is what `apply_kernel` returns (a Kernel or a list of them) to rounding; the
    exact diagonal, symmetry, `row_offset`, variances and bookkeeping fields are the eager
    engine's. Thread-safe: blocks of one kernel may be computed by several threads.

    Args:
        layer: a widenets layer (a network).
        k: its input Kernel (or list of Kernels), e.g. a row block.

    Returns:
        The output Kernel (or list), as `layer.apply_kernel(k)`.

    Example:
        >>> import torch, widenets as wn
        >>> from widenets.layers.base import input_kernel
        >>> from widenets.layers.engine import apply
        >>> net = wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1))
        >>> k0 = input_kernel(torch.randn(3, 4, dtype=torch.float64), None, want_ntk=True)
        >>> bool(torch.allclose(apply(net, k0).ntk, net.apply_kernel(k0).ntk))
        True
    """
    mode = get_engine()
    if mode in ("eager", "native") or not isinstance(k, Kernel) or k.dtype not in (torch.float32,
                                                                          torch.float64):
        return layer.apply_kernel(k)
    return _walk(layer, k, _Call(mode, k))


def _walk(layer, k, call: _Call):
    if isinstance(layer, Serial):
        layers = layer.layers
        i = 0
        while i < len(layers):
            lay = layers[i]
            if isinstance(lay, Dense) and i + 1 < len(layers) \
                    and isinstance(layers[i + 1], Activation):
                out = _unit(lay, layers[i + 1], k, call)
                if out is not None:
                    k, i = out, i + 2
                    continue
            if isinstance(lay, Activation):
                out = _unit(None, lay, k, call)
                if out is not None:
                    k, i = out, i + 1
                    continue
            k, i = _walk(lay, k, call), i + 1
        return k
    if isinstance(layer, Parallel) and isinstance(k, list) and len(k) == len(layer.layers):
        return [_walk(lay, kk, call) for lay, kk in zip(layer.layers, k)]
    if isinstance(layer, Repeat):
        for _ in range(layer.n):
            k = _walk(layer.layer, k, call)
        return k
    if isinstance(layer, Activation):
        out = _unit(None, layer, k, call)
        if out is not None:
            return out
    return layer.apply_kernel(k)


def _needs_grad(k: Kernel) -> bool:
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (k.nngp, k.ntk, k.cov1, k.cov2))


def _affine(dense: Dense | None, k: Kernel):
    """(w, b, α, β, γ) of the weight layer's map (docs/math.md §dense), or None when a
    hyperparameter is a tensor (it may require grad: eager)."""
    if dense is None:
        return (1.0, 0.0, 0.0, 0.0, 1.0)        # K' = K, Θ' = Θ
    if isinstance(dense.w_std, torch.Tensor) or isinstance(dense.b_std, torch.Tensor):
        return None
    w2, b2 = dense.w_std ** 2, (dense.b_std or 0.0) ** 2
    if dense.parameterization == "ntk":
        return (w2, b2, w2, b2, w2)             # Θ' = K' + σw² Θ
    return (w2, b2, float(k.channels), 0.0 if dense.b_std is None else 1.0, w2)  # n K + 1 + σw²Θ


def _unit(weight: Dense | None, act: Activation, k, call: _Call):
    """weight (or nothing) then act on k in one compiled pass; None when it does not apply
    (the caller runs the layers eagerly, which also raises their errors)."""
    if not isinstance(k, Kernel) or k.same_input is not None or k.gamma_term is not None \
            or any(_is_gamma_token(s) for s in k.sources) or _needs_grad(k):
        return None
    if weight is None and not k.is_gaussian:
        return None
    spec = act.fused_formula()
    coef = _affine(weight, k)
    if spec is None or coef is None:
        return None
    kind, prep, formula, consts = spec
    want_ntk = k.ntk is not None
    m, n = k.n1, k.n2
    tail = tuple(k.nngp.shape[2:])           # positions or position pairs
    r = 1
    for s in tail:
        r *= s
    key = (kind, want_ntk, k.dtype, k.nngp.device, r == 1, torch.get_num_threads())
    fn = call.unit(key, prep, formula, consts)
    if fn is None:
        return None
    # the weight layer's variances and fields, as Dense.apply_kernel computes them
    if weight is not None:
        w2, b2 = coef[0], coef[1]
        pre = k.replace(cov1=w2 * k.cov1 + b2, cov2=None if k.cov2 is None else w2 * k.cov2 + b2,
                        is_gaussian=True, is_input=False, channels=weight.out,
                        sources=new_source())
    else:
        pre = k
    b1, b2_ = pre.broadcast_variances()
    u1 = [t.expand(m, 1, *tail).reshape(m, 1, r).contiguous() for t in prep(b1)]
    u2 = [t.expand(1, n, *tail).reshape(1, n, r).contiguous() for t in prep(b2_)]
    x = k.nngp.reshape(m, n, r).contiguous()
    args = [x, k.ntk.reshape(m, n, r).contiguous()] if want_ntk else [x]
    # sizes of 1 would compile a specialized graph: duplicate that row/column, drop it after
    if m == 1:
        args = [torch.cat([a, a], 0) for a in args]
        u1 = [torch.cat([t, t], 0) for t in u1]
    if n == 1:
        args = [torch.cat([a, a], 1) for a in args]
        u2 = [torch.cat([t, t], 1) for t in u2]
    dtype, device = k.dtype, k.nngp.device
    c = torch.tensor(coef, dtype=dtype, device=device)
    p = torch.tensor(consts, dtype=dtype, device=device).reshape(-1)
    with torch.no_grad():
        out = fn(*args, tuple(u1), tuple(u2), c, p)
    nngp, ntk = out if want_ntk else (out, None)
    nngp = nngp[:m, :n].reshape(m, n, *tail)
    ntk = None if ntk is None else ntk[:m, :n].reshape(m, n, *tail)

    # variances and the exact self pairs: the eager engine's code (Activation.apply_kernel)
    cov1, cov2 = pre.map_variances(act.t_diag, act.t)
    if k.x1_is_x2:
        nngp, ntk = nngp.contiguous(), None if ntk is None else ntk.contiguous()
        pre.set_batch_diagonal(nngp, cov1)
        if ntk is not None:
            tdot_self = pre.map_variances(act.tdot_diag, act.tdot)[0]
            a, b, g = coef[2], coef[3], coef[4]
            xd, yd = _self_pairs(k, k.nngp), _self_pairs(k, k.ntk)
            theta_d = a * xd + b + g * yd          # the weight layer's Θ on the self pairs
            pre.set_batch_diagonal(ntk, tdot_self * theta_d)
    return pre.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=False,
                       is_input=False, gamma_term=None)


def _self_pairs(k: Kernel, t: torch.Tensor) -> torch.Tensor:
    """The entries of t on the self pairs x1_i = x2_i (shaped like cov1; see
    Kernel.set_batch_diagonal)."""
    return t.narrow(1, k.row_offset, t.shape[0]).diagonal(dim1=0, dim2=1).movedim(-1, 0)


# ----------------------------------------------------------------------------- native chains
#: rows per task of the native pass (a strip of rows x all later columns)
NATIVE_STRIP_ROWS = 32


def native_available() -> bool:
    """Whether the native engine works here: builds (or finds in the cache) its library now.
    False (and the one `EngineWarning`) when the compiler is missing or the build fails.

    Returns:
        True when chains of Dense and ABRelu layers run natively, False when the eager engine
        stands in.

    Example:
        >>> from widenets.layers.engine import native_available
        >>> isinstance(native_available(), bool)
        True
    """
    try:
        _native.load()
    except _native.BuildError as err:
        _warn_once(str(err), stacklevel=3, what="native")
        return False
    return True


def _chain_stages(layer) -> list | None:
    """The network as a flat list of Dense and ABRelu layers with number hyperparameters, or
    None when it is anything else (nested Serial and Repeat are flattened)."""
    layers = flat_layers(layer)
    if layers is None or not all(native_dense(lay) or native_abrelu(lay) for lay in layers):
        return None
    return layers


def _native_lib(k0: Kernel):
    """The native library if this call may use it (engine, size), else None."""
    if get_engine() not in ("native", "auto"):
        return None
    if k0.n1 * k0.n2 < NATIVE_MIN_ENTRIES:
        # a small kernel never pays the build, and never uses a library built earlier: which
        # engine computes a kernel (they agree to rounding, not bitwise) depends only on its
        # size and on whether a compiler exists, not on what an earlier process left in the
        # cache
        return None
    try:
        return _native.load()
    except _native.BuildError as err:
        _warn_once(str(err), stacklevel=6, what="native")
        return None


def network_kernel(layer, k0: Kernel, fname: str, *, threads: int):
    """The kernel of a flat network that is a chain of Dense and ABRelu layers, computed by
    the native engine; None when the network, the input Kernel or the engine setting does
    not allow it (the caller computes it eagerly).

    The per-input values (variances, the exact self-pair NNGP and NTK) come from the eager
    formulas on n numbers; the pairs from one native pass per strip of rows. The result
    equals the eager engine's to rounding, with the same exact diagonal (x1 = x2), exact
    values on identical inputs and exact symmetry, and the same errors.

    Args:
        layer: the network.
        k0: its input Kernel (`input_kernel` of flat inputs).
        fname: the public function's name, for error messages.
        threads: how many threads compute the strips.

    Returns:
        The output Kernel, or None.

    Example:
        >>> import torch, widenets as wn
        >>> from widenets.layers.base import input_kernel
        >>> from widenets.layers.engine import network_kernel
        >>> net = wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1))
        >>> k0 = input_kernel(torch.randn(3, 4, dtype=torch.float64), None, want_ntk=True)
        >>> k = network_kernel(net, k0, "kernel", threads=1)   # None: too small to build
        >>> k is None or bool(torch.allclose(k.ntk, net.apply_kernel(k0).ntk))
        True
    """
    if not isinstance(k0, Kernel) or k0.nngp.ndim != 2 or k0.nngp.device.type != "cpu" \
            or k0.dtype not in (torch.float32, torch.float64) or k0.gamma_term is not None \
            or _needs_grad(k0) or any(_is_gamma_token(s) for s in k0.sources):
        return None
    stages = _chain_stages(layer)
    if not stages or any(isinstance(lay, ABRelu) and not isinstance(prev, Dense)
                         for prev, lay in zip([None, *stages], stages)):
        return None     # an activation on a non-Gaussian input: the eager engine raises
    lib = _native_lib(k0)
    if lib is None:
        return None
    return _run_chain(lib, stages, k0, fname, layer, threads)


def _run_chain(lib, stages, k0: Kernel, fname: str, layer, threads: int) -> Kernel:
    dtype = k0.dtype
    want_ntk = k0.ntk is not None
    symmetric = k0.x1_is_x2
    # per-input values along the chain, as the eager layers compute them: the variances
    # (Dense.apply_kernel, Activation.map_variances) and the self-pair NTK (the diagonal the
    # eager engine writes with set_batch_diagonal), for x1 and (if given) x2
    covs = [k0.cov1] if symmetric else [k0.cov1, k0.cov2]
    ntk_self = [torch.zeros_like(c) for c in covs] if want_ntk else None
    kinds, prm, factors = [], [], [[] for _ in covs]
    channels, sources, gaussian = k0.channels, k0.sources, k0.is_gaussian
    for lay in stages:
        if isinstance(lay, Dense):
            w2, b2 = lay.w_std ** 2, (lay.b_std or 0.0) ** 2
            if lay.parameterization == "ntk":
                coef = (w2, b2, w2, b2, w2)                 # Θ' = (σw² K + σb²) + σw² Θ
            else:
                coef = (w2, b2, float(channels), 0.0 if lay.b_std is None else 1.0, w2)
            if want_ntk:                                    # docs/math.md §dense
                ntk_self = [torch.mul(c, coef[2]).add_(coef[3]).add_(coef[4] * t)
                            if lay.parameterization != "ntk" else
                            torch.mul(c, w2).add_(b2) + w2 * t
                            for c, t in zip(covs, ntk_self)]
            covs = [w2 * c + b2 for c in covs]
            kinds.append(0)
            prm += coef
            channels, sources, gaussian = lay.out, new_source(), True
        else:
            a, b = lay.a, lay.b
            s2, ab2 = a * a + b * b, 2 * a * b
            for f, c in zip(factors, covs):                 # as ABRelu.t_and_tdot's
                f += [torch.rsqrt(torch.clamp(c, min=1e-30)), torch.sqrt(torch.clamp(c, min=0.0))]
            if want_ntk:
                ntk_self = [lay.tdot_diag(c) * t for c, t in zip(covs, ntk_self)]
            covs = [lay.t_diag(c) for c in covs]
            kinds.append(1)
            prm += (s2 / 2, (ab2 - s2) / (2 * math.pi), (s2 - ab2) / (2 * math.pi), 0.0, 0.0)
            gaussian = False
    n1, n2 = k0.n1, k0.n2
    f1 = torch.stack(factors[0]) if factors[0] else torch.zeros(1, n1, dtype=dtype)
    f2 = f1 if symmetric else (torch.stack(factors[1]) if factors[1] else
                               torch.zeros(1, n2, dtype=dtype))
    kind_t = torch.tensor(kinds, dtype=torch.int32)
    prm_t = torch.tensor(prm, dtype=torch.float64)
    x = k0.nngp if k0.nngp.stride(1) == 1 else k0.nngp.contiguous()
    th = None
    if want_ntk and not (k0.is_input or k0.ntk.stride() == (0, 0)):
        th = k0.ntk if k0.ntk.stride(1) == 1 else k0.ntk.contiguous()
    nngp = torch.empty((n1, n2), dtype=dtype)
    ntk = torch.empty((n1, n2), dtype=dtype) if want_ntk else None
    fn = lib.wn_chain_f32 if dtype == torch.float32 else lib.wn_chain_f64
    size = nngp.element_size()
    bounds = spans(n1, NATIVE_STRIP_ROWS)

    def task(rows):
        r0, r1 = rows
        c0 = r0 if symmetric else 0                          # j >= i only, mirrored
        off = (r0 * n2 + c0) * size
        return fn(r1 - r0, n2 - c0, x.data_ptr() + (r0 * x.stride(0) + c0) * size,
                  x.stride(0), None if th is None else th.data_ptr() + (
                      r0 * th.stride(0) + c0) * size, 0 if th is None else th.stride(0),
                  len(kinds), kind_t.data_ptr(), prm_t.data_ptr(),
                  f1.data_ptr() + r0 * size, n1, f2.data_ptr() + c0 * size, n2,
                  nngp.data_ptr() + off, None if ntk is None else ntk.data_ptr() + off, n2,
                  int(symmetric), 0, int(symmetric))

    bad = []
    run_in_order(task, bounds, lambda i, flag: bad.append(flag), threads=threads)
    out = k0.replace(nngp=nngp, ntk=ntk, cov1=covs[0], cov2=None if symmetric else covs[1],
                     is_gaussian=gaussian, is_input=False, channels=channels, sources=sources,
                     row_offset=0)
    # exact self pairs (docs/math.md §near-diagonal): the eager engine's values
    if symmetric:
        out.set_batch_diagonal(nngp, covs[0])
        if ntk is not None:
            out.set_batch_diagonal(ntk, ntk_self[0])
    out.write_same_input(nngp, covs[0])
    if ntk is not None:
        out.write_same_input(ntk, ntk_self[0])
    if any(bad) or not all(bool(torch.isfinite(c).all()) for c in (*covs, *(ntk_self or ()))):
        check_finite(out, fname, layer=layer, k0=k0)
    return out


def spatial_network_kernel(layer, x1: torch.Tensor, x2: torch.Tensor | None, *,
                           want_ntk: bool, full: bool, fname: str, threads: int):
    """The kernel of a network of Conv, ABRelu, AvgPool / SumPool, GlobalAvgPool /
    GlobalSumPool, Flatten and Dense layers (ending in a flat output) on channels-first
    inputs, computed by the native engine one input pair at a time in cache
    (`widenets.layers._native_spatial`, docs/math/native-conv.md); None when the network,
    the inputs, the size or the engine setting do not allow it (the caller computes it
    eagerly, which also raises the eager errors).

    `full`: all position pairs (pooling) or their diagonal (Flatten readouts). The size rule:
    input pairs x position pairs (full) or x positions (diagonal) of at least
    `NATIVE_MIN_SPATIAL_WORK`. The variances and a symmetric kernel's diagonal are the self
    pairs' values of the same loop (exact symmetry, K(x, x) = cov1 exactly); identical inputs
    get exactly the self-pair values. A non-finite value makes the eager engine recompute the
    kernel, so that the errors are its own.

    Args:
        layer: the network.
        x1, x2: (n, C, *S) inputs (x2 None: the symmetric kernel of x1).
        want_ntk: compute the NTK too.
        full: the full layout (True) or the diagonal one.
        fname: the public function's name (unused: errors come from the eager engine).
        threads: how many threads compute the strips of pairs.

    Returns:
        The output Kernel, or None.

    Example:
        >>> import torch, widenets as wn
        >>> from widenets.layers.engine import spatial_network_kernel
        >>> net = wn.serial(wn.Conv(4, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
        >>> x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
        >>> k = spatial_network_kernel(net, x, None, want_ntk=True, full=True, fname="kernel",
        ...                            threads=1)      # None: too small for the native engine
        >>> k is None or bool(torch.allclose(k.ntk, net.kernel(x, get="ntk")))
        True
    """
    if x1.device.type != "cpu" or x1.dtype not in (torch.float32, torch.float64) \
            or (torch.is_grad_enabled() and (x1.requires_grad or (
                x2 is not None and x2.requires_grad))):
        return None
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    p = math.prod(x1.shape[2:])
    work = x1.shape[0] * n2 * (p * p if full else p)
    if get_engine() not in ("native", "auto") or work < NATIVE_MIN_SPATIAL_WORK:
        return None
    pl = _native_spatial.plan(layer, tuple(x1.shape[2:]), x1.shape[1], full)
    if pl is None:
        return None
    try:
        lib = _native.load("spatial")
    except _native.BuildError as err:
        _warn_once(str(err), stacklevel=7, what="native")
        return None
    res = _native_spatial.compute(lib, pl, x1, x2, want_ntk=want_ntk, full=full,
                                  threads=threads)
    if res[-1] or not all(bool(torch.isfinite(t).all()) for t in res[2:5] if t is not None):
        return None                  # the eager engine recomputes it and raises its error
    k = _mark_same_inputs(_native_spatial.output_kernel(pl, res, x2 is None), x1, x2)
    if k.ntk is not None:
        k.write_same_input(k.ntk, res[4])       # identical inputs: the self-pair values
    return k


use_block_engine(apply)        # every block of net.kernel goes through `apply`
use_network_engine(network_kernel)   # flat chains of Dense and ABRelu: one native pass
use_spatial_engine(spatial_network_kernel)   # image networks: one native loop per pair
