"""Analytic NNGP + NTK of a depth-3 ReLU MLP (Dense 512 each) on (N, 784) inputs, per engine.

Prints medians of several runs after a warm-up and, measured in the same run, the bare Gram
matrix x @ x.T (the unavoidable first step), with the ratios between them, for the eager and
the fused engine (`wn.set_engine`, docs/guide/kernels.md §engine). The fused engine's compile
cost is reported separately: the first fused call of a (dtype) minus its median (units compile
once per process; Inductor's on-disk cache makes later processes cheaper, so run once with a
cold cache, e.g. TORCHINDUCTOR_CACHE_DIR=$(mktemp -d), to see the cold cost).
Targets (issues 2 and 14): N = 4000 float32 at most 3x the Gram time (eager) and at most
1.5x (fused, float32 and float64).

    python benchmarks/analytic_fc.py [--sizes 1000 2000 4000] [--repeats 5]
        [--engines eager fused]
"""

import argparse
import statistics
import time

import torch

import widenets as wn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engines", nargs="+", default=["eager", "fused"],
                    choices=["eager", "fused", "auto"])
    args = ap.parse_args()
    net = wn.serial(wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                    wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                    wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                    wn.Dense(1, w_std=1.5, b_std=0.05))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    first, compile_cost = {}, {}
    rows = []
    for n in args.sizes:
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(n, 784, generator=torch.Generator().manual_seed(0)).to(dtype)
            run = lambda: net.kernel(x, dtype=dtype)  # noqa: B023, E731
            for eng in args.engines:
                wn.set_engine(eng)
                t0 = time.perf_counter()
                run()                                          # warm-up (compiles if fused)
                if eng == "fused" and dtype not in first:
                    first[dtype] = time.perf_counter() - t0
            # alternate the engines and the Gram in one loop: same machine load for each
            times = {name: [] for name in ("gram", *args.engines)}
            for _ in range(args.repeats):
                for name in times:
                    if name == "gram":
                        t0 = time.perf_counter()
                        x @ x.T
                    else:
                        wn.set_engine(name)
                        t0 = time.perf_counter()
                        run()
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            if dtype in first and dtype not in compile_cost:
                compile_cost[dtype] = first[dtype] - med["fused"]
            rows.append((n, dtype, med))
            cells = " | ".join(f"{med[e]:.3f} ({med[e] / med['gram']:.2f}x)"
                               for e in args.engines)
            name = str(dtype).replace("torch.", "")
            extra = f" | {med['eager'] / med['fused']:.2f}" if {"eager", "fused"} <= set(med) \
                else ""
            if len(rows) == 1:
                heads = " | ".join(f"{e} (s, x Gram)" for e in args.engines)
                speed = " | eager / fused" if extra else ""
                print(f"| N | dtype | x @ x.T (s) | {heads}{speed} |")
                print("|" + " --- |" * (3 + len(args.engines) + bool(extra)))
            print(f"| {n} | {name} | {med['gram']:.3f} | {cells}{extra} |", flush=True)
    if compile_cost:
        print("\nfused engine compile cost (first call minus median, once per process):")
        for dtype, c in compile_cost.items():
            print(f"  {str(dtype).replace('torch.', '')}: {c:.1f} s")
    wn.set_engine("auto")


if __name__ == "__main__":
    main()
