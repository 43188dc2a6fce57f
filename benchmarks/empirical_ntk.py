"""Benchmark: empirical NTK implementations against a hand-written layer-wise contraction.

    python benchmarks/empirical_ntk.py                 # everything (several minutes on 2 cores)
    python benchmarks/empirical_ntk.py --quick         # skip the slow jacobian/ntvp MLP runs
    python benchmarks/empirical_ntk.py --device cuda --repeats 7

Prints markdown tables: median wall time over --repeats runs (the fast implementations and the
reference run round-robin, so load changes hit all alike; jacobian and ntvp, which take minutes
here, run once), peak extra memory (CPU: resident set size sampled every millisecond above
the level before the run; CUDA: torch.cuda.max_memory_allocated), and the ratio to the
reference measured in the same run. Not a test: nothing is asserted.

1. MLP 784-512-512-10 (ReLU), N=256, mode="trace", float32, vs a hand-written layer-wise
   contraction (forward once, cotangents by hand, Σ_l (x_l x_lᵀ + 1) ∘ (G_l G_lᵀ)).
2. The CNN of the torch.func NTK tutorial (three 3x3 convs, 32 channels, on 3x32x32, linear to
   10), N=64, modes "full" and "trace": reference = fastest of jacobian/ntvp/structured.
3. Width scaling of the MLP 784-w-w-10 for w in 256..2048 (N=64, trace).
4. "floor": the models people train (a 2-layer nn.TransformerEncoder over token embeddings, a
   ResNet-18-style CNN with BatchNorm in eval mode, the MLP of section 1), trace mode, float32,
   each implementation's time as a multiple of the model's backward floor and of the torch.func
   recipe, all measured in the same run. The backward floor is what any exact method must at
   least do: one batched forward pass, one batched backward pass per output (parameter
   gradients of the batch), and a Gram matrix of n x n over vectors of the per-input
   gradients' size O P (an (n, O P) @ (O P, n) product, in slices of the parameter axis).
   The torch.func recipe is the one of the torch.func NTK tutorial: per-input `vmap(jacrev)`
   Jacobians, then a contraction.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import threading
import time

import torch
from empirical_models import TokenTransformer, TutorialCNN, mlp, resnet18  # noqa: E402
from torch import nn

import widenets as wn

IMPLS = ("structured", "auto", "jacobian", "ntvp")


# --------------------------------------------------------------------------------- timing
class _PeakRss:
    """Peak resident memory above the level at entry, sampled every millisecond (psutil; NaN
    when psutil is not installed)."""

    def __init__(self):
        try:
            import psutil
        except ImportError:
            psutil = None
        self.proc = None if psutil is None else psutil.Process()
        self.stop = threading.Event()

    def _rss(self) -> int:
        return self.proc.memory_info().rss

    def __enter__(self):
        if self.proc is None:
            return self
        self.base = self._rss()
        self.peak = self.base
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.proc is None:
            return
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def extra_mb(self) -> float:
        return float("nan") if self.proc is None else (self.peak - self.base) / 2**20


def measure_interleaved(fns: dict, *, repeats: int, device: str) -> dict:
    """Like `measure` for several functions, run round-robin so that load changes on a shared
    machine hit all of them alike, in a new order every round (a seeded shuffle): a function
    run right after one that freed a lot of memory pays for fresh pages (about 10% here after
    the torch.func recipe), so no function may keep that place. Returns name -> (median s,
    MB, result)."""
    results = {name: fn() for name, fn in fns.items()}          # warm-up
    _MINS.clear()                       # _fmt marks every other row as a single run
    times = {name: [] for name in fns}
    mems = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in random.Random(r).sample(names, len(names)):
            t, mem, results[name] = _once(fns[name], device)
            times[name].append(t)
            mems[name].append(mem)
    _MINS.update({name: min(times[name]) for name in fns})
    return {name: (statistics.median(times[name]), max(mems[name]), results[name])
            for name in fns}


_MINS: dict[str, float] = {}      # fastest run of each interleaved function (last section)


def _once(fn, device):
    """For runs too slow to warm up and repeat: one timed run."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with _PeakRss() as rss:
        t0 = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter() - t0
    mem = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else rss.extra_mb
    return t, mem, result


# --------------------------------------------------------------------------------- models
# (benchmarks/empirical_models.py, shared with the tests)


