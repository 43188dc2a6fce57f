"""Wall-clock runtime of the demo and of every reproducible figure (not a test).

    python benchmarks/figures.py            # default scales, 1 run each (several minutes)
    python benchmarks/figures.py --quick    # --quick scales, median of 3 runs each

Prints a markdown table (run + plot, medians over the repeats) for the README.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from widenets import experiments
from widenets.experiments import make_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="figure ids (and/or 'demo')")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 1)
    ids = args.only or ["demo", *experiments.available()]
    print(f"torch threads: {torch.get_num_threads()}, scale: {'quick' if args.quick else 'default'}"
          f", repeats: {repeats}\n")
    print("| figure | median s | min s |")
    print("| --- | ---: | ---: |")
    for fid in ids:
        mod = experiments.load(fid)
        times = []
        for _ in range(repeats):
            cfg = make_config(mod, quick=args.quick)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                result = mod.run(cfg)
                if hasattr(mod, "plot_all"):
                    mod.plot_all(result, Path(tmp))
                else:
                    mod.plot(result, Path(tmp) / "fig.png")
                times.append(time.perf_counter() - t0)
        print(f"| `{fid}` | {statistics.median(times):.1f} | {min(times):.1f} |", flush=True)


if __name__ == "__main__":
    main()
