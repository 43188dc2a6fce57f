"""Benchmark: kernels larger than memory with `wn.tiles` (issue 8). Not a test.

Measures, for a depth-3 ReLU net's NTK in float32 (inputs of dimension 784):

1. throughput: `wn.tiles.compute` on N_THROUGHPUT inputs against computing the same kernel in
   memory in one go (`net.kernel(x, get="ntk")`), as kernel entries per second (the tiled run
   computes only the upper triangle of tiles, so entries it computed / its time), medians of
   REPEATS runs each after one untimed warm-up of each, both measured in this run;
2. the big run (N inputs, N^2 * 4 bytes): in a subprocess killed with SIGKILL after a fraction
   of the tiles, then resumed in a new subprocess; peak resident memory of those processes
   (VmHWM from /proc, Linux), the resume's time and missing tiles, and the fixed cost of
   resuming (rerunning on the finished store: fingerprinting the inputs, reading records).
   These are single runs.

A target is reported met only when the unrounded measurement meets it (a ratio of 0.797 is
printed as 0.797x and "not met" against >= 0.8x).

3. the cost of the CRC-32 check every read makes (issue 17): `load_kernel` of a store of
   N_CRC inputs with check=True against check=False, and a resume of the finished store with
   check_existing=True (every tile re-read and CRC-checked) against check_existing=False,
   medians of REPEATS alternating runs (the store is in the page cache: the worst case for the
   relative overhead, since the read itself is then cheapest).

Targets (issue 8): peak RSS < 2 GB at N = 50,000; throughput >= 0.8x in memory at 8,000 inputs;
resume < 10 s plus the missing tiles.

    python benchmarks/tiles.py                                    # the full run (long)
    python benchmarks/tiles.py --n 12000 --n-throughput 4000      # a scaled run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SPEC = "[dense(512, w_std=1.5, b_std=0.05) relu]*3 dense(1, w_std=1.5, b_std=0.05)"


def _net():
    from widenets.tiles.spec import parse_spec

    return parse_spec(SPEC)


def _inputs(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float32)


# ---------------------------------------------------------------------------- child process
def child(args) -> None:
    """Compute the big store (resuming if present) and print a JSON summary."""
    import widenets as wn

    t0 = time.perf_counter()
    x = _inputs(args.n, args.dim)
    run = wn.tiles.compute(_net(), x, store=args.store, batch_size=args.tile, get="ntk",
                           dtype=torch.float32, threads=args.threads)
    print(json.dumps({"computed": run.tiles_computed, "skipped": run.tiles_skipped,
                      "total": run.tiles_total, "compute_s": run.seconds,
                      "process_s": time.perf_counter() - t0, "peak_rss": _hwm("self")}),
          flush=True)


def _spawn(args, store: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", "--store", str(store), "--n", str(args.n),
           "--dim", str(args.dim), "--tile", str(args.tile), "--threads", str(args.threads)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())


def _hwm(pid) -> int:
    """Peak resident memory (VmHWM) of a process since its exec, in bytes (0 if gone).

    getrusage's ru_maxrss is not used: after fork + exec it still counts the parent's pages.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _watch(proc: subprocess.Popen, store: Path, kill_at: int | None) -> tuple[float, str]:
    """Poll the child's peak RSS until it exits (or kill it once kill_at records exist)."""
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _hwm(proc.pid))
        if kill_at is not None and (store / "done").exists() and \
                len(os.listdir(store / "done")) >= kill_at:
            proc.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    out = proc.stdout.read()
    return peak, out


