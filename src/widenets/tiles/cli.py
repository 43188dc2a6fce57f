"""The `widenets kernel` command (also `python -m widenets.tiles`).

    widenets kernel --net SPEC --data X.npy [--x2 X2.npy] --out STORE [--batch-size 2048]
                    [--scheduler ADDRESS|local[:N]] [--get ntk] [--dtype float32]

computes the net's infinite-width kernel(s) tile by tile into STORE with a progress bar and an
ETA; rerunning the same command resumes. SPEC is described in `widenets.tiles.spec`. Data
files: .npy (one array), .npz (its only array, or FILE.npz:KEY), .csv (numbers, comma
separated, an optional header line). Inputs are (n, features...).

`add_kernel_parser(subparsers)` adds the subcommand to a parent argparse parser and
`run_kernel(args)` runs it (returns the exit status).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

__all__ = ["add_kernel_parser", "run_kernel", "load_data", "dask_session", "local_cluster_layout",
           "main"]

_DTYPES = ("float64", "float32", "float16")


def load_data(spec: str, *, arg: str = "--data", header="auto") -> np.ndarray:
    """An input array from FILE.npy, FILE.npz[:KEY] or FILE.csv (read by `wn.data.read_csv`).

    Args:
        spec: the file, FILE.npz:KEY for one array of an .npz.
        arg: the command-line option it came from (named in errors).
        header: for .csv files: "auto", True or False (see `wn.data.read_csv`).

    Raises:
        ValueError: unknown extension, missing key, an unreadable or empty file, a malformed
            .csv line, not a numeric (n, features...) array with n >= 1.
        FileNotFoundError: the file does not exist.
    """
    from ..data.files import read_csv

    cmd = "widenets kernel"
    key = None
    path = spec
    if ".npz:" in spec:
        path, key = spec.rsplit(":", 1)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{cmd}: {arg} file {path!r} does not exist")
    if not p.is_file():
        raise ValueError(f"{cmd}: {arg} must be a file, got the directory {path!r}")
    ext = p.suffix.lower()
    try:
        if ext == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif ext == ".npz":
            with np.load(p, allow_pickle=False) as z:
                names = list(z.keys())
                if key is None:
                    if len(names) != 1:
                        raise ValueError(f"{cmd}: {arg} {path!r} holds arrays {names}; name "
                                         f"one as {path}:KEY")
                    key = names[0]
                if key not in names:
                    raise ValueError(f"{cmd}: {arg} {path!r} has no array {key!r}; it holds "
                                     f"{names}")
                arr = z[key]
        elif ext in (".csv", ".txt"):
            arr = read_csv(p, header=header, func=f"{cmd}: {arg}")
        else:
            raise ValueError(f"{cmd}: {arg} file {path!r} must be .npy, .npz or .csv, got "
                             f"{ext or 'no extension'!r}")
    except ValueError as e:
        if str(e).startswith(cmd):
            raise
        raise ValueError(f"{cmd}: cannot read {arg} {path!r} as {ext}: {e}") from None
    except (OSError, EOFError) as e:  # an empty or truncated file, unreadable zip
        raise ValueError(f"{cmd}: cannot read {arg} {path!r} as {ext}: "
                         f"{e or type(e).__name__} (an empty or damaged file?)") from None
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{cmd}: {arg} {path!r} must hold real numbers, got dtype "
                         f"{arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"{cmd}: {arg} {path!r} must be (n, features...), got shape "
                         f"{arr.shape}")
    if arr.shape[0] == 0 or 0 in arr.shape[1:]:
        raise ValueError(f"{cmd}: {arg} {path!r} must hold at least one input with at least "
                         f"one feature, got shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", required=True, metavar="SPEC",
                   help="net description, e.g. \"[dense(512, w_std=1.5, b_std=0.05) relu]*3 "
                        "dense(1)\" or JSON or a .json file (grammar: widenets.tiles.spec)")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="inputs x1: FILE.npy, FILE.npz[:KEY] or FILE.csv, shape (n, features)")
    p.add_argument("--x2", metavar="FILE", default=None,
                   help="second inputs (rectangular kernel); default: the symmetric kernel of "
                        "--data")
    p.add_argument("--out", required=True, metavar="STORE",
                   help="store directory (created, or resumed when it holds the same call)")
    p.add_argument("--batch-size", "--tile", dest="batch_size", type=int, default=None,
                   metavar="B", help="tile edge: a tile holds B x B input pairs; default 2048, "
                   "or the store's own when resuming (--tile is the old spelling)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a dask scheduler address (tcp://host:8786), or 'local' / 'local:N' for "
                        "a LocalCluster of N workers (default 2) sharing the cores as torch "
                        "threads; default: threads in this process")
    p.add_argument("--get", default="ntk", choices=["ntk", "nngp", "both"],
                   help="kernel(s) to compute (default ntk)")
    p.add_argument("--dtype", default="float64", choices=_DTYPES,
                   help="dtype of the computation and the store (default float64)")
    p.add_argument("--device", default="cpu", help="torch device on every worker (cuda for GPUs)")
    p.add_argument("--threads", type=int, default=None,
                   help="in-process tile threads (without --scheduler); default 1. Each tile's "
                        "kernel runs its blocks on the cores / THREADS left to it")
    p.add_argument("--header", default="auto", type=_header,
                   help="for .csv data: is the first line a header? auto (default: only when "
                        "none of its fields is a number), yes or no")
    p.add_argument("--flatten", action="store_true",
                   help="reshape inputs to (n, -1) first (images for a fully connected net)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _header(text: str):
    low = text.strip().lower()
    table = {"auto": "auto", "yes": True, "true": True, "no": False, "false": False}
    if low not in table:
        raise argparse.ArgumentTypeError(f"expected auto, yes or no, got {text!r}")
    return table[low]


def _epilog() -> str:
    from . import spec

    return (spec.__doc__ or "").strip()


def add_kernel_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `kernel` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "kernel", help="compute a huge kernel tile by tile into a store (resumable)",
        description=__doc__.split("\n\n")[1] if __doc__ else None, epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run_kernel)
    return p


def local_cluster_layout(n_workers: int | None) -> tuple[int, int]:
    """(workers, torch threads per worker) of a `--scheduler local[:N]` cluster: N workers
    (default 2, at most the cores) of one Dask thread each, and the cores shared among them
    as torch threads, so that workers x threads never exceed the cores this process may use.
    N larger than the cores is kept (the user asked for it) with one torch thread each."""
    from .._parallel import usable_cores

    cores = usable_cores()
    n = min(2, cores) if n_workers is None else n_workers
    return n, max(1, cores // n)


@contextlib.contextmanager
def dask_session(address: str | None):
    """The dask Client of a `--scheduler` value, closed on exit (with its cluster): None for
    no address (compute in this process), a LocalCluster for "local" / "local:N" (see
    `local_cluster_layout`: its workers' torch threads are set through OMP_NUM_THREADS and
    MKL_NUM_THREADS, which Dask otherwise sets to 1), otherwise a client of the scheduler at
    that address (its workers keep their own settings)."""
    if not address:
        yield None
        return
    local = address == "local" or address.startswith("local:")
    count = address.split(":", 1)[1] if address.startswith("local:") else None
    if count is not None and (not count.isdigit() or int(count) < 1):
        raise ValueError(f"--scheduler: local:N needs a positive number of workers N, got "
                         f"{address!r}")
    from distributed import Client, LocalCluster

    cluster = None
    if local:
        n, threads = local_cluster_layout(None if count is None else int(count))
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=None,
                               env=env)
    client = Client(cluster if cluster is not None else address)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_kernel(args: argparse.Namespace) -> int:
    """Run `widenets kernel` with parsed arguments; returns the exit status (0 on success)."""
    import torch

    from .compute import compute
    from .spec import parse_spec

    err = sys.stderr
    try:
        net = parse_spec(args.net)
        x1 = load_data(args.data, arg="--data", header=args.header)
        x2 = None if args.x2 is None else load_data(args.x2, arg="--x2", header=args.header)
    except (ValueError, FileNotFoundError) as e:
        print(f"widenets: error: {e}", file=err)
        return 2
    if args.flatten:
        x1 = x1.reshape(len(x1), -1)
        x2 = None if x2 is None else x2.reshape(len(x2), -1)
    get = ("nngp", "ntk") if args.get == "both" else args.get
    try:
        with dask_session(args.scheduler) as client:
            run = compute(net, torch.from_numpy(x1),
                          None if x2 is None else torch.from_numpy(x2), store=args.out,
                          batch_size=args.batch_size, get=get, client=client,
                          dtype=getattr(torch, args.dtype), device=args.device,
                          threads=args.threads, progress=not args.no_progress)
    except KeyboardInterrupt as e:
        print(f"\n{e or 'interrupted'}", file=err)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        print(f"widenets: error: {e}", file=err)
        return 1
    print(f"{run.store}: {run.tiles_total} tiles ({run.tiles_computed} computed, "
          f"{run.tiles_skipped} already done) in {run.seconds:.1f} s")
    return 0


def main(argv=None) -> int:
    """`python -m widenets.tiles --net SPEC --data FILE --out STORE ...`."""
    p = argparse.ArgumentParser(prog="python -m widenets.tiles",
                                description=__doc__.split("\n\n")[1] if __doc__ else None,
                                epilog=_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return run_kernel(p.parse_args(argv))
