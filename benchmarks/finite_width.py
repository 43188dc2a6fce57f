"""Benchmark of wn.finite_width: K3 of a width-512 tanh MLP on n = 64 inputs, and the
truncated NTH (order 3) on n = 64 for 100 time points once K3 is known.

    PYTHONPATH=src python benchmarks/finite_width.py [--repeats 5] [--k3-repeats 1] [--depth 3]

Prints a markdown table (medians of --repeats runs; the full K3 timings are medians of
--k3-repeats runs, a single run by default). References measured in the same run: the
empirical NTK K2 of the same model and inputs (`empirical_ntk`), one batched HVP block (the cost
model: K3 needs n² per-example HVPs), and the order-2 (frozen NTK) solve. The peak memory of
the "auto" K3 is measured in a fresh process that runs only it (the HVP reference, measured in
this process first, would otherwise set the high-water mark).
Targets (issue 6): K3 under 60 s; truncated_nth(order=3) under 10 s after K3.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import torch

import widenets as wn
from widenets.finite_width import _core, hierarchy

fw = wn.finite_width


def _median_time(fn, repeats, warm=True):
    out = fn() if warm else None    # warm-up (first-call dispatch, allocator)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM; reset by exec, unlike ru_maxrss, which a
    subprocess inherits from the parent that forked it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _rss_mb()


def _auto_k3_rss_child(args) -> None:
    """Fresh process: build the same model and inputs, run only the "auto" K3, print the peak
    RSS (MB) before and after it."""
    model, x = _setup(args)
    fw.higher_order_kernel(model, x[:4], order=3)          # the warm-up the timing also does
    before = _hwm_mb()
    fw.higher_order_kernel(model, x, order=3)
    print(f"{before:.1f} {_hwm_mb():.1f}")


def _auto_k3_rss(argv) -> tuple[float, float]:
    out = subprocess.run([sys.executable, __file__, *argv, "--child-auto-rss"],
                         capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split()[-2:])
    return before, after


def _setup(args):
    dtype = getattr(torch, args.dtype)
    layers = []
    for _ in range(args.depth):
        layers += [wn.Dense(args.width, w_std=1.5, b_std=0.1), wn.Elementwise(torch.tanh)]
    net = wn.serial(*layers, wn.Dense(1, w_std=1.5, b_std=0.1))
    model = net.module((args.d,), seed=0, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d, generator=g, dtype=torch.float64).to(dtype)
    return model, x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5, help="runs of the cheap timings")
    ap.add_argument("--k3-repeats", type=int, default=1, help="runs of the full K3")
    ap.add_argument("--depth", type=int, default=3, help="hidden layers of width --width")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--d", type=int, default=16, help="input dimension")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--skip-hvp", action="store_true", help="skip the generic HVP K3")
    ap.add_argument("--child-auto-rss", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_auto_rss:
        _auto_k3_rss_child(args)
        return
    dtype = getattr(torch, args.dtype)
    model, x = _setup(args)
    y = torch.sin(x.sum(1)).double()
    params = _core.params_of(model)
    p = sum(v.numel() for v in params.values())
    n = args.n
    rss0 = _rss_mb()

    t_k2, _ = _median_time(lambda: _core.ntk(model, x), args.repeats)
    jx = _core.jacobian(model, params, x)
    chunk = hierarchy._batch_for(params, n, dtype, hierarchy._DEFAULT_BUDGET, n)

    def one_block():   # chunk directions x n rows of HVPs, no contraction
        from torch.func import jvp, vmap
        dirs = {k: v[:chunk] for k, v in jx.items()}
        return vmap(lambda v: jvp(lambda q: _core.jacobian(model, q, x), (params,), (v,))[1])(
            dirs)

    t_block, _ = _median_time(one_block, args.repeats)
    fw.higher_order_kernel(model, x[:4], order=3)          # warm-up on 4 points
    t_k3, k3 = _median_time(lambda: fw.higher_order_kernel(model, x, order=3), args.k3_repeats,
                            warm=False)                     # "auto" = the structured MLP path
    rss_auto_before, rss_auto = _auto_k3_rss(
        [f"--depth={args.depth}", f"--width={args.width}", f"--n={args.n}", f"--d={args.d}",
         f"--dtype={args.dtype}"])
    t_hvp = None
    if not args.skip_hvp:
        fw.higher_order_kernel(model, x[:4], order=3, implementation="hvp")
        t_hvp, k3_hvp = _median_time(
            lambda: fw.higher_order_kernel(model, x, order=3, implementation="hvp"),
            args.k3_repeats, warm=False)
        agree = float((k3_hvp - k3).norm() / k3.norm())
    rss_hvp = _rss_mb()
    with torch.no_grad():
        f0 = model(x).reshape(-1).double()
    k = fw.NTHKernels(f0=f0, k2=_core.ntk(model, x).double(), k3=k3.double(), k4=None,
                      f0_test=None, k2_test=None, k3_test=None, k4_test=None, order=3)
    times = torch.linspace(0, 50, 100)
    t_o2, _ = _median_time(lambda: fw.truncated_nth(None, y=y, order=2, times=times, kernels=k),
                           args.repeats)
    t_o3, res = _median_time(
        lambda: fw.truncated_nth(None, y=y, order=3, times=times, kernels=k), args.repeats)
    hvps = hierarchy.k3_hvp_count(n)
    n_blocks = -(-n // chunk)
    print(f"\nK3 / truncated NTH benchmark: {args.depth} hidden tanh layers of width "
          f"{args.width}, d = {args.d}, P = {p:,} parameters, n = {n}, {args.dtype}, "
          f"torch threads = {torch.get_num_threads()}, medians of {args.repeats} "
          f"({args.k3_repeats} for K3)\n")
    print("| quantity | value | reference / note |")
    print("| --- | --- | --- |")
    print(f"| K2 = empirical NTK (empirical_ntk), reference | {t_k2:.2f} s | |")
    print(f"| K3, implementation='auto' (structured MLP path), n³ = {n ** 3:,} entries | "
          f"{t_k3:.2f} s | {t_k3 / t_k2:.1f}x K2; target < 60 s; n = {n} forward-mode passes |")
    print(f"| peak RSS of a process running only the structured K3 | {rss_auto:.0f} MB | "
          f"{rss_auto - rss_auto_before:+.0f} MB over its set-up (model, inputs, imports) |")
    if t_hvp is not None:
        print(f"| K3, implementation='hvp' (any module) | {t_hvp:.2f} s | {t_hvp / t_k2:.1f}x K2; "
              f"relative difference to 'auto' {agree:.1e} |")
    print(f"| HVPs for the 'hvp' K3 (cost model n²) | {hvps:,} | {n_blocks} batched blocks of "
          f"{chunk}x{n} |")
    print(f"| one HVP block ({chunk}x{n} HVPs) | {t_block:.2f} s | x{n_blocks} blocks = "
          f"{t_block * n_blocks:.2f} s of HVPs; rest is the 2n³P contraction |")
    print(f"| HVP block memory (chunk x n x P) | "
          f"{2 * chunk * n * p * torch.finfo(dtype).bits / 8 / 2 ** 20:.0f} MB | budget 512 MB |")
    print(f"| peak RSS of this process after the 'hvp' K3 | {rss_hvp:.0f} MB | "
          f"{rss_hvp - rss0:+.0f} MB over start (includes the HVP block above) |")
    print(f"| truncated_nth order 2 (100 times), reference | {t_o2:.3f} s | |")
    print(f"| truncated_nth order 3 (100 times) | {t_o3:.3f} s | {res.n_evaluations} RHS "
          f"evaluations; target < 10 s |")


if __name__ == "__main__":
    main()