# ---------------------------------------------------------------------------- measurements
def throughput(args) -> dict:
    import widenets as wn

    net = _net()
    x = _inputs(args.n_throughput, args.dim, seed=1)
    n = x.shape[0]
    mem, tiled, computed = [], [], 0
    warm = x[:min(n, args.tile)]                 # warm-up: one block in memory, one tile
    net.kernel(warm, get="ntk", dtype=torch.float32)
    wn.tiles.compute(net, warm, store=Path(args.dir) / "warm-up.zarr", tile=args.tile,
                     get="ntk", dtype=torch.float32, threads=args.threads)
    shutil.rmtree(Path(args.dir) / "warm-up.zarr")
    for r in range(args.repeats):
        t = time.perf_counter()
        k = net.kernel(x, get="ntk", dtype=torch.float32)
        mem.append(time.perf_counter() - t)
        del k
        store = Path(args.dir) / f"throughput-{r}.zarr"
        t = time.perf_counter()
        wn.tiles.compute(net, x, store=store, batch_size=args.tile, get="ntk", dtype=torch.float32,
                         threads=args.threads)
        tiled.append(time.perf_counter() - t)
        computed = _entries_computed(store)
        shutil.rmtree(store)
    m, t = statistics.median(mem), statistics.median(tiled)
    return {"n": n, "mem_s": m, "tiled_s": t, "mem_rate": n * n / m, "tiled_rate": computed / t,
            "computed": computed}


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _entries_computed(store: Path) -> int:
    """Kernel entries the tiles of a store hold (the upper triangle for symmetric kernels)."""
    total = 0
    for p in (store / "done").glob("*.json"):
        rec = json.loads(p.read_text())
        total += (rec["rows"][1] - rec["rows"][0]) * (rec["cols"][1] - rec["cols"][0])
    return total


