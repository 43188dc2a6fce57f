"""Kernel time of Elementwise: Hermite series (the default) against the 2-D quadrature alone.

Network: Dense(64, w_std=1.5, b_std=0.1) → Elementwise(φ) → Dense(64) → Elementwise(φ) →
Dense(1), NNGP and NTK, on N Gaussian inputs in 16 dimensions, float64, x2 = x1. Per φ and N:
`implementation="auto"` (series where its bound certifies the pair, quadrature elsewhere) and
`implementation="quadrature"` (the 2-D rule on every pair), median of --repeats runs (after a
warm-up for the series), and their largest difference relative to the largest entry. The
quadrature costs the same per pair at any N, so above --quadrature-max inputs it is not run:
its time is extrapolated from the largest N it ran at (× pairs ratio) and marked "(extrap.)".
Also: the closed form of the same network (Relu(), Erf()) where one exists, as a reference.

    python benchmarks/elementwise.py [--n 100 1000] [--repeats 3] [--quadrature-max 100]
"""

import argparse
import os
import statistics
import time

import torch

import widenets as wn

FUNCS = {"tanh": (torch.tanh, None), "erf": (torch.erf, wn.Erf), "relu": (torch.relu, wn.Relu)}


def _net(act):
    return wn.serial(wn.Dense(64, w_std=1.5, b_std=0.1), act(), wn.Dense(64, w_std=1.5, b_std=0.1),
                     act(), wn.Dense(1))


def _median(fn, repeats, warm_up=True):
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quadrature-max", type=int, default=100)
    ap.add_argument("--funcs", nargs="+", default=list(FUNCS), choices=list(FUNCS))
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{load:.1f} on {os.cpu_count()} cores, median of {args.repeats}")
    print("| φ | N | series (s) | quadrature (s) | quadrature / series | max diff | "
          "closed form (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.funcs:
        fn, closed = FUNCS[name]
        quad_at = None                                       # (N, seconds) of the last run
        for n in args.n:
            x = torch.randn(n, 16, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
            auto = _net(lambda: wn.Elementwise(fn))
            t_auto = _median(lambda: auto.kernel(x), args.repeats)
            k_auto = auto.kernel(x)
            diff = "-"
            if n <= args.quadrature_max:
                quad = _net(lambda: wn.Elementwise(fn, implementation="quadrature"))
                # no warm-up: a minute per run, nothing left to warm
                t_quad = _median(lambda: quad.kernel(x), args.repeats, warm_up=False)
                k_quad = quad.kernel(x)
                diff = max(float((a - b).abs().max() / b.abs().max())
                           for a, b in ((k_auto.nngp, k_quad.nngp), (k_auto.ntk, k_quad.ntk)))
                diff = f"{diff:.1e}"
                quad_at = (n, t_quad)
                q = f"{t_quad:.2f}"
            elif quad_at is not None:
                t_quad = quad_at[1] * (n / quad_at[0]) ** 2
                q = f"{t_quad:.0f} (extrap.)"
            else:
                t_quad, q = float("nan"), "-"
            c = "-"
            if closed is not None:
                ref = _net(closed)
                c = f"{_median(lambda: ref.kernel(x), args.repeats):.3f}"
            ratio = "-" if t_quad != t_quad else f"{t_quad / t_auto:.0f}x"     # NaN: not run
            print(f"| {name} | {n} | {t_auto:.2f} | {q} | {ratio} | {diff} | {c} |", flush=True)


if __name__ == "__main__":
    main()
