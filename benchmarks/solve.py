"""Benchmark: `wn.predict.solve` (issue 18). Not a test.

Three tables, every ratio measured in the same run:

1. in memory, n = N_MEM (default 10,000) depth-3 ReLU NTK of inputs in 10 dimensions (an
   ill-conditioned kernel): Cholesky against CG with the Nyström and the pivoted-Cholesky
   preconditioners (rank 256), to relative residual 1e-6, and CG without a preconditioner
   (capped at --cap iterations);
2. a float32 tile store (depth-3 ReLU NTK of N_STORE inputs of dimension 784, the architecture
   and inputs of benchmarks/tiles.py): the time to read every stored tile once (the floor for
   one iteration, median of 3), then single runs (one solve each, in its own subprocess so that
   its peak resident memory, VmHWM, is its own), one after another: CG with the default
   Nyström preconditioner in one process; the same solve on a Dask LocalCluster of 2 worker
   processes x 1 thread (tiles dealt to the workers by area, only vectors sent; its workers'
   peak memory reported too); CG without a preconditioner. Iterations, time per iteration
   against the read floor, setup (the sketch: one pass with 256 columns), total;
3. the Dask against the one-process time per iteration of the same solve, same run.

    python benchmarks/solve.py                          # n = 10,000 in memory, 12,000 store
    python benchmarks/solve.py --n-mem 4000 --n-store 6000 --cap 300   # a quick run
    python benchmarks/solve.py --skip-memory --n-store 50000 --store big.zarr --skip-verify
        --json runs.jsonl   # (one command) the issue's store (5.45 GB, kept and reused: a
        # finished store is resumed in seconds); each measurement appended to runs.jsonl
    python benchmarks/solve.py --worker big.zarr single-none 3 out.json  # 3 iterations only
    python benchmarks/solve.py --worker big.zarr ratio 3 out.json  # read pass vs product, x3

Each tile is multiplied 64 rows at a time in float64 (tiles/matvec.py): converting a whole
2048² float32 tile first made a product 2.3x slower per tile (57 ms against 25 ms, one thread,
measured while developing it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _net(depth=3):
    import widenets as wn

    layers = []
    for _ in range(depth):
        layers += [wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu()]
    return wn.serial(*layers, wn.Dense(1, w_std=1.5, b_std=0.05))


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def in_memory(n: int, cap: int) -> list:
    import widenets as wn

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 10, generator=g, dtype=torch.float64)
    y = torch.randn(n, 10, generator=g, dtype=torch.float64)     # 10 classes at once
    t = time.perf_counter()
    k = _net().kernel(x, get="ntk")
    rows = [("kernel (in memory, float64)", time.perf_counter() - t, "", "")]
    t = time.perf_counter()
    ref = wn.predict.solve(k, y, method="cholesky")
    rows.append(("Cholesky", time.perf_counter() - t, "", f"{float(ref.residual.max()):.1e}"))
    for pc in ("nystrom", "pivoted_cholesky", None):
        t = time.perf_counter()
        try:
            sol = wn.predict.solve(k, y, method="cg", preconditioner=pc, rank=256, tol=1e-6,
                                   max_iter=cap)
            its = str(sol.iterations)
        except wn.predict.SolveError as e:
            sol = e.solution
            its = f"> {cap} (residual {float(sol.residuals[-1].max()):.1e})"
        err = float(torch.linalg.norm(sol.alpha - ref.alpha) / torch.linalg.norm(ref.alpha))
        rows.append((f"CG, preconditioner {pc}", time.perf_counter() - t, its,
                     f"{float(sol.residual.max()):.1e} (vs Cholesky {err:.1e})"))
    return rows


def make_store(path: Path, n: int, dim: int) -> float:
    import widenets as wn

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g, dtype=torch.float32)
    t = time.perf_counter()
    wn.tiles.compute(_net(), x, store=path, batch_size=2048, get="ntk", dtype=torch.float32)
    return time.perf_counter() - t


def store_worker(path: str, mode: str, cap: int, out: str) -> None:
    """One measurement in a fresh process (so that its peak memory is its own)."""
    import widenets as wn
    from widenets.tiles.matvec import _tile_reader

    op = wn.tiles.StoreOperator(path, get="ntk", check="complete")
    n = op.shape[0]
    y = torch.randn(n, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = {}
    if mode == "ratio":
        # One pass that only reads the tiles, then one product (10 columns), alternating, in
        # the same process: the per-iteration cost against its floor under the same load.
        reads, prods = [], []
        for _ in range(cap):
            t = time.perf_counter()
            for _tile in _tile_reader(op.root, op.name, op.meta, op.tiles, 2):
                pass
            reads.append(time.perf_counter() - t)
            t = time.perf_counter()
            op.matmul(y)
            prods.append(time.perf_counter() - t)
        res.update(read_s=float(np.median(reads)), product_s=float(np.median(prods)))
    elif mode in ("read", "read-only"):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            for _tile in _tile_reader(op.root, op.name, op.meta, op.tiles, 2):
                pass
            times.append(time.perf_counter() - t)
        res["read_s"] = float(np.median(times))
        res["read_all_s"] = times
        if mode == "read":
            t = time.perf_counter()
            wn.tiles.verify(path)
            res["verify_s"] = time.perf_counter() - t
    else:
        client = cluster = None
        if mode.startswith("dask"):
            from distributed import Client, LocalCluster

            # 2 worker processes x 1 thread each (<= the 2 cores of this machine; the solving
            # process only runs the CG vector updates between products).
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
            op = wn.tiles.StoreOperator(path, get="ntk", check=None, client=client)
            threads = client.nthreads()
            res["dask"] = {"workers": len(threads), "threads": sum(threads.values()),
                           "cores": os.cpu_count(),
                           "elements_per_worker": [
                               sum(min(2048, n - i * 2048) * min(2048, n - j * 2048)
                                   for i, j in tiles) for tiles in op._parts.values()],
                           "tiles_per_worker": [len(t) for t in op._parts.values()]}
            op.matmul(y)        # warm-up: workers import widenets and open the store once
        pc = None if mode in ("none", "dask-none", "single-none") else "nystrom"
        rank = None if RANK is None or pc is None else RANK
        t = time.perf_counter()
        try:
            sol = wn.predict.solve(op, y, method="cg", preconditioner=pc, rank=rank, tol=1e-6,
                                   max_iter=cap, check_store=None, progress=True)
            res["iterations"] = sol.iterations
        except wn.predict.SolveError as e:
            sol = e.solution
            res["iterations"] = f"> {cap} (residual {float(sol.residuals[-1].max()):.1e})"
        res.update(total_s=time.perf_counter() - t, per_iteration_s=sol.seconds_per_iteration,
                   setup_s=sol.setup_seconds, residual=float(sol.residual.max()),
                   rank=sol.rank, sketch=sol.info.get("nystrom"), passes=sol.passes)
        if client is not None:
            res["worker_peak_rss_gb"] = [v / 1e9 for v in client.run(_peak_rss).values()]
            client.close()
            cluster.close()
    res["peak_rss_gb"] = _peak_rss() / 1e9
    Path(out).write_text(json.dumps(res))


RANK = None     # the Nyström rank (None: solve's adaptive default); --rank sets it


def _run(path, mode, cap, log=None) -> dict:
    out = tempfile.mktemp(suffix=".json")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, __file__, "--worker", str(path), mode, str(cap), out]
    if RANK is not None:
        cmd += ["--rank", str(RANK)]
    subprocess.run(cmd, check=True, env=env)
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    if log:         # every measurement kept as it finishes (a long run can be cut short)
        with open(log, "a") as f:
            f.write(json.dumps({"mode": mode, **res}) + "\n")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-mem", type=int, default=10_000)
    p.add_argument("--n-store", type=int, default=12_000)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--cap", type=int, default=300, help="most CG iterations per solve")
    p.add_argument("--dask-iterations", type=int, default=15)
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--cap-none", type=int, default=None,
                   help="most CG iterations without a preconditioner (default --cap)")
    p.add_argument("--store", default=None,
                   help="where the store goes (kept; an existing complete store is reused)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-verify", action="store_true",
                   help="do not time wn.tiles.verify (one more read of the store)")
    p.add_argument("--rank", type=int, default=None,
                   help="Nyström rank (default: solve's adaptive rank)")
    p.add_argument("--no-dask", action="store_true")
    p.add_argument("--json", default=None, help="append every measurement to this file")
    p.add_argument("--skip-store", action="store_true")
    a = p.parse_args()
    global RANK
    RANK = a.rank
    if a.worker:
        store_worker(a.worker[0], a.worker[1], int(a.worker[2]), a.worker[3])
        return
    torch.manual_seed(0)
    sys.stdout.reconfigure(line_buffering=True)
    print(f"widenets solve benchmark (threads: torch {torch.get_num_threads()}); a shared, busy "
          f"machine: compare ratios within this run only\n")
    if not a.skip_memory:
        print(f"## in memory, n = {a.n_mem}, 10 right-hand sides, tol 1e-6")
        print(f"{'what':34s} {'seconds':>9s}  {'iterations':28s} true residual")
        for what, s, its, res in in_memory(a.n_mem, a.cap):
            print(f"{what:34s} {s:9.1f}  {its:28s} {res}")
        print()
    if a.skip_store:
        return
    tmp = Path(tempfile.mkdtemp(prefix="solvebench"))
    try:
        store = Path(a.store) if a.store else tmp / "k.zarr"
        secs = make_store(store, a.n_store, a.dim)      # a no-op resume for a finished store
        size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        print(f"## store: depth-3 ReLU NTK, {a.n_store} inputs of dim {a.dim}, float32, tile "
              f"2048 ({size / 1e9:.2f} GB on disk, computed or resumed in {secs:.0f} s), 10 "
              f"right-hand "
              f"sides, tol 1e-6")
        read = _run(store, "read" if not a.skip_verify else "read-only", a.cap, a.json)
        print(f"read every stored tile once: {read['read_s']:.2f} s (median of 3)" +
              ("" if a.skip_verify else f"; CRC check of the store before a solve "
               f"(wn.tiles.verify): {read['verify_s']:.2f} s"))
        print("single runs (one solve each, in its own process), in this order:")
        head = (f"{'run':22s} {'rank':>5s} {'iterations':28s} {'s/iteration':>11s} "
                f"{'/ read':>7s} {'setup s':>8s} {'total s':>8s} {'peak RSS GB':>11s}")
        print(head)
        rows = {}
        modes = ["nystrom"] + ([] if a.no_dask else ["dask-nystrom"]) + ["none"]
        for mode in modes:
            r = _run(store, mode, a.cap if mode != "none" else (a.cap_none or a.cap), a.json)
            rows[mode] = r
            what = {"nystrom": "Nyström, 1 process", "dask-nystrom": "Nyström, Dask 2 workers",
                    "none": "none, 1 process"}[mode]
            rss = f"{r['peak_rss_gb']:.2f}"
            if "worker_peak_rss_gb" in r:
                rss += " (+ workers " + "/".join(f"{w:.2f}" for w in r["worker_peak_rss_gb"]) + ")"
            print(f"{what:22s} {r['rank']:5d} {str(r['iterations']):28s} "
                  f"{r['per_iteration_s']:11.2f} {r['per_iteration_s'] / read['read_s']:7.2f} "
                  f"{r['setup_s']:8.1f} {r['total_s']:8.1f} {rss:>11s}")
            if r.get("sketch"):
                print(f"{'':22s} sketch ranks {r['sketch']['ranks']}, flatness "
                      f"{[round(f, 2) for f in r['sketch']['flatness']]}, kept "
                      f"{r['sketch'].get('kept')}")
            if "dask" in r:
                d = r["dask"]
                print(f"{'':22s} {d['workers']} workers x {d['threads'] // d['workers']} thread "
                      f"on {d['cores']} cores; stored tiles per worker {d['tiles_per_worker']}, "
                      f"elements {d['elements_per_worker']}")
        if "dask-nystrom" in rows:
            one, dk = rows["nystrom"], rows["dask-nystrom"]
            print(f"\nDask LocalCluster 2 workers against one process, same solve, same run: "
                  f"{dk['per_iteration_s']:.2f} against {one['per_iteration_s']:.2f} "
                  f"s/iteration (ratio {dk['per_iteration_s'] / one['per_iteration_s']:.2f}); "
                  f"total {dk['total_s']:.0f} against {one['total_s']:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
