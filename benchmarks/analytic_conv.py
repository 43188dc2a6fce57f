"""Analytic NNGP + NTK of small convolutional networks (issue 5), with a memory-traffic count.

Networks (channels do not matter for the kernel):
* gap:     two 3x3 SAME Conv + ReLU, GlobalAvgPool, Dense; 8x8x1 images, N in {64, 128}
           (all position pairs: (N, N, 8, 8, 8, 8) tensors);
* flatten: the same with Flatten instead of pooling (diagonal layout: (N, N, 8, 8));
* myrtle5: Myrtle-5-like on 3x16x16 images, N = 64: Conv+ReLU x2, AvgPool 2, Conv+ReLU,
           AvgPool 2, Conv+ReLU, GlobalAvgPool, Dense.

Reference: the archived JAX neural-tangents (cannot run on current JAX, so not measured here)
took, on the 2-core development machine, 5.1 s / 20.8 s (N = 64 / 128) in float32 and 1.3 s /
5.4 s in float64 for `gap`. Targets: float32 at N = 128 <= 5.4 / 4 = 1.35 s, float64 <= 2.7 s.

Memory traffic: the torch profiler records every op with its input shapes; the bytes read and
written by the ops on position-pair tensors (>= 2^16 elements), divided by the copy bandwidth
measured in the same run (best of 7 copies of 256 MiB, read + write), give the time the same
passes would need if each ran at copy speed; their ratio to the measured time says how close to
the memory-bandwidth limit the implementation runs (on a shared machine both are noisy). The
traffic is that of the eager engine's passes (the profiler does not see inside a compiled
unit), so for the fused engine "bandwidth-bound / min" compares the same reference passes
with the fused time.

Engines (issue 14, docs/guide/kernels.md §engine): each case runs with every engine of
--engines, alternating within one run; the fused engine fuses each activation's passes (the
convolution and pooling sums stay eager); the native engine computes each input pair's whole
network in cache (widenets.layers._native_spatial). Compile cost: the first fused or native
call, reported apart.

    python benchmarks/analytic_conv.py [--repeats 3] [--skip-myrtle] [--engines eager native]

Before / after (issue 14): `--reference-src DIR` (e.g. another checkout's src/) times each case
in fresh processes, alternating between DIR and this checkout (the one on PYTHONPATH), one
warm-up and one timed call per process, `--repeats` processes each; it prints the medians of
the wall and CPU (process) times and their ratios, measured in the same run, the load average,
and the bandwidth-bound time of the reference's passes (its traffic, measured in its process).
The reference runs each engine of --engines; this checkout runs --this-engine (default: its
default engine, "native"; pass e.g. `--this-engine eager` to compare like with like). The
native spatial library's one-time build is measured apart, in a fresh cache directory:

    PYTHONPATH=src python benchmarks/analytic_conv.py --reference-src /path/to/main/src \
        --repeats 3 --engines eager
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from _timing import times_of  # noqa: E402  (benchmarks/_timing.py)
from torch.profiler import ProfilerActivity, profile

import widenets as wn


def nets():
    conv = lambda: wn.Conv(1, 3, padding="SAME", w_std=1.4, b_std=0.1)  # noqa: E731
    gap = wn.serial(conv(), wn.Relu(), conv(), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    flat = wn.serial(conv(), wn.Relu(), conv(), wn.Relu(), wn.Flatten(), wn.Dense(1))
    myrtle = wn.serial(conv(), wn.Relu(), conv(), wn.Relu(), wn.AvgPool(2),
                       conv(), wn.Relu(), wn.AvgPool(2), conv(), wn.Relu(),
                       wn.GlobalAvgPool(), wn.Dense(1))
    return gap, flat, myrtle


def copy_bandwidth() -> float:
    """Bytes per second of a 256 MiB copy into allocated memory (read + write), best of 7."""
    a = torch.ones(64 << 20, dtype=torch.float32)
    b = torch.zeros_like(a)
    _, t = times_of(lambda: b.copy_(a), 7)
    return 2 * a.numel() * a.element_size() / t


def pair_tensor_bytes(fn) -> int:
    """Bytes read + written by the ops on large tensors while fn runs (profiler shapes)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    total = 0
    for ev in prof.events():
        shapes = [s for s in (ev.input_shapes or []) if s]
        sizes = [math.prod(s) for s in shapes]
        if not sizes or max(sizes) < (1 << 16) or ev.cpu_parent is not None:
            continue
        if ev.name in ("aten::empty", "aten::empty_like", "aten::as_strided", "aten::slice",
                       "aten::view", "aten::reshape", "aten::diagonal", "aten::permute",
                       "aten::transpose", "aten::expand", "aten::select", "aten::narrow",
                       "aten::movedim", "aten::detach", "aten::alias"):
            continue
        total += (sum(sizes) + max(sizes))            # inputs read + output written
    return total