def hand_written_mlp_ntk(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Trace NTK (mean over outputs) of Linear-ReLU-Linear-ReLU-Linear, written out by hand:
    Θ = Σ_l (h_{l-1} h_{l-1}ᵀ + 1) ∘ Σ_a G_l[a] G_l[a]ᵀ, G_l the cotangents at layer l."""
    l1, l2, l3 = model[0], model[2], model[4]
    with torch.no_grad():
        z1 = torch.addmm(l1.bias, x, l1.weight.T)
        h1 = z1.relu()
        z2 = torch.addmm(l2.bias, h1, l2.weight.T)
        h2 = z2.relu()
        o = l3.weight.shape[0]
        g2 = l3.weight[:, None, :] * (z2 > 0)               # (O, n, w) = ∂f_a/∂z2
        g1 = (g2 @ l2.weight) * (z1 > 0)                    # (O, n, w) = ∂f_a/∂z1

        def cot_gram(g):
            flat = g.transpose(0, 1).reshape(g.shape[1], -1)
            return flat @ flat.T

        one = torch.ones((), dtype=x.dtype, device=x.device)
        k = (torch.addmm(one, x, x.T) * cot_gram(g1)
             + torch.addmm(one, h1, h1.T) * cot_gram(g2)
             + torch.addmm(one, h2, h2.T) * o)
        return k / o


def auto_choice(model, x, mode: str, *, with_costs: bool = False):
    """What implementation="auto" picks for these inputs (same estimate as empirical_ntk); with
    `with_costs`, also the cost model's multiply-add estimates: name -> MACs, with "floor"
    (one forward, O backward passes with parameter gradients, the n x n Gram of the O P
    per-input gradient entries: n F (1 + 2 O) + n² O P)."""
    from widenets.empirical._target import resolve_target
    from widenets.empirical.cost import (
        DEFAULT_BUDGET_BYTES,
        calibrate,
        choose_implementation,
        estimate_costs,
    )
    from widenets.empirical.structured import make_plan

    target = resolve_target(model, None, func="benchmark")
    plan = make_plan(target, x[:2], count_flops=True)
    budget = DEFAULT_BUDGET_BYTES // x.element_size()
    n = x.shape[0]
    costs = estimate_costs(plan, n, n, mode, symmetric=True, blocks=None, budget=budget)
    choice = choose_implementation(costs, budget, calibrate(x.device, torch.float32))
    if not with_costs:
        return choice
    macs = {k: v[0] for k, v in costs.items()}
    o, f = plan.out_dim, plan.flops
    macs["floor"] = n * f * (1 + 2 * o) + n * n * o * plan.n_params
    macs["torch.func recipe"] = macs["floor"]        # the recipe: unblocked Jacobians
    return choice, macs


# ------------------------------------------------------------------------------- sections
def _fmt(t, mem, ref, name=None):
    if name in _MINS:
        return f"{t:.3f} | {_MINS[name]:.3f} | {mem:.0f} | {t / ref:.2f}x"
    return f"{t:.3f} (1 run) | - | {mem:.0f} | {t / ref:.2f}x"      # not a median


def section_mlp(args, device):
    n = 256
    model = mlp(512, device)
    x = torch.randn(n, 784, device=device)
    fast = {"hand-written layer-wise contraction": lambda: hand_written_mlp_ntk(model, x)}
    for impl in ("structured", "auto"):
        fast[impl] = lambda impl=impl: wn.empirical_ntk(model, x, implementation=impl,
                                                        mode="trace")
    res = measure_interleaved(fast, repeats=args.repeats, device=device)
    t_ref, _, k_ref = res["hand-written layer-wise contraction"]
    for impl, kwargs in (("jacobian", {}), ("ntvp", {})):
        name = impl
        if args.quick:
            res[name] = None
            continue
        res[name] = _once(lambda impl=impl, kwargs=kwargs: wn.empirical_ntk(
            model, x, implementation=impl, mode="trace", **kwargs), device)
    print(f"\n### MLP 784-512-512-10, N={n}, mode='trace', float32, {device} (auto chose "
          f"{auto_choice(model, x, 'trace')})\n")
    print("| implementation | median s | min s | peak MB | median vs hand-written | rel. diff |")
    print("|---|---|---|---|---|---|")
    for name, r in res.items():
        if r is None:
            print(f"| {name} | skipped (--quick) | | | | |")
            continue
        t, mem, k = r
        err = float((k - k_ref).norm() / k_ref.norm())
        print(f"| {name} | {_fmt(t, mem, t_ref, name)} | {err:.1e} |")


def section_cnn(args, device):
    n = 64
    torch.manual_seed(0)
    model = TutorialCNN().to(device)
    x = torch.randn(n, 3, 32, 32, device=device)
    for mode in ("full", "trace"):
        fns = {impl: (lambda impl=impl, mode=mode: wn.empirical_ntk(
            model, x, implementation=impl, mode=mode)) for impl in ("structured", "jacobian",
                                                                    "auto")}
        res = measure_interleaved(fns, repeats=args.repeats, device=device)
        if not args.quick:
            res["ntvp"] = _once(lambda mode=mode: wn.empirical_ntk(
                model, x, implementation="ntvp", mode=mode), device)
        fastest = min(v[0] for k, v in res.items() if k != "auto")
        ref = res["jacobian"][2]
        print(f"\n### torch.func tutorial CNN, N={n}, mode='{mode}', float32, {device} (auto "
              f"chose {auto_choice(model, x, mode)})\n")
        print("| implementation | median s | min s | peak MB | median vs fastest of the three "
              "| rel. diff |")
        print("|---|---|---|---|---|---|")
        for impl in ("structured", "auto", "jacobian", "ntvp"):
            if impl not in res:
                print(f"| {impl} | skipped (--quick) | | | | |")
                continue
            t, mem, k = res[impl]
            err = float((k - ref).norm() / ref.norm())
            print(f"| {impl} | {_fmt(t, mem, fastest, impl)} | {err:.1e} |")


def section_width(args, device):
    n = 64
    widths = (256, 512) if args.quick else (256, 512, 1024, 2048)
    x = torch.randn(n, 784, device=device)
    table = {}
    too_slow = set()
    print(f"\n### Width scaling: MLP 784-w-w-10, N={n}, mode='trace', float32, {device} "
          f"(seconds: medians of {args.repeats} for hand-written, structured, auto; single runs "
          f"for jacobian, ntvp; '-' = skipped after a run over {args.cap:.0f} s)\n")
    cols = ("hand-written", "structured", "auto", "jacobian", "ntvp")
    print("| width | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|", flush=True)
    for w in widths:
        model = mlp(w, device)
        fast = {"hand-written": lambda model=model: hand_written_mlp_ntk(model, x)}
        for impl in ("structured", "auto"):
            fast[impl] = lambda impl=impl, model=model: wn.empirical_ntk(
                model, x, implementation=impl, mode="trace")
        for name, (t, _, _) in measure_interleaved(fast, repeats=args.repeats,
                                                   device=device).items():
            table[(w, name)] = t
        for impl in ("jacobian", "ntvp"):
            if impl in too_slow:
                continue
            t, _, _ = _once(lambda impl=impl, model=model: wn.empirical_ntk(
                model, x, implementation=impl, mode="trace"), device)
            table[(w, impl)] = t
            if t > args.cap:
                too_slow.add(impl)
        cells = [f"{table[(w, c)]:.3f}" if (w, c) in table else "-" for c in cols]
        print(f"| {w} | " + " | ".join(cells) + " |", flush=True)


# ------------------------------------------------------------------------ section "floor"
def torch_func_ntk(model, x):
    """The torch.func tutorial recipe, trace mode: per-input Jacobians by vmap(jacrev), then
    Σ_a J_a J_aᵀ / O."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi[None],)).reshape(-1)

    jac = vmap(jacrev(f), (None, 0))(params, x)
    out = None
    for j in jac.values():
        j = j.flatten(2)
        part = torch.einsum("iap,jap->ij", j, j)
        out = part if out is None else out + part
    return out / j.shape[1]


def backward_floor(model, x):
    """A function doing the floor's work (see the module docstring) for `model` on `x`."""
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    with torch.no_grad():
        o = model(x[:1]).numel()
    n = x.shape[0]
    cols = min(o * n_params, max(1, 2**24 // n))
    buf = torch.randn(n, cols, device=x.device, dtype=params[0].dtype)

    def run():
        out = model(x).reshape(n, -1)
        for a in range(o):
            torch.autograd.grad(out[:, a].sum(), params, retain_graph=a < o - 1)
        gram = torch.zeros(n, n, device=x.device, dtype=buf.dtype)
        for start in range(0, o * n_params, cols):
            part = buf[:, :min(cols, o * n_params - start)]
            gram.addmm_(part, part.T)
        return gram

    return run


def floor_models(args, device):
    torch.manual_seed(0)
    n_t, n_r = args.n_transformer, args.n_resnet
    tr = TokenTransformer(d=args.d_model).to(device).eval()
    xt = torch.randint(0, 1000, (n_t, 24), device=device)
    rn = resnet18(width=args.resnet_width).to(device).eval()
    xr = torch.randn(n_r, 3, 32, 32, device=device)
    ml = mlp(512, device)
    xm = torch.randn(args.n_mlp, 784, device=device)
    mp = sum(p.numel() for p in rn.parameters()) / 1e6
    return [(f"TransformerEncoder 2x(d={args.d_model}, 4 heads, ff 128), L=24, N={n_t}", tr,
             xt),
            (f"ResNet-18 width {args.resnet_width} ({mp:.2f} M params), 3x32x32, N={n_r}", rn,
             xr),
            (f"MLP 784-512-512-10, N={args.n_mlp}", ml, xm)]


def section_floor(args, device):
    print(f"\n### Backward floor and torch.func recipe, mode='trace', float32, {device} "
          f"(median of {args.repeats} after a warm-up; runs slower than {args.cap:.0f} s: "
          f"one run)\n")
    print("| model | implementation | median s | peak MB | x floor | x torch.func | rel. diff "
          "| est. GMAC |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for label, model, x in floor_models(args, device):
        fns = {"floor": backward_floor(model, x),
               "torch.func recipe": lambda model=model, x=x: torch_func_ntk(model, x)}
        if isinstance(model, nn.Sequential):
            fns["hand-written"] = lambda model=model, x=x: hand_written_mlp_ntk(model, x)
        for impl in args.floor_impls.split(","):
            fns[impl] = lambda impl=impl, model=model, x=x: wn.empirical_ntk(
                model, x, implementation=impl, mode="trace")
        n_params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            jac_gb = x.shape[0] * model(x[:1]).numel() * n_params * 4 / 2**30
        if jac_gb > args.max_jacobian_gb:    # per-input Jacobians of the whole batch
            for name in ("torch.func recipe", "jacobian"):
                fns.pop(name, None)
                print(f"| {label} | {name} | skipped: its per-input Jacobians take "
                      f"{jac_gb:.1f} GB | | | | | |", flush=True)
        slow, fast = {}, {}
        for name, fn in fns.items():           # a first run decides who is repeated
            t, mem, res = _once(fn, device)
            (slow if t > args.cap else fast)[name] = (t, mem, res)
        res = measure_interleaved({k: fns[k] for k in fast}, repeats=args.repeats,
                                  device=device)
        res.update(slow)
        refname = "torch.func recipe" if "torch.func recipe" in res else "structured"
        floor, ref = res["floor"][0], res[refname][0]
        k_ref = res[refname][2]
        choice, macs = auto_choice(model, x, "trace", with_costs=True)
        macs["auto"] = macs[choice]
        for name, (t, mem, k) in res.items():
            err = "" if name == "floor" else f"{float((k - k_ref).norm() / k_ref.norm()):.1e}"
            note = f" (chose {choice})" if name == "auto" else ""
            note += " (1 run)" if name in slow else ""
            vs = f"{t / ref:.2f}" if refname == "torch.func recipe" else "-"
            gmac = f"{macs[name] / 1e9:.2f}" if name in macs else ""
            print(f"| {label} | {name}{note} | {t:.3f} | {mem:.0f} | {t / floor:.2f} | "
                  f"{vs} | {err} | {gmac} |", flush=True)
        print(f"| {label} | multiply-adds, recipe / structured (the speed-up if both ran at "
              f"the same rate) | | | | {macs['torch.func recipe'] / macs['structured']:.2f} "
              f"| | |",
              flush=True)
    print(_FLOOR_NOTE, flush=True)


_FLOOR_NOTE = """
Why the speed-up over the recipe is bounded by the multiply-add ratio (docs/math/empirical_ntk.md
§5): per layer shared over T positions the structured path takes the cheaper of the Gram form,
n1 n2 T² (d_in + O d_out), and the Jacobian form, n O T d_in d_out to form the per-input
weight gradients plus n1 n2 O d_in d_out to contract them (3/4 of it done for x2 = x1, n >= 128).
No evaluation order of a layer's pair term costs less than the cheaper of the two (§5). For
every convolution of a ResNet on 32x32 inputs but the last stage (T = 1024 ... 64)
T² (d_in + O d_out) > O d_in d_out, so the Jacobian form wins, and it is the recipe's own
per-input gradient and contraction cost for that layer: structured saves the weight-gradient
half of the O backward passes (it forms the same gradients from the recorded factors) and
the recipe's vmap overhead. The ratio of the est. GMAC column is
therefore the speed-up at equal multiply-add rates; beyond it only the recipe's lower rate
(vmap over per-input graphs, strong for the transformer's small matrices, weak for the
ResNet's large batched convolutions) can add."""


_MEMORY_RUN = """
import resource, sys, time
import torch
sys.path.insert(0, {bench!r})
from empirical_models import resnet18
import widenets as wn
from widenets.empirical import ntk
torch.set_num_threads({threads})
torch.manual_seed(0)
model = resnet18(64, out={outputs}).to({device!r}).eval()
x = torch.randn({n}, 3, 32, 32, device={device!r})
blocks = []
real = ntk._auto_block
ntk._auto_block = lambda *a: blocks.append(real(*a)) or blocks[-1]
from widenets.empirical import structured
parts = []
real_parts = structured.StructuredEngine.parts
structured.StructuredEngine.parts = lambda *a: parts.append(real_parts(*a)) or parts[-1]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
k = wn.empirical_ntk(model, x, mode="trace")
t = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cuda = torch.cuda.max_memory_allocated() if {device!r} == "cuda" else 0
print(t, base / 2**10, peak / 2**10, cuda / 2**20, blocks[0] if blocks else None,
      bool(torch.isfinite(k).all()), len(parts[0]) if parts else 0,
      sum(not p.fits for p in parts[0]) if parts else 0)
"""


def section_memory(args, device):
    """Peak memory of batch_size=None on ResNet-18 (width 64, 11.2 M parameters), 3x32x32,
    trace mode, for growing n. Each n runs in a fresh process and reports its maximum resident
    set size over its whole life (getrusage ru_maxrss: every allocation of torch's CPU allocator
    counts, which tracemalloc does not see), including Python, torch and the model (the "base"
    column, measured in the same process just before the call); on CUDA also
    torch.cuda.max_memory_allocated."""
    import subprocess
    import sys
    from pathlib import Path

    print(f"\n### Memory: ResNet-18 (11.2 M params, {args.memory_outputs} output(s)), 3x32x32, "
          f"mode='trace', batch_size=None (auto), float32, {device} (one run each, fresh "
          f"process; max RSS of the whole process)\n")
    print("| n | seconds | process max RSS MB | of which before the call MB | CUDA peak MB "
          "| blocks of | parts of the state (of which blocked) |")
    print("|---|---|---|---|---|---|---|", flush=True)
    bench = str(Path(__file__).resolve().parent)
    for n in args.memory_n:
        code = _MEMORY_RUN.format(bench=bench, threads=torch.get_num_threads(),
                                  outputs=args.memory_outputs, device=device, n=n)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"| {n} | failed: {res.stderr.strip().splitlines()[-1][:120]} | | | | | |",
                  flush=True)
            continue
        t, base, peak, cuda, block, finite, parts, blocked = res.stdout.split()
        cuda_mb = f"{float(cuda):.0f}" if device == "cuda" else "-"
        print(f"| {n} | {float(t):.1f} | {float(peak):.0f} | {float(base):.0f} | {cuda_mb} | "
              f"{n if block == 'None' else block} | {parts} ({blocked}) |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cap", type=float, default=60.0, help="width table: drop an implementation "
                    "after a run slower than this")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sections", default="floor,mlp,cnn,width,memory")
    ap.add_argument("--n-transformer", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-resnet", type=int, default=32)
    ap.add_argument("--resnet-width", type=int, default=8)
    ap.add_argument("--floor-impls", default="auto,structured,jacobian,ntvp")
    ap.add_argument("--n-mlp", type=int, default=64)
    ap.add_argument("--max-jacobian-gb", type=float, default=1.0, help="floor section: skip "
                    "the torch.func recipe and 'jacobian' when n O P floats exceed this")
    ap.add_argument("--memory-n", type=lambda v: [int(t) for t in v.split(",")],
                    default=[16, 64, 256])
    ap.add_argument("--memory-outputs", type=int, default=10)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"medians of {args.repeats} runs after a warm-up (jacobian and ntvp: single runs)",
          flush=True)
    sections = args.sections.split(",")
    if "floor" in sections:
        section_floor(args, args.device)
    if "mlp" in sections:
        section_mlp(args, args.device)
    if "cnn" in sections:
        section_cnn(args, args.device)
    if "width" in sections:
        section_width(args, args.device)
    if "memory" in sections:
        section_memory(args, args.device)


if __name__ == "__main__":
    main()
