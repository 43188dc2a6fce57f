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
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time

import torch
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
    """Like `measure` for several functions, run round-robin (A B C A B C ...) so that load
    changes on a shared machine hit all of them alike. Returns name -> (median s, MB, result)."""
    results = {name: fn() for name, fn in fns.items()}          # warm-up
    _MINS.clear()                       # _fmt marks every other row as a single run
    times = {name: [] for name in fns}
    mems = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t, mem, results[name] = _once(fn, device)
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
def mlp(width: int, device, dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10)).to(device, dtype)


class TutorialCNN(nn.Module):
    """The CNN of the torch.func "Neural Tangent Kernels" tutorial: 3 convs, then linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, (3, 3))
        self.conv2 = nn.Conv2d(32, 32, (3, 3))
        self.conv3 = nn.Conv2d(32, 32, (3, 3))
        self.fc = nn.Linear(21632, 10)

    def forward(self, x):
        x = self.conv1(x).relu()
        x = self.conv2(x).relu()
        x = self.conv3(x)
        return self.fc(x.flatten(1))


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

        k = (torch.addmm(torch.ones(()), x, x.T) * cot_gram(g1)
             + torch.addmm(torch.ones(()), h1, h1.T) * cot_gram(g2)
             + torch.addmm(torch.ones(()), h2, h2.T) * o)
        return k / o


def auto_choice(model, x, mode: str) -> str:
    """What implementation="auto" picks for these inputs (same estimate as empirical_ntk)."""
    from widenets.empirical._target import resolve_target
    from widenets.empirical.cost import DEFAULT_BUDGET_BYTES, choose_implementation, estimate_costs
    from widenets.empirical.structured import make_plan

    target = resolve_target(model, None, func="benchmark")
    plan = make_plan(target, x[:2], count_flops=True)
    budget = DEFAULT_BUDGET_BYTES // x.element_size()
    n = x.shape[0]
    costs = estimate_costs(plan, n, n, mode, symmetric=True, blocks=(n, n), budget=budget)
    return choose_implementation(costs, budget)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cap", type=float, default=60.0, help="width table: drop an implementation "
                    "after a run slower than this")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sections", default="mlp,cnn,width")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"medians of {args.repeats} runs after a warm-up (jacobian and ntvp: single runs)",
          flush=True)
    sections = args.sections.split(",")
    if "mlp" in sections:
        section_mlp(args, args.device)
    if "cnn" in sections:
        section_cnn(args, args.device)
    if "width" in sections:
        section_width(args, args.device)


if __name__ == "__main__":
    main()
