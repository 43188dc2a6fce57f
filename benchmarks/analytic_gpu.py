"""Analytic kernels on a CUDA GPU: the eager engine with device-sized blocks against the
CPU-sized blocks it used before (measured in the same run), and against the bare Gram matrix.

On a GPU every elementwise operation is one kernel launch whatever its size, and there is no
cache to fit, so `net.kernel` cuts a GPU kernel into blocks as large as half the device's free
memory allows (`widenets._memory.memory_budget(device=)`), instead of the CPU's cache-sized
row blocks (2^18 entries) and 16 MiB full-layout blocks. The "CPU-sized blocks" column
reproduces the earlier policy in this process by patching the two block-size functions.

Cases: the depth-3 ReLU MLP of benchmarks/analytic_fc.py (Dense 512, N = 4000, d = 784, NNGP +
NTK) and the conv networks of benchmarks/analytic_conv.py (CNN-GAP on 8x8x1, N = 128;
Myrtle-5 on 3x16x16, N = 64), float32 and float64, medians of --repeats runs after a warm-up,
with torch.cuda.synchronize() around each.

    python benchmarks/analytic_gpu.py [--repeats 5] [--fused]

--fused adds the torch.compile engine (`wn.set_engine("fused")`, Triton kernels on CUDA): its
first call (compile included) and its median afterwards, in the same run.

Without CUDA it says so and exits.
"""

import argparse
import contextlib
import statistics
import sys
import time

import torch
from analytic_conv import nets  # noqa: E402  (benchmarks/analytic_conv.py)

import widenets as wn
from widenets.layers import _blocks, _schedule


def median_time(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def cpu_sized_blocks():
    """The block sizes used before the device-aware policy: the layer's cache-sized row blocks
    and the CPU's full-layout plan (its RAM budget and 16 MiB target)."""
    rows, plan = _schedule._block_entries, _blocks.full_layout_plan
    _schedule._block_entries = lambda layer, k0: layer.block_entries
    _blocks.full_layout_plan = lambda *a, device=None, **kw: plan(*a, **kw)
    try:
        yield
    finally:
        _schedule._block_entries, _blocks.full_layout_plan = rows, plan


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fused", action="store_true", help="also time the fused engine")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("analytic_gpu.py: needs a CUDA GPU; none here")
        return
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, eager engine on CUDA, "
          f"medians of {args.repeats} after a warm-up")
    fused_head = " fused first call (s) | fused (s) |" if args.fused else ""
    print("\n| network | N | dtype | device-sized blocks (s) | CPU-sized blocks (s) | speed-up "
          f"| bare Gram x x^T (s) | kernel / Gram |{fused_head}")
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if args.fused else ""))
    fc = wn.serial(*[lay for _ in range(3) for lay in (wn.Dense(512, w_std=1.5, b_std=0.05),
                                                       wn.Relu())], wn.Dense(1))
    gap, _, myrtle = nets()
    cases = [("FC depth 3", fc, 4000, (784,)), ("CNN-GAP", gap, 128, (1, 8, 8)),
             ("Myrtle-5", myrtle, 64, (3, 16, 16))]
    g = torch.Generator().manual_seed(0)
    for name, net, n, shape in cases:
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(n, *shape, generator=g).to(dev, dtype)
            run = lambda: net.kernel(x, dtype=dtype)  # noqa: E731
            new = median_time(run, args.repeats)
            with cpu_sized_blocks():
                old = median_time(run, args.repeats)
            flat = x.reshape(n, -1)
            gram = median_time(lambda: flat @ flat.T, args.repeats)
            fused = ""
            if args.fused:
                previous = wn.set_engine("fused")
                try:
                    t0 = time.perf_counter()
                    run()
                    torch.cuda.synchronize()
                    first = time.perf_counter() - t0
                    fused = f" {first:.2f} | {median_time(run, args.repeats):.4f} |"
                finally:
                    wn.set_engine(previous)
            print(f"| {name} | {n} | {str(dtype).replace('torch.', '')} | {new:.4f} | "
                  f"{old:.4f} | {old / new:.1f}x | {gram:.5f} | {new / gram:.0f} |{fused}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
