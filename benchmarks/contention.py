"""Steadiness on a shared machine (issue 14): the analytic kernel next to other jobs.

Depth-3 ReLU MLP (Dense 512), NNGP + NTK, N inputs of dimension 784, float32, torch's default
threads. Every number is a median over several rounds after a warm-up, and every reference is
measured in the same rounds (interleaved, so that a change of the machine's load during the
run affects all columns alike):

1. idle and busy: `net.kernel` and the bare Gram matrix `x @ x.T`, each round once with the
   machine otherwise idle and once while a second torch process (started here) multiplies
   1024 x 1024 matrices in a loop (it is paused with SIGSTOP for the idle half of each round).
   Target: the kernel's slowdown at most 1.5x the Gram's.
2. two widenets kernel jobs at once (two processes started here; each round starts both
   together): default threads against the one-thread configuration
   (`torch.set_num_threads(1)` in both jobs). Target: each at most 1.2x that.

Configurations: "native" (the default engine: the network as one compiled pass per strip of
rows, strips on torch's thread count of one-thread workers), "blocks" (the eager engine: the
kernel's row blocks on those workers, `widenets._parallel`) and "per-op" (eager, the blocks
in one thread, each elementwise operation split over torch's OpenMP threads: the behaviour
before issue 14, reproduced by replacing the scheduler's `run_in_order` with a plain loop).
The one-thread reference of the two-job table is taken with the same engine.

    python benchmarks/contention.py [--n 4000] [--repeats 5] [--dtype float32]
                                    [--schedulers native blocks per-op]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import widenets as wn
import widenets._parallel as parallel
import widenets.layers._schedule as schedule

HERE = Path(__file__).resolve()
SCHEDULERS = ("native", "blocks", "per-op")
ONE_THREAD = "one thread"
#: the engine of each configuration; one-thread references: "one thread <engine>"
ENGINE = {"native": "native", "blocks": "eager", "per-op": "eager"}


def _net():
    return wn.serial(wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                     wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                     wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu(),
                     wn.Dense(1, w_std=1.5, b_std=0.05))


def _inputs(n: int, dtype) -> torch.Tensor:
    return torch.randn(n, 784, generator=torch.Generator().manual_seed(0)).to(dtype)


def _kernel_fn(net, x, dtype, scheduler: str):
    engine = ENGINE.get(scheduler, scheduler.split()[-1])

    def run():
        wn.set_engine(engine)
        if scheduler in ("blocks", "native"):
            return net.kernel(x, dtype=dtype)
        if scheduler.startswith(ONE_THREAD):
            with parallel.torch_threads(1):
                return net.kernel(x, dtype=dtype)
        real = schedule.run_in_order              # per-op: a plain loop, torch's threads
        schedule.run_in_order = _plain_loop
        try:
            return net.kernel(x, dtype=dtype)
        finally:
            schedule.run_in_order = real
    return run


def _one_thread(schedulers) -> list:
    """The one-thread references of these configurations (one per engine)."""
    return [f"{ONE_THREAD} {e}" for e in dict.fromkeys(ENGINE[s] for s in schedulers)]


def _plain_loop(fn, items, consume, *, threads):
    for i, item in enumerate(items):
        consume(i, fn(item))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ child jobs
def _job(args) -> None:
    """A kernel job in its own process: warm up every scheduler, say 'ready', then run the
    one named on each line of stdin and print its time."""
    dtype = getattr(torch, args.dtype)
    net, x = _net(), _inputs(args.n, dtype)
    fns = {s: _kernel_fn(net, x, dtype, s) for s in (*_one_thread(args.schedulers),
                                                      *args.schedulers)}
    for f in fns.values():
        f()
    print("ready", flush=True)
    for line in sys.stdin:
        print(_timed(fns[line.strip()]), flush=True)


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


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS,
                    help="which schedulers to time (default all; 'per-op' is the slow one on "
                         "a busy machine)")
    ap.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        return _load()
    if args.job:
        return _job(args)

    dtype = getattr(torch, args.dtype)
    net, x = _net(), _inputs(args.n, dtype)
    fns = {"gram": lambda: x @ x.T}
    fns.update({s: _kernel_fn(net, x, dtype, s) for s in args.schedulers})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N = {args.n}, "
          f"{args.dtype}, medians of {args.repeats} interleaved rounds after a warm-up; "
          f"/proc/loadavg at the start: {_loadavg()}", flush=True)

    # 1. idle / busy, interleaved: the load process is paused for the idle half of each round
    load = _spawn("--load")
    times = {w: {k: [] for k in fns} for w in ("idle", "busy")}
    try:
        os.kill(load.pid, signal.SIGSTOP)
        for f in fns.values():
            f()
        for _ in range(args.repeats):
            for when in ("idle", "busy"):
                os.kill(load.pid, signal.SIGSTOP if when == "idle" else signal.SIGCONT)
                time.sleep(0.3)
                for k, f in fns.items():
                    times[when][k].append(_timed(f))
    finally:
        load.kill()
        load.wait()
    med = {w: {k: statistics.median(v) for k, v in t.items()} for w, t in times.items()}
    print("\n| situation | scheduler | `net.kernel` (s) | Gram `x @ x.T` (s) | kernel / Gram |")
    print("| --- | --- | --- | --- | --- |")
    for when, name in (("idle", "machine otherwise idle"),
                       ("busy", "a second torch job running")):
        t = med[when]
        for s in args.schedulers:
            print(f"| {name} | {s} | {t[s]:.3f} | {t['gram']:.3f} | {t[s] / t['gram']:.2f} |")
    g = med["busy"]["gram"] / med["idle"]["gram"]
    print(f"\nslowdown under the second job: Gram x{g:.2f}; " + "; ".join(
        f"kernel ({s}) x{med['busy'][s] / med['idle'][s]:.2f} = "
        f"{med['busy'][s] / med['idle'][s] / g:.2f}x the Gram's" for s in args.schedulers)
        + " (target <= 1.5x)", flush=True)

    # 2. two jobs at once, every round both jobs start each configuration together
    extra = ["--job", "--n", str(args.n), "--dtype", args.dtype, "--schedulers",
             *args.schedulers]
    jobs = [_spawn(*extra) for _ in range(2)]
    configs = (*_one_thread(args.schedulers), *args.schedulers)
    pair = {c: [[], []] for c in configs}
    try:
        for _ in range(args.repeats):
            for c in configs:
                for p in jobs:
                    p.stdin.write(c + "\n")
                    p.stdin.flush()
                for i, p in enumerate(jobs):
                    pair[c][i].append(float(p.stdout.readline()))
    finally:
        for p in jobs:
            p.stdin.close()
            p.wait()
    meds = {c: [statistics.median(v) for v in pair[c]] for c in configs}
    print("\n| two widenets jobs at once | job 1 (s) | job 2 (s) | slower job / one-thread "
          "config of the same engine |")
    print("| --- | --- | --- | --- |")
    for c in configs:
        one = c if c.startswith(ONE_THREAD) else f"{ONE_THREAD} {ENGINE[c]}"
        ref = max(meds[one])
        label = f"one thread each (`torch.set_num_threads(1)`), {c.split()[-1]}" \
            if c.startswith(ONE_THREAD) else f"default threads, {c}"
        print(f"| {label} | {meds[c][0]:.3f} | {meds[c][1]:.3f} | {max(meds[c]) / ref:.2f} |")
    print("(target <= 1.2)")
    print(f"\n/proc/loadavg at the end: {_loadavg()}")


if __name__ == "__main__":
    main()
