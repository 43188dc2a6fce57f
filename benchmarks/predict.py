"""Benchmark: closed-form MSE predictions at many times cost about as much as at one time.

n_train = 2000 training points, 10 outputs, 1000 test points; the analytic NTK of a ReLU
network is computed first and excluded from every timing ("after the kernel is known").
Timed (medians of --repeats runs after one untimed warm-up run, all in this run):

* decomposition: `wn.predict.gradient_descent_mse(...)` (one eigendecomposition of Θ);
* per call: `predict(t, fx_train_0, fx_test_0, k_test_train)`, train and test outputs, at one
  time and at 100 times;
* reference: the same prediction at one time done directly, with torch.linalg.matrix_exp and a
  linear solve (what one writes without the eigendecomposition); it scales with the number of
  times, so 100 times cost 100x that.

Target (issue 4): decomposition + 100-time call <= 1.5 x decomposition + 1-time call.

    python benchmarks/predict.py [--n-train 2000] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import widenets as wn


def _timed(fn, repeats: int, sync) -> tuple[float, object]:
    out = fn()      # warm-up: first-call dispatch, allocator, BLAS thread start
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--outputs", type=int, default=10)
    parser.add_argument("--times", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    g = torch.Generator().manual_seed(0)
    d = 32
    x = torch.randn(args.n_train + args.n_test, d, generator=g, dtype=torch.float64)
    y = torch.randn(args.n_train, args.outputs, generator=g, dtype=torch.float64)
    net = wn.serial(wn.Dense(512, w_std=1.5, b_std=0.1), wn.Relu(),
                    wn.Dense(512, w_std=1.5, b_std=0.1), wn.Relu(),
                    wn.Dense(1, w_std=1.5, b_std=0.1))
    t0 = time.perf_counter()
    k_train = net.kernel(x[:args.n_train], get="ntk").to(device)
    k_test_train = net.kernel(x[args.n_train:], x[:args.n_train], get="ntk").to(device)
    t_kernel = time.perf_counter() - t0
    y = y.to(device)
    eta = 0.5 * wn.predict.max_learning_rate(k_train)
    one = 10.0
    many = torch.logspace(-1, 4, args.times, dtype=torch.float64)

    t_dec, predict = _timed(lambda: wn.predict.gradient_descent_mse(k_train, y,
                                                                     learning_rate=eta),
                            args.repeats, sync)
    t_one, out_one = _timed(lambda: predict(one, 0.0, 0.0, k_test_train), args.repeats, sync)
    t_many, out_many = _timed(lambda: predict(many, 0.0, 0.0, k_test_train), args.repeats, sync)

    def direct():
        decay = torch.linalg.matrix_exp(-eta * one * k_train)
        train = y - decay @ y                                        # eq. 9, f_0 = 0
        test = k_test_train @ torch.linalg.solve(k_train, train)     # eqs. 10-11
        return train, test

    t_ref, (ref_train, ref_test) = _timed(direct, args.repeats, sync)
    err = max(float((out_one[0] - ref_train).abs().max()),
              float((out_one[1] - ref_test).abs().max()))
    scale = float(ref_test.abs().max())

    rows = [
        ("kernel (excluded)", t_kernel, ""),
        ("decomposition (eigh, once)", t_dec, ""),
        ("call, 1 time", t_one, ""),
        (f"call, {args.times} times", t_many, f"{t_many / t_one:.1f}x the 1-time call"),
        ("decomposition + 1 time", t_dec + t_one, ""),
        (f"decomposition + {args.times} times", t_dec + t_many,
         f"**{(t_dec + t_many) / (t_dec + t_one):.2f}x** (target <= 1.5x)"),
        ("reference: matrix_exp + solve, 1 time", t_ref,
         f"{args.times} times: ~{args.times * t_ref:.1f} s (extrapolated, not run)"),
    ]
    print(f"n_train={args.n_train}, n_test={args.n_test}, outputs={args.outputs}, "
          f"device={device}, torch threads={torch.get_num_threads()}, medians of "
          f"{args.repeats} after a warm-up; max |widenets - reference| = {err:.2e} "
          f"(outputs up to {scale:.2g})")
    print()
    print("| step | time (s) | note |")
    print("| --- | ---: | --- |")
    for name, t, note in rows:
        print(f"| {name} | {t:.4f} | {note} |")


if __name__ == "__main__":
    main()
