"""Steadiness on a shared machine (issue 14): the analytic kernel next to other jobs.

Depth-3 ReLU MLP (Dense 512), NNGP + NTK, N inputs of dimension 784, float32, torch's default
threads. Every number is a median of several timed runs after a warm-up, and every reference
is measured in the same run:

1. idle: `net.kernel` and the bare Gram matrix `x @ x.T`;
2. busy: the same while a second torch process (started here) multiplies matrices in a loop;
   the kernel's slowdown is compared with the Gram's (target: at most 1.5x the Gram's);
3. two widenets kernel jobs at once (two processes started here, synchronized after their
   warm-up), with default threads against the one-thread configuration
   (`torch.set_num_threads(1)` in both jobs; target: each at most 1.2x that).

Each row is measured for three schedulers: "blocks" (the default: the kernel's row blocks on
one-thread workers, `widenets._parallel`, as many as the cores that other work leaves free at
the call); "blocks, all threads" (the same with the load ignored: torch's thread count of
workers); and "per-op" (the blocks in one thread, each elementwise operation split over
torch's OpenMP threads: the behaviour before issue 14, reproduced with `threads_limit(1)`).

    python benchmarks/contention.py [--n 4000] [--repeats 5] [--dtype float32]
                                    [--schedulers blocks "blocks, all threads" per-op]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from _timing import times_of  # noqa: E402  (benchmarks/_timing.py)

import widenets as wn
import widenets._parallel as parallel
from widenets._parallel import threads_limit

HERE = Path(__file__).resolve()


def _net():
    return wn.serial(wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                     wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                     wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                     wn.Dense(1, w_std=1.5, b_std=0.05))


def _inputs(n: int, dtype) -> torch.Tensor:
    return torch.randn(n, 784, generator=torch.Generator().manual_seed(0)).to(dtype)


SCHEDULERS = ("blocks", "blocks, all threads", "per-op")


def _kernel_fn(net, x, dtype, scheduler: str):
    if scheduler == "blocks":
        return lambda: net.kernel(x, dtype=dtype)
    if scheduler == "blocks, all threads":
        def all_threads():
            real = parallel.others_running
            parallel.others_running = lambda: 0
            try:
                return net.kernel(x, dtype=dtype)
            finally:
                parallel.others_running = real
        return all_threads

    def per_op():
        with threads_limit(1):
            return net.kernel(x, dtype=dtype)
    return per_op


# ------------------------------------------------------------------------------ child jobs
def _job(args) -> None:
    """A kernel job in its own process: warm up, say 'ready', wait for 'go', time, print."""
    if args.job_threads:
        torch.set_num_threads(args.job_threads)
    dtype = getattr(torch, args.dtype)
    fn = _kernel_fn(_net(), _inputs(args.n, dtype), dtype, args.job)
    fn()
    print("ready", flush=True)
    sys.stdin.readline()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)


def _load() -> None:
    """The second torch job: matrix products in a loop, torch's default threads."""
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    print("ready", flush=True)
    while True:
        a @ b


def _spawn(*extra: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, str(HERE), *extra], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        raise RuntimeError(f"contention: a child job failed to start ({line!r})")
    return p


def _two_jobs(args, scheduler: str, threads: int | None) -> list[float]:
    """Medians of two simultaneous kernel jobs."""
    extra = ["--job", scheduler, "--n", str(args.n), "--repeats", str(args.repeats),
             "--dtype", args.dtype]
    if threads:
        extra += ["--job-threads", str(threads)]
    jobs = [_spawn(*extra) for _ in range(2)]
    for p in jobs:
        p.stdin.write("go\n")
        p.stdin.flush()
    medians = []
    for p in jobs:
        times = sorted(json.loads(p.stdout.readline()))
        p.wait()
        medians.append(times[len(times) // 2])
    return medians


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS,
                    help="which schedulers to time (default all; 'per-op' is the slow one on "
                         "a busy machine)")
    ap.add_argument("--job", default=None, choices=SCHEDULERS, help=argparse.SUPPRESS)
    ap.add_argument("--job-threads", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        return _load()
    if args.job:
        return _job(args)

    dtype = getattr(torch, args.dtype)
    net, x = _net(), _inputs(args.n, dtype)
    fns = {s: _kernel_fn(net, x, dtype, s) for s in args.schedulers}
    gram = lambda: x @ x.T  # noqa: E731
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N = {args.n}, "
          f"{args.dtype}, medians of {args.repeats} runs after a warm-up; /proc/loadavg at "
          f"the start: {_loadavg()}")
    print("\n| situation | scheduler | `net.kernel` (s) | Gram `x @ x.T` (s) | kernel / Gram |")
    print("| --- | --- | --- | --- | --- |", flush=True)
    times = {}
    for name in ("machine otherwise idle", "a second torch job running"):
        load = _spawn("--load") if name.startswith("a second") else None
        try:
            t = times[name] = {"gram": times_of(gram, args.repeats)[0]}
            for s, f in fns.items():
                t[s] = times_of(f, args.repeats)[0]
                print(f"| {name} | {s} | {t[s]:.3f} | {t['gram']:.3f} | "
                      f"{t[s] / t['gram']:.2f} |", flush=True)
        finally:
            if load is not None:
                load.kill()
                load.wait()
    idle, busy = times.values()
    g = busy["gram"] / idle["gram"]
    print(f"\nslowdown under the second job: Gram x{g:.2f}; " + "; ".join(
        f"kernel ({s}) x{busy[s] / idle[s]:.2f} = {busy[s] / idle[s] / g:.2f}x the Gram's"
        for s in fns) + " (target <= 1.5x)")

    one = _two_jobs(args, "blocks", 1)
    print("\n| two widenets jobs at once | job 1 (s) | job 2 (s) | / one-thread config |")
    print("| --- | --- | --- | --- |")
    print(f"| one thread each (`torch.set_num_threads(1)`) | {one[0]:.3f} | {one[1]:.3f} | "
          f"1.00 |", flush=True)
    ref = max(one)
    for s in fns:
        t = _two_jobs(args, s, None)
        print(f"| default threads, {s} | {t[0]:.3f} | {t[1]:.3f} | {max(t) / ref:.2f} "
              f"(target <= 1.2) |", flush=True)
    print(f"\n/proc/loadavg at the end: {_loadavg()}")


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"

if __name__ == "__main__":
    main()
