"""The `widenets` command.

    widenets demo [--out DIR] [--quick] [--seed N] [--set key=value ...]
    widenets reproduce FIGURE|all [--out DIR] [--quick] [--seed N] [--set key=value ...]
    widenets reproduce --list
    widenets kernel ...            (large tiled kernels; see `widenets kernel --help`)
    widenets solve STORE --y Y.npy --out ALPHA.npy   (see `widenets solve --help`)

Bad input (unknown figure, unknown --set key, a value of the wrong type or one a figure
rejects, repeated seeds, an unwritable --out, an --out that already holds a report without
--overwrite) prints one line and exits with status 2. Ctrl-C keeps the finished figures and
exits with 130.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _add_run_options(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder for PNGs, result.json and index.html "
                        f"(default: {default_out})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a report already in --out (default: refuse, so that a second "
                        "run never silently replaces the first one's result.json)")
    p.add_argument("--quick", action="store_true",
                   help="small scale that runs in seconds (for CI and smoke tests)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: each config's)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch, BLAS and the kernels' blocks (default: "
                        "torch's default, i.e. OMP_NUM_THREADS or the cores)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="change one config field, typed against the config "
                        "(repeatable; lists as comma-separated values, e.g. widths=64,256)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="widenets",
        description="Wide neural networks: a demo on real data and the seed papers' figures.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"widenets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="NNGP/NTK predictions vs trained finite nets on digits",
                          description="On scikit-learn's digits: analytic NNGP and NTK, the "
                                      "NTK-GP's test accuracy and loss over training time, the "
                                      "NNGP posterior, finite networks of several widths "
                                      "trained in torch, the kernel spectrum; writes a report.")
    _add_run_options(demo, "out/demo")

    rep = sub.add_parser("reproduce", help="reproduce a seed paper's figure",
                         description="Reproduce a figure of the seed papers (see --list).")
    rep.add_argument("figure", nargs="?", help="figure id (see --list) or 'all'")
    rep.add_argument("--list", action="store_true", help="list the reproducible figures")
    _add_run_options(rep, "out/FIGURE")

    from .solve_cli import add_solve_parser
    from .tiles.cli import add_kernel_parser

    add_kernel_parser(sub)
    add_solve_parser(sub)
    return parser


def _fail(message: str) -> int:
    print(f"widenets: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _list_figures() -> int:
    import dataclasses

    from . import experiments

    for fid in ["demo", *experiments.available()]:
        mod = experiments.load(fid)
        name = "(widenets demo)" if fid == "demo" else fid
        print(f"{name:20s} {mod.TITLE}  [default ~{mod.RUNTIME}]")
        keys = ", ".join(f"{f.name}={getattr(mod.Config(), f.name)!r}"
                         for f in dataclasses.fields(mod.Config))
        print(f"{'':20s} --set keys: {keys}")
    return 0


def _apply_threads(n: int) -> None:
    """`--threads N` for the rest of the run: torch's intra-op threads, which the analytic
    kernels' block threads follow (never more than the cores, see `widenets._parallel`),
    and the numpy/scipy BLAS threads."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def _run(args, figures: list[str], default_out: str, title: str, argv) -> int:
    from .experiments.base import ConfigError, split_sets
    from .experiments.report import OutputError
    from .experiments.runner import prepare, run_all

    try:
        overrides = split_sets(args.sets)
        jobs = prepare(figures, quick=args.quick, seed=args.seed, overrides=overrides)
    except ConfigError as e:
        return _fail(str(e))
    if args.threads is not None:
        if args.threads < 1:
            return _fail(f"--threads must be >= 1, got {args.threads}")
        _apply_threads(args.threads)
    out = args.out if args.out is not None else Path(default_out)
    command = "widenets " + " ".join(shlex.quote(a) for a in argv)
    try:
        run_all(jobs, out, title=title, command=command, seed=args.seed,
                overwrite=args.overwrite)
    except ConfigError as e:
        return _fail(str(e))
    except OutputError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "kernel":
        from .tiles.cli import run_kernel

        return int(run_kernel(args) or 0)
    if args.command == "solve":
        from .solve_cli import run_solve

        return run_solve(args)
    if args.command == "demo":
        return _run(args, ["demo"], "out/demo", "widenets demo", argv)
    # reproduce
    from . import experiments

    if args.list:
        return _list_figures()
    if not args.figure:
        return _fail("reproduce: give a FIGURE, 'all', or --list; figures: "
                     + (", ".join(experiments.available()) or "(none yet)"))
    if args.figure == "all":
        figures = experiments.available()
        if not figures:
            return _fail("reproduce all: no figures are available in this build")
        return _run(args, figures, "out/all", "widenets: all seed figures", argv)
    if args.figure not in experiments.available():
        return _fail(f"unknown figure {args.figure!r}; choose one of: "
                     f"{', '.join(experiments.available()) or '(none yet)'} or 'all' "
                     f"(see widenets reproduce --list)")
    return _run(args, [args.figure], f"out/{args.figure}", f"widenets: {args.figure}", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
