"""Benchmark: the gradient of the marginal likelihood against one kernel plus one Cholesky.

Depth-3 ReLU NNGP, n = 2000 inputs of dimension 64, float64, σw and σb tied (two tensor
hyperparameters) and the noise. Timed in this run (medians of --repeats after a warm-up):

* reference: `net.kernel(x, get="nngp")` with float hyperparameters, then one Cholesky of
  K + σ²I (what one evaluation of the evidence costs without gradients);
* value: `wn.predict.marginal_likelihood` with tensor hyperparameters (records the graph);
* value + gradient: the same plus `.backward()` (one gradient of the evidence).

Target (issue 19): value + gradient <= 3x the reference. Also one full
`fit_hyperparameters` (L-BFGS, --steps steps) wall time, a single run.

    python benchmarks/hyperparameters.py [--n 2000] [--repeats 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from _timing import times_of

import widenets as wn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 64, generator=g, dtype=torch.float64)
    y = torch.randn(args.n, 10, generator=g, dtype=torch.float64)
    net = wn.serial(*[lay for _ in range(3) for lay in (wn.Dense(512, w_std=1.4, b_std=0.1),
                                                          wn.Relu())], wn.Dense(1))
    noise = 0.1
    eye = torch.eye(args.n, dtype=torch.float64)

    def reference():
        k = net.kernel(x, get="nngp")
        return torch.linalg.cholesky(k + noise * eye)

    def tensors():
        w = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
        s = torch.tensor(noise, dtype=torch.float64, requires_grad=True)
        return net.with_hyperparameters({"*.w_std": w, "*.b_std": b}), s, (w, b, s)

    def value():
        n2, s, _ = tensors()
        return wn.predict.marginal_likelihood(n2, x, y, kernel="nngp", noise=s)

    def value_and_grad():
        n2, s, leaves = tensors()
        wn.predict.marginal_likelihood(n2, x, y, kernel="nngp", noise=s).backward()
        return [p.grad for p in leaves]

    ref, _ = times_of(reference, args.repeats)
    val, _ = times_of(value, args.repeats)
    grad, _ = times_of(value_and_grad, args.repeats)
    print(f"n = {args.n}, depth-3 ReLU NNGP, float64, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats}")
    print("| what | seconds | / reference |")
    print("|---|---|---|")
    for name, t in (("kernel + Cholesky (reference)", ref), ("marginal likelihood", val),
                    ("marginal likelihood + gradient", grad)):
        print(f"| {name} | {t:.3f} | {t / ref:.2f} |")
    t0 = time.perf_counter()
    fit = wn.predict.fit_hyperparameters(net, x, y, kernel="nngp", tied=True, noise=noise,
                                         steps=args.steps)
    total = time.perf_counter() - t0
    print(f"fit_hyperparameters, L-BFGS {args.steps} steps: {total:.1f} s (single run), "
          f"evidence {fit.record[0]['objective']:.1f} -> {fit.objective:.1f}")


if __name__ == "__main__":
    main()
