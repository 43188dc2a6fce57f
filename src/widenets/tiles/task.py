"""The work of one tile, the same on an in-process thread and on a Dask worker.

`TileJob` holds everything a worker needs besides the inputs (the kernel function, which
kernels, dtype, device, the store); it is shipped to each worker once, like the inputs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .store import _bounds, write_tile

__all__ = ["TileJob", "run_tile", "evaluate"]


@dataclass(frozen=True)
class TileJob:
    """What every tile of one `compute` call shares.

    Attributes:
        kernel_fn: a widenets layer or a callable kernel_fn(x1, x2, get=...).
        is_layer: True when kernel_fn is a widenets layer (then `.kernel(..., dtype=)` is used).
        get: the kernels computed, e.g. ("nngp", "ntk").
        dtype: the torch dtype of inputs and results.
        device: where kernel_fn runs ("cpu", "cuda", "cuda:1", ...); results come back to CPU.
        root: the store directory (must be visible to every worker).
        meta: the store's metadata.
        aux: (pattern1, pattern2, mask1, mask2) of the inputs (`compute(pattern=, mask=)`),
            sliced with them per tile; Nones without.
    """

    kernel_fn: object
    is_layer: bool
    get: tuple
    dtype: torch.dtype
    device: str
    root: Path
    meta: dict
    aux: tuple = (None, None, None, None)


def evaluate(job: TileJob, a: torch.Tensor, b: torch.Tensor | None, rows=None,
             cols=None) -> dict[str, torch.Tensor]:
    """kernel_fn on one pair of input blocks, checked: name -> (len(a), len(b or a)) tensor.

    Args:
        a: (r, ...) rows of x1; b: (c, ...) rows of x2, or None for a diagonal tile of a
            symmetric kernel (then kernel_fn sees x2=None and keeps its exact diagonal).
        rows, cols: slices of x1 / x2 that a and b are, for the patterns and masks in job.aux.
    """
    dev = torch.device(job.device)
    a = a.to(dev)
    b = None if b is None else b.to(dev)
    if job.is_layer:
        extra = {}
        for name, (first, second) in (("pattern", job.aux[:2]), ("mask", job.aux[2:])):
            if first is not None:       # the second set is x1 again for symmetric kernels
                second = first if second is None else second
                extra[name] = first[rows] if b is None else (first[rows], second[cols])
        out = job.kernel_fn.kernel(a, b, get=job.get, dtype=job.dtype, **extra)
    else:
        out = job.kernel_fn(a, b, get=job.get)
    if isinstance(out, list):
        raise TypeError("compute: kernel_fn returned a list (a net that ends in several "
                        "branches); tile one branch at a time, e.g. end the net with FanInSum()")
    if isinstance(out, torch.Tensor):
        out = (out,)
    if not isinstance(out, tuple) or len(out) != len(job.get) or \
            not all(isinstance(t, torch.Tensor) for t in out):
        got = f"{len(out)} value(s)" if isinstance(out, tuple) else type(out).__name__
        raise TypeError(f"compute: kernel_fn(x1, x2, get={job.get!r}) must return one tensor per "
                        f"requested kernel ({len(job.get)}), got {got}; for a callable that "
                        f"computes a single kernel pass get='ntk' (or 'nngp')")
    rows, cols = a.shape[0], (a if b is None else b).shape[0]
    res = {}
    for name, t in zip(job.get, out, strict=True):
        if tuple(t.shape) != (rows, cols):
            raise ValueError(f"compute: kernel_fn returned a {name} block of shape "
                             f"{tuple(t.shape)} for {rows} x {cols} inputs; it must return "
                             f"(n1, n2) kernels")
        if not torch.isfinite(t).all():
            raise FloatingPointError(f"compute: kernel_fn returned NaN or infinite {name} "
                                     f"values; they are not stored (use float64 or check the "
                                     f"net's hyperparameters)")
        res[name] = t.detach().to(device="cpu", dtype=job.dtype)
    return res


def run_tile(job: TileJob, x1: torch.Tensor, x2: torch.Tensor | None, i: int, j: int) -> dict:
    """Compute tile (i, j) and write it (data, then record) into the store.

    Args:
        x1: (n1, ...) all row inputs; x2: (n2, ...) all column inputs, or None (symmetric).

    Returns:
        {"tile": (i, j), "seconds": compute seconds}.
    """
    blocks, seconds = compute_tile(job, x1, x2, i, j)
    return store_tile(job, i, j, blocks, seconds)


def compute_tile(job: TileJob, x1: torch.Tensor, x2: torch.Tensor | None, i: int,
                 j: int) -> tuple[dict, float]:
    """The blocks of tile (i, j) as contiguous numpy arrays, and the compute seconds."""
    (r0, r1), (c0, c1) = _bounds(job.meta, i, j)
    start = time.perf_counter()
    if x2 is None:
        # Symmetric kernels: only i <= j; a diagonal tile is the kernel of one block with itself,
        # made exactly symmetric from its upper triangle (as the reader mirrors the tiles).
        blocks = evaluate(job, x1[r0:r1], None if i == j else x1[c0:c1], slice(r0, r1),
                          slice(c0, c1))
        if i == j:
            upper = torch.ones(r1 - r0, r1 - r0, dtype=torch.bool).triu()
            blocks = {k: torch.where(upper, v, v.T) for k, v in blocks.items()}
    else:
        blocks = evaluate(job, x1[r0:r1], x2[c0:c1], slice(r0, r1), slice(c0, c1))
    seconds = time.perf_counter() - start
    return {k: np.ascontiguousarray(v.numpy()) for k, v in blocks.items()}, seconds


def store_tile(job: TileJob, i: int, j: int, blocks: dict, seconds: float) -> dict:
    """Write a computed tile (data, then its record) into the store."""
    write_tile(job.root, job.meta, i, j, blocks, seconds=seconds, worker=_worker_address())
    return {"tile": (i, j), "seconds": seconds}


def _worker_address() -> str | None:
    """The address of the Dask worker running this task, None outside Dask."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:  # not inside a worker
        return None