def _case(name, n, dtype):
    gap, flat, myrtle = nets()
    net = {"gap": gap, "flatten": flat, "myrtle5": myrtle}[name]
    shape = (3, 16, 16) if name == "myrtle5" else (1, 8, 8)
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    return lambda: net.kernel(x, dtype=dtype)


def worker(name, n, dtype_name, engine, traffic):
    """One process of --reference-src: a warm-up call, one timed call (wall and CPU), and the
    pair-tensor traffic of the eager passes when asked; prints one JSON line. engine
    "default": the checkout's default engine."""
    dtype = getattr(torch, dtype_name)
    run = _case(name, n, dtype)
    if engine != "default":
        wn.set_engine(engine)
    run()
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    out = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    if traffic:
        wn.set_engine("eager")
        out["traffic"] = pair_tensor_bytes(run) * torch.empty((), dtype=dtype).element_size()
    print(json.dumps(out))


def native_build_time(src, here) -> str:
    """One build of this checkout's native spatial library in a fresh cache directory, in a
    fresh process (the one-time cost a machine pays; later processes load it from the disk
    cache)."""
    import tempfile

    code = ("import time; from widenets.layers import _native; t = time.perf_counter(); "
            "_native.load('spatial'); print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=src + os.pathsep + here, WIDENETS_CACHE_DIR=tmp)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True)
    if out.returncode:
        return "native spatial library: not built here (" + \
            (out.stderr.strip().splitlines() or ["?"])[-1][:120] + ")"
    return (f"native spatial library build (once per machine, fresh cache): "
            f"{float(out.stdout):.1f} s")


def compare(args):
    """Alternating fresh processes of the reference checkout and this one (see the module
    docstring)."""
    here = os.path.dirname(os.path.abspath(__file__))
    this_src = os.path.join(os.path.dirname(here), "src")
    bandwidth = copy_bandwidth()
    print(f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (best of 7); reference {args.reference_src}")
    print(native_build_time(this_src, here))
    print("| network | N | dtype | engine (reference / this) | reference wall (s) | this wall (s) "
          "| wall ratio | "
          "reference CPU (s) | this CPU (s) | CPU ratio | bandwidth-bound, reference passes "
          "(s) | bound / this wall (min) | load average |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    cases = [("gap", n) for n in args.sizes if n]
    if not args.skip_myrtle:
        cases.append(("myrtle5", 64))
    for name, n in cases:
        for dtype in args.dtypes:
            for engine in args.engines:
                res = {"ref": [], "this": []}
                traffic = None
                loads = []
                for r in range(args.repeats):
                    for who, src in (("ref", args.reference_src), ("this", this_src)):
                        env = dict(os.environ, PYTHONPATH=src + os.pathsep + here)
                        want = who == "ref" and r == 0
                        eng = engine if who == "ref" else args.this_engine
                        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name,
                               str(n), dtype, eng, "1" if want else "0"]
                        loads.append(os.getloadavg()[0])
                        out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                             check=True).stdout.strip().splitlines()[-1]
                        got = json.loads(out)
                        res[who].append(got)
                        traffic = got.get("traffic", traffic)
                med = {w: {f: statistics.median(g[f] for g in v) for f in ("wall", "cpu")}
                       for w, v in res.items()}
                best = min(g["wall"] for g in res["this"])
                bound = traffic / bandwidth
                print(f"| {name} | {n} | {dtype} | {engine} / {args.this_engine} | "
                      f"{med['ref']['wall']:.3f} | "
                      f"{med['this']['wall']:.3f} | {med['ref']['wall'] / med['this']['wall']:.2f}"
                      f" | {med['ref']['cpu']:.3f} | {med['this']['cpu']:.3f} | "
                      f"{med['ref']['cpu'] / med['this']['cpu']:.2f} | {bound:.3f} | "
                      f"{bound / best:.0%} | {statistics.median(loads):.1f} |", flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, n, dtype, engine, traffic = sys.argv[2:7]
        return worker(name, int(n), dtype, engine, traffic == "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-myrtle", action="store_true")
    ap.add_argument("--engines", nargs="+", default=["eager", "native"],
                    choices=["eager", "native", "fused", "auto"])
    ap.add_argument("--this-engine", default="default",
                    choices=["default", "eager", "native", "fused", "auto"],
                    help="with --reference-src: this checkout's engine (default: its default)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"],
                    choices=["float32", "float64"], help="with --reference-src")
    ap.add_argument("--reference-src", default=None,
                    help="time alternating fresh processes of this src/ and the current one")
    args = ap.parse_args()
    if args.reference_src:
        return compare(args)
    gap, flat, myrtle = nets()
    ref = {(torch.float32, 64): 5.1, (torch.float32, 128): 20.8,
           (torch.float64, 64): 1.3, (torch.float64, 128): 5.4}
    best_ref = {n: min(ref[torch.float32, n], ref[torch.float64, n]) for n in (64, 128)}
    bandwidth = copy_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, copy bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s (best of 7)")
    print("| network | N | dtype | engine | nngp+ntk median (s) | min (s) | JAX reference, quoted "
          "(s) | speed-up of min vs reference (same dtype / best) | pair-tensor traffic (GB) | "
          "bandwidth-bound time (s) | bandwidth-bound / min | eager / this (medians) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    cases = [("gap", gap, n, (1, 8, 8)) for n in args.sizes]
    cases += [("flatten", flat, n, (1, 8, 8)) for n in args.sizes]
    if not args.skip_myrtle:
        cases += [("myrtle5", myrtle, 64, (3, 16, 16))]
    first, compile_cost = {}, {}
    for name, net, n, shape in cases:
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0)).to(dtype)
            run = lambda: net.kernel(x, dtype=dtype)  # noqa: B023, E731
            reps = 1 if name == "myrtle5" else args.repeats
            times = {e: [] for e in args.engines}
            for e in args.engines:                        # warm-up (compiles if fused)
                wn.set_engine(e)
                t0 = time.perf_counter()
                run()
                if e in ("fused", "native"):
                    first[name, dtype] = time.perf_counter() - t0
            for _ in range(reps):
                for e in args.engines:
                    wn.set_engine(e)
                    t0 = time.perf_counter()
                    run()
                    times[e].append(time.perf_counter() - t0)
            wn.set_engine("eager")
            item = torch.empty((), dtype=dtype).element_size()
            traffic = pair_tensor_bytes(run) * item
            bound = traffic / bandwidth
            r = ref.get((dtype, n)) if name == "gap" else None
            for e in args.engines:
                med, best = statistics.median(times[e]), min(times[e])
                if e in ("fused", "native") and (name, dtype) not in compile_cost:
                    compile_cost[name, dtype] = first[name, dtype] - med
                speed = f"{r / best:.1f}x / {best_ref[n] / best:.1f}x" if r else "-"
                med_s = f"{med:.3f}" if reps > 1 else f"{med:.3f} (1 run)"
                vs = statistics.median(times["eager"]) / med if "eager" in times else float("nan")
                print(f"| {name} | {n} | {str(dtype).replace('torch.', '')} | {e} | {med_s} | "
                      f"{best:.3f} | {r if r else '-'} | {speed} | {traffic / 1e9:.2f} | "
                      f"{bound:.3f} | {bound / best:.0%} | {vs:.2f} |", flush=True)
    if compile_cost:
        print("\nfused / native engine compile cost (first call minus median; units and the "
              "library are shared between networks, so later cases may show ~0):")
        for (name, dtype), c in compile_cost.items():
            print(f"  {name} {str(dtype).replace('torch.', '')}: {c:.1f} s")
    wn.set_engine("auto")


if __name__ == "__main__":
    main()
