"""Kernel time of the catalogue activations relative to ReLU (issue 11).

Per activation: NNGP + NTK of a depth-3 MLP (Dense 512 + activation, three times, then
Dense(1)) on (N, d) inputs (d = 64 by default, so that the layer maps, not the input Gram
x xᵀ, dominate: with d = 784 the Gram takes most of the ReLU net's time and every ratio is
near 1), divided by the time of the same net with ReLU, both measured in
the same run, alternating (median of --repeats runs each after a warm-up). Target: every
closed form within 2x of ReLU. Hermite runs on unit-variance inputs (its requirement) with
σw = 1, σb = 0 throughout.

    python benchmarks/analytic_catalogue.py [--n 2000] [--d 64] [--repeats 5]
"""

import argparse
import statistics
import time

import torch

import widenets as wn

ACTS = {
    "Cos()": lambda: wn.Cos(), "Rbf(0.5)": lambda: wn.Rbf(0.5), "Gabor()": wn.Gabor,
    "Exp(0.5, 0.4)": lambda: wn.Exp(0.5, 0.4), "Gaussian()": wn.Gaussian,
    "ExpNormalized()": wn.ExpNormalized, "Sign()": wn.Sign, "SigmoidLike()": wn.SigmoidLike,
    "Polynomial([0.2, 1, 0.3, 0.1])": lambda: wn.Polynomial([0.2, 1.0, 0.3, 0.1]),
    "Monomial(3)": lambda: wn.Monomial(3), "Hermite(3)": lambda: wn.Hermite(3),
    "RectifiedMonomial(2)": lambda: wn.RectifiedMonomial(2),
    "RectifiedMonomial(3)": lambda: wn.RectifiedMonomial(3),
}


def _net(act, unit: bool):
    w, b = (1.0, 0.0) if unit else (1.2, 0.1)
    layers = []
    for _ in range(3):
        layers += [wn.Dense(512, w_std=w, b_std=b), act()]
    return wn.serial(*layers, wn.Dense(1, w_std=w, b_std=b))


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N = {args.n}, "
          f"d = {args.d}, "
          f"median of {args.repeats} (alternating with the ReLU net)")
    x = torch.randn(args.n, args.d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_unit = x / x.norm(dim=1, keepdim=True) * args.d ** 0.5    # K(x, x) = 1 after Dense(1, 0)
    print("| activation | float32 (s) | / ReLU | float64 (s) | / ReLU |")
    print("| --- | --- | --- | --- | --- |")
    for name, act in ACTS.items():
        unit = name.startswith("Hermite")
        net, relu = _net(act, unit), _net(wn.Relu, unit)
        xx = x_unit if unit else x
        row = [name]
        for dtype in (torch.float32, torch.float64):
            run_a = lambda: net.kernel(xx, dtype=dtype)         # noqa: E731
            run_r = lambda: relu.kernel(xx, dtype=dtype)        # noqa: E731
            run_a(), run_r()                                    # warm-up
            ta, tr = [], []
            for _ in range(args.repeats):
                ta.append(_time(run_a))
                tr.append(_time(run_r))
            t_a, t_r = statistics.median(ta), statistics.median(tr)
            row += [f"{t_a:.3f}", f"{t_a / t_r:.2f}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
