"""Analytic NNGP + NTK of a depth-3 ReLU MLP (Dense 512 each) on (N, 784) inputs.

Prints medians of several runs after a warm-up and, measured in the same run, the bare Gram
matrix x @ x.T (the unavoidable first step), with the ratio between them.
Target (issue 2): N=4000 float32 under 0.8 s on the 2-core machine and at most 3x the Gram time.

    python benchmarks/analytic_fc.py [--sizes 1000 2000 4000] [--repeats 5]
"""

import argparse

import torch
from _timing import times_of  # noqa: E402  (benchmarks/_timing.py)

import widenets as wn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    net = wn.serial(wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                    wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                    wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                    wn.Dense(1, w_std=1.5, b_std=0.05))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| N | dtype | nngp+ntk (s) | x @ x.T (s) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for n in args.sizes:
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(n, 784, generator=torch.Generator().manual_seed(0)).to(dtype)
            t_k = times_of(lambda: net.kernel(x, dtype=dtype), args.repeats)[0]
            t_g = times_of(lambda: x @ x.T, args.repeats)[0]
            name = str(dtype).replace("torch.", "")
            print(f"| {n} | {name} | {t_k:.3f} | {t_g:.3f} | {t_k / t_g:.2f} |", flush=True)


if __name__ == "__main__":
    main()
