"""Analytic NNGP + NTK of a depth-3 ReLU MLP (Dense 512 each) on (N, 784) inputs, per engine.

Prints medians of several runs after a warm-up and, measured in the same run, the bare Gram
matrix x @ x.T (the unavoidable first step), with the ratios between them, for the engines
asked for (`wn.set_engine`, docs/guide/kernels.md §engine). Engines that build or compile
code report that cost separately: the first call minus the median (the native engine builds
once per machine and caches the library on disk, so run once with an empty
WIDENETS_CACHE_DIR to see its build; the fused engine's units compile once per process, with
Inductor's on-disk cache, e.g. TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) for the cold cost).

--against PATH also times another checkout of widenets (its src/ directory, e.g. the main
branch before a change) in a worker process, alternating with this one's calls in every
round (same machine load), with that checkout's default engine or --against-engine.
Targets (issue 14): N = 4000 at most 1.5x the Gram time, float32 and float64.

    python benchmarks/analytic_fc.py [--sizes 1000 2000 4000] [--repeats 5]
        [--engines eager native] [--dtypes float32 float64] [--against /path/to/checkout]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

import widenets as wn


def _net():
    return wn.serial(wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                     wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                     wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                     wn.Dense(1, w_std=1.5, b_std=0.05))


def _inputs(n, dtype):
    return torch.randn(n, 784, generator=torch.Generator().manual_seed(0)).to(dtype)


def _worker():
    """Worker mode (--worker): for each line 'n dtype engine' of stdin, time one kernel call
    (after a warm-up the first time a configuration is seen) and print the seconds."""
    net, seen = _net(), set()
    print("ready", flush=True)
    for line in sys.stdin:
        n, dtype, engine = line.split()
        dtype = getattr(torch, dtype)
        x = _inputs(int(n), dtype)
        if engine != "default":
            wn.set_engine(engine)
        if (n, dtype, engine) not in seen:
            net.kernel(x, dtype=dtype)
            seen.add((n, dtype, engine))
        t0 = time.perf_counter()
        net.kernel(x, dtype=dtype)
        print(time.perf_counter() - t0, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engines", nargs="+", default=["eager", "native"],
                    choices=["eager", "native", "fused", "auto"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"],
                    choices=["float32", "float64"])
    ap.add_argument("--against", default=None,
                    help="another widenets checkout to time alternately (its src/ is used)")
    ap.add_argument("--against-engine", default="default")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker()
    net = _net()
    other = None
    if args.against:
        env = dict(os.environ, PYTHONPATH=os.path.join(args.against, "src"))
        other = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env)
        assert other.stdout.readline().strip() == "ready"
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, loadavg {load}, "
          f"medians of {args.repeats} interleaved rounds after a warm-up")
    first, build_cost = {}, {}
    names = [*args.engines] + (["against"] if other else [])
    print("| N | dtype | x @ x.T (s) | " + " | ".join(f"{e} (s, x Gram)" for e in names) + " |")
    print("|" + " --- |" * (3 + len(names)))
    for n in args.sizes:
        for dname in args.dtypes:
            dtype = getattr(torch, dname)
            x = _inputs(n, dtype)
            run = lambda: net.kernel(x, dtype=dtype)  # noqa: B023, E731

            def ask():
                other.stdin.write(f"{n} {dname} {args.against_engine}\n")  # noqa: B023
                other.stdin.flush()
                return float(other.stdout.readline())

            for eng in args.engines:
                wn.set_engine(eng)
                t0 = time.perf_counter()
                run()                                          # warm-up (builds, compiles)
                if (eng, dtype) not in first:
                    first[eng, dtype] = time.perf_counter() - t0
            if other:
                ask()                                          # its warm-up
            # alternate the engines and the Gram in one loop: same machine load for each
            times = {name: [] for name in ("gram", *names)}
            for _ in range(args.repeats):
                for name in times:
                    if name == "against":
                        times[name].append(ask())
                        continue
                    if name == "gram":
                        t0 = time.perf_counter()
                        x @ x.T
                    else:
                        wn.set_engine(name)
                        t0 = time.perf_counter()
                        run()
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            for eng in args.engines:
                if (eng, dtype) in first and (eng, dtype) not in build_cost:
                    build_cost[eng, dtype] = first[eng, dtype] - med[eng]
            cells = " | ".join(f"{med[e]:.3f} ({med[e] / med['gram']:.2f}x)" for e in names)
            print(f"| {n} | {dname} | {med['gram']:.3f} | {cells} |", flush=True)
    if other:
        other.stdin.close()
        other.wait()
    print("\nfirst call minus median (build/compile cost, once per process or machine):")
    for (eng, dtype), c in build_cost.items():
        print(f"  {eng} {str(dtype).replace('torch.', '')}: {c:.2f} s")
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
    print(f"loadavg at the end {load}")


if __name__ == "__main__":
    main()