def big_run(args) -> dict:
    store = Path(args.dir) / "big.zarr"
    shutil.rmtree(store, ignore_errors=True)
    b = args.tile
    nb = -(-args.n // b)
    total = nb * (nb + 1) // 2
    kill_at = max(1, int(total * args.kill_at))
    res = {"n": args.n, "tiles": total, "kill_at": kill_at}
    t = time.perf_counter()
    peak_a, _ = _watch(_spawn(args, store), store, kill_at)
    res["killed_after_s"] = time.perf_counter() - t
    done_before = len(os.listdir(store / "done"))
    res["done_at_kill"] = done_before
    t = time.perf_counter()
    peak_b, out_b = _watch(_spawn(args, store), store, None)
    res["resume_wall_s"] = time.perf_counter() - t
    res["resume"] = json.loads(out_b.strip().splitlines()[-1])
    t = time.perf_counter()
    peak_c, out_c = _watch(_spawn(args, store), store, None)
    res["noop_wall_s"] = time.perf_counter() - t
    res["noop"] = json.loads(out_c.strip().splitlines()[-1])
    res["peak_rss"] = max(peak_a, peak_b, peak_c, res["resume"]["peak_rss"],
                          res["noop"]["peak_rss"])
    res["store_bytes"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    recs = [json.loads(p.read_text()) for p in (store / "done").glob("*.json")]
    res["tile_s_median"] = statistics.median(r["seconds"] for r in recs)
    res["entries"] = _entries_computed(store)
    if not args.keep:
        shutil.rmtree(store)
    return res


def crc_overhead(args) -> dict:
    """Read and resume times of one store with and without the CRC-32 checks."""
    import zlib

    import numpy as np

    import widenets as wn

    net = _net()
    x = _inputs(args.n_crc, args.dim, seed=2)
    store = Path(args.dir) / "crc.zarr"
    shutil.rmtree(store, ignore_errors=True)
    wn.tiles.compute(net, x, store=store, batch_size=args.tile, get="ntk", dtype=torch.float32)
    wn.tiles.load_kernel(store, check=False)  # warm the page cache
    times = {"read_checked": [], "read_unchecked": [], "resume_checked": [],
             "resume_unchecked": []}
    for _ in range(args.repeats):
        for check in (True, False):
            t = time.perf_counter()
            wn.tiles.load_kernel(store, check=check)
            times["read_checked" if check else "read_unchecked"].append(time.perf_counter() - t)
            t = time.perf_counter()
            wn.tiles.compute(net, x, store=store, batch_size=args.tile, get="ntk",
                             dtype=torch.float32, check_existing=check)
            times["resume_checked" if check else "resume_unchecked"].append(
                time.perf_counter() - t)
    buf = np.random.default_rng(0).random(args.n_crc * args.n_crc // 2 // 2, dtype=np.float64)
    t = time.perf_counter()
    zlib.crc32(buf.view(np.uint8).data)
    crc_rate = buf.nbytes / (time.perf_counter() - t)
    shutil.rmtree(store)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {**med, "n": args.n_crc, "bytes": args.n_crc ** 2 * 4, "crc_rate": crc_rate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="inputs of the big run")
    p.add_argument("--n-throughput", type=int, default=8_000)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction of tiles before SIGKILL")
    p.add_argument("--dir", default=None, help="where stores go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the big store")
    p.add_argument("--skip-big", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-crc", action="store_true")
    p.add_argument("--n-crc", type=int, default=8_000, help="inputs of the CRC-cost store")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    own_dir = args.dir is None
    args.dir = args.dir or tempfile.mkdtemp(prefix="widenets-tiles-bench-")
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    rows = []
    if not args.skip_throughput:
        tp = throughput(args)
        ratio = tp["tiled_rate"] / tp["mem_rate"]
        rows += [
            (f"in-memory NTK, {tp['n']} inputs (median of {args.repeats})",
             f"{tp['mem_s']:.2f} s, {tp['mem_rate'] / 1e6:.2f} M entries/s", ""),
            (f"tiled NTK, {tp['n']} inputs, tile {args.tile}, {args.threads} thread(s)",
             f"{tp['tiled_s']:.2f} s, {tp['computed'] / 1e6:.1f} M entries computed, "
             f"{tp['tiled_rate'] / 1e6:.2f} M entries/s", ""),
            ("throughput tiled / in memory (entries/s)", f"{ratio:.3f}x",
             ">= 0.8x: " + _verdict(ratio >= 0.8)),
            ("wall time in memory / tiled (symmetric: tiles skip the lower triangle)",
             f"{tp['mem_s'] / tp['tiled_s']:.2f}x", ""),
        ]
    if not args.skip_big:
        b = big_run(args)
        r = b["resume"]
        rows += [
            (f"big run (single run): {b['n']} inputs, {b['tiles']} tiles of {args.tile}, store "
             f"on disk",
             f"{b['store_bytes'] / 1e9:.2f} GB (upper triangle)", ""),
            ("peak RSS of the computing processes (VmHWM: killed run, resume, rerun)",
             f"{b['peak_rss'] / 1e9:.2f} GB", "< 2 GB: " + _verdict(b["peak_rss"] < 2e9)),
            ("big run throughput (median tile compute time)",
             f"{b['tile_s_median']:.2f} s per tile", ""),
            (f"SIGKILL after >= {b['kill_at']} tiles; resume computes the missing ones",
             f"{b['done_at_kill']} kept, {r['computed']} recomputed in {r['compute_s']:.1f} s "
             f"(process {b['resume_wall_s']:.1f} s)", ""),
            ("fixed cost of resuming (rerun on the finished store: hash inputs, read records)",
             f"{b['noop']['compute_s']:.2f} s in compute() "
             f"({b['noop_wall_s']:.1f} s with process start, imports, data)",
             "< 10 s: " + _verdict(b["noop"]["compute_s"] < 10)),
        ]
    if not args.skip_crc:
        c = crc_overhead(args)
        gb = c["bytes"] / 1e9
        rows += [
            (f"load_kernel of {c['n']} x {c['n']} float32 ({gb:.2f} GB), CRC-checked "
             f"(median of {args.repeats})", f"{c['read_checked']:.2f} s", ""),
            ("load_kernel, check=False", f"{c['read_unchecked']:.2f} s", ""),
            ("read overhead of the CRC check (checked / unchecked)",
             f"{c['read_checked'] / c['read_unchecked']:.2f}x", ""),
            ("resume of the finished store, check_existing=True (re-reads every tile)",
             f"{c['resume_checked']:.2f} s", ""),
            ("resume, check_existing=False", f"{c['resume_unchecked']:.2f} s", ""),
            ("zlib.crc32 throughput", f"{c['crc_rate'] / 1e9:.2f} GB/s", ""),
        ]
    print(f"\nwidenets.tiles benchmark: depth-3 ReLU NTK, float32, dim {args.dim}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| measurement | value | target |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if own_dir and not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
