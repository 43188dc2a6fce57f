"""Benchmark: where lee-fig1's full-batch GD spends its time, per step, on 128 digits.

    python benchmarks/lee_fig1_gd.py                  # widths 64, 256, 1024; 5 repeats
    python benchmarks/lee_fig1_gd.py --widths 64 128 --repeats 7

lee-fig1 trains 3 hidden-layer ReLU nets (64 inputs, 10 outputs, float64) of every width for
every seed. Per GD step and width, for 3 seeds, this prints the CPU time (process time, so
other jobs on a shared machine inflate it less than wall time; median over --repeats rounds,
the implementations run round-robin) of:

* "autograd x3": the previous loop, one autograd GD step per seed (`loss.backward` on the
  module, in-place update);
* "stacked": `StackedMLP`, the 3 seeds' weights stacked, the backward pass written out;
* "floor": the six (or, at the input and output layers, smaller) matrix products one step must
  do, as bare batched matmuls on random tensors of the same shapes, nothing else;

and the ratios autograd/stacked and stacked/floor. One thread (torch.set_num_threads(1)).
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from widenets.data import load_digits
from widenets.experiments.common import fc_net
from widenets.experiments.stacked_mlp import StackedMLP


def _autograd_steps(models, x, y, steps):
    for m in models:
        params = list(m.parameters())
        for _ in range(steps):
            loss = 0.5 * ((m(x) - y) ** 2).sum(1).mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.sub_(1e-3 * g)


def _floor(width, seeds, n, d, k):
    """The matrix products of one step (forward, weight gradients, input gradients)."""
    dims = [d, width, width, width, k]
    hs = [torch.randn(seeds, n, a, dtype=torch.float64) for a in dims]
    ws = [torch.randn(seeds, b, a, dtype=torch.float64) for a, b in zip(dims, dims[1:])]

    def run(steps):
        for _ in range(steps):
            for i, w in enumerate(ws):
                torch.matmul(hs[i], w.mT)                   # forward
                torch.matmul(hs[i + 1].mT, hs[i])           # weight gradient
                if i > 0:
                    torch.matmul(hs[i + 1], w)              # input gradient
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = load_digits(n_train=128, n_test=10, seed=0)
    x, y = ds.x_train, ds.y_train
    seeds = (0, 1, 2)
    print("CPU ms per GD step of 3 seeds (median of "
          f"{args.repeats}), 128 digits, float64, 1 thread\n")
    print("| width | autograd x3 | stacked | floor | autograd / stacked | stacked / floor |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for width in args.widths:
        steps = max(2, int(4e5 / width ** 2))
        models = [fc_net(width, 3, out=10, b_std=0.1 ** 0.5).module((64,), seed=s,
                                                                    dtype=torch.float64)
                  for s in seeds]
        stack = StackedMLP(models)
        floor = _floor(width, len(seeds), x.shape[0], x.shape[1], y.shape[1])
        runs = {"autograd": lambda: _autograd_steps(models, x, y, steps),
                "stacked": lambda: [stack.step(x, y, learning_rate=1e-3) for _ in range(steps)],
                "floor": lambda: floor(steps)}
        times = {k: [] for k in runs}
        for f in runs.values():
            f()                                              # warm-up
        for _ in range(args.repeats):
            for k, f in runs.items():
                t0 = time.process_time()
                f()
                times[k].append((time.process_time() - t0) / steps * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {width} | {med['autograd']:.2f} | {med['stacked']:.2f} | {med['floor']:.2f} | "
              f"{med['autograd'] / med['stacked']:.2f} | {med['stacked'] / med['floor']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
