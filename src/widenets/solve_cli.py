"""The `widenets solve` command: (K + ρI)⁻¹ y for a kernel in a tile store.

    widenets solve STORE --y Y.npy --out ALPHA.npy [--kernel ntk] [--diag-reg 0]
                   [--method auto|cholesky|cg] [--preconditioner nystrom|pivoted_cholesky|none]
                   [--rank R] [--tol 1e-6] [--max-iter N] [--checkpoint FILE]
                   [--scheduler ADDRESS|local[:N]] [--no-progress]

solves with `wn.predict.solve` (Cholesky when the kernel fits in memory, else preconditioned
conjugate gradients streaming the tiles from disk, split across Dask workers with --scheduler),
printing the residual, the time per iteration and an ETA; writes alpha (n,) or (n, k) to
ALPHA.npy and the residual history to ALPHA.residuals.npy. With --checkpoint the state is saved
as it goes (every --checkpoint-seconds) and rerunning the same command continues a killed solve.

`add_solve_parser(subparsers)` adds the subcommand, `run_solve(args)` runs it (exit status:
0 solved, 1 failed or not converged, 2 bad input, 130 interrupted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .tiles.cli import dask_session

__all__ = ["add_solve_parser", "run_solve"]


def add_solve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `solve` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "solve", help="solve (K + diag_reg I) alpha = y for a kernel in a tile store",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="tile store directory written by `widenets kernel`")
    p.add_argument("--y", required=True, help="targets: an (n,) or (n, k) .npy file")
    p.add_argument("--out", required=True, help="where to write alpha (.npy)")
    p.add_argument("--kernel", default="ntk", choices=("ntk", "nngp"),
                   help="which kernel of the store (default ntk)")
    p.add_argument("--diag-reg", type=float, default=0.0,
                   help="ridge relative to the mean diagonal (default 0)")
    p.add_argument("--diag-reg-absolute", action="store_true",
                   help="add --diag-reg itself to the diagonal")
    p.add_argument("--method", default="auto", choices=("auto", "cholesky", "cg"))
    p.add_argument("--preconditioner", default="nystrom",
                   choices=("nystrom", "pivoted_cholesky", "none"))
    p.add_argument("--rank", type=int, default=None, help="preconditioner rank")
    p.add_argument("--tol", type=float, default=1e-6, help="relative residual (default 1e-6)")
    p.add_argument("--max-iter", type=int, default=None)
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="save the solver state here and resume from it")
    p.add_argument("--checkpoint-seconds", type=float, default=30.0)
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a dask scheduler address, or 'local' / 'local:N' for a LocalCluster")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.set_defaults(func=run_solve)
    return p


def run_solve(args: argparse.Namespace) -> int:
    """Run `widenets solve` with parsed arguments; returns the exit status."""
    import torch

    from .predict.solver import SolveError, solve
    from .tiles import TileStoreError

    err = sys.stderr
    y_path = Path(args.y)
    if not y_path.exists():
        print(f"widenets solve: error: --y file {args.y!r} does not exist", file=err)
        return 2
    try:
        y = np.load(y_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        print(f"widenets solve: error: --y {args.y!r} is not a .npy array ({e})", file=err)
        return 2
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"widenets solve: error: the folder of --out {args.out!r} does not exist",
              file=err)
        return 2
    try:
        with dask_session(args.scheduler) as client:
            sol = solve(args.store, torch.from_numpy(np.asarray(y, dtype=np.float64)),
                        kernel=args.kernel, diag_reg=args.diag_reg,
                        diag_reg_absolute=args.diag_reg_absolute, method=args.method,
                        preconditioner=None if args.preconditioner == "none"
                        else args.preconditioner, rank=args.rank, tol=args.tol,
                        max_iter=args.max_iter, client=client, progress=not args.no_progress,
                        checkpoint=args.checkpoint, checkpoint_seconds=args.checkpoint_seconds)
    except KeyboardInterrupt:
        print("\nwidenets solve: interrupted" + (f"; rerun to continue from {args.checkpoint}"
                                                 if args.checkpoint else ""), file=err)
        return 130
    except SolveError as e:
        print(f"widenets solve: error: {e}", file=err)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"widenets solve: error: {e}", file=err)
        return 2
    except (TileStoreError, OSError, RuntimeError, FloatingPointError) as e:
        print(f"widenets solve: error: {e}", file=err)
        return 1
    np.save(out, sol.alpha.numpy())
    np.save(out.with_name(out.stem + ".residuals.npy"), sol.residuals.numpy())
    print(f"{out}: alpha {tuple(sol.alpha.shape)} by {sol.method}"
          + (f" ({sol.preconditioner or 'no'} preconditioner, {sol.iterations} iterations"
             f"{f', resumed from {sol.resumed_from}' if sol.resumed_from else ''})"
             if sol.method == "cg" else "")
          + f", relative residual {float(sol.residual.max()):.2e}, {sol.seconds:.1f} s")
    return 0
