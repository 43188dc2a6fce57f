"""`compute`: a kernel tile by tile into a store, resumable, in-process or on a Dask cluster.

Scheduling: the tiles still missing from the store are handed out one at a time, either to a
pool of threads in this process (the default) or, with `client=`, to the workers of a
`dask.distributed.Client` (a `LocalCluster` or a scheduler address; GPU workers with
`device="cuda"`). The inputs and the kernel function are shipped to each worker once
(`Client.scatter(..., broadcast=True)`); a tile task carries only its indices. Every worker
writes its finished tiles straight into the store, so the store must be on a file system all
workers see (a shared file system on a cluster).

Faults: a tile is finished only when its record is written (store.py); a worker that dies
mid-tile leaves no record and Dask reruns the task elsewhere; Ctrl-C cancels the tiles not yet
started and lets the running ones finish; a full disk or a failing tile stops the run with an
error that says how many tiles are kept. Rerunning the same call continues where it stopped.
"""

from __future__ import annotations

import errno
import operator
import shutil
import time
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from .._parallel import block_threads, threads_limit, torch_threads
from ..deprecation import renamed_arguments
from ..layers.base import Layer, as_input_tensor, parse_get
from .store import (
    FORMAT,
    StoreLayout,
    StoreLock,
    _as_path,
    _bounds,
    check_metadata,
    check_tile,
    clean_partial_files,
    describe_kernel_fn,
    done_tiles,
    fingerprint,
    init_store,
    read_metadata,
    remove_record,
    tile_list,
)
from .task import TileJob, compute_tile, run_tile, store_tile

__all__ = ["compute", "TileRun", "TileError"]

_FUNC = "tiles.compute"
DEFAULT_BATCH_SIZE = 2048  # tile edge of a new store when batch_size is None
_DTYPES = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}


class TileError(RuntimeError):
    """A tile failed; the finished tiles are kept and a rerun resumes.

    Example:
        >>> issubclass(wn.tiles.TileError, RuntimeError)
        True
    """


@dataclass(frozen=True)
class TileRun:
    """What a `compute` call did.

    Attributes:
        store: the store directory.
        tiles_total: tiles of the kernel (upper triangle only when symmetric).
        tiles_skipped: tiles already finished before this call (not recomputed).
        tiles_computed: tiles this call computed.
        seconds: wall-clock time of the call.

    Example:
        >>> net = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1))
        >>> x = torch.randn(10, 3, dtype=torch.float64)
        >>> run = wn.tiles.compute(net, x, store="k.zarr", get="ntk")
        >>> isinstance(run, wn.tiles.TileRun)
        True
    """

    store: Path
    tiles_total: int
    tiles_skipped: int
    tiles_computed: int
    seconds: float

    def open(self, *, get=None, **kwargs):
        """`wn.tiles.open(self.store, get=get, ...)`: the lazy (dask) kernel array(s)."""
        from .reader import open as open_store

        return open_store(self.store, get=get, **kwargs)

    def load(self, *, get=None, **kwargs):
        """`wn.tiles.load_kernel(self.store, get=get, ...)`: the kernel(s) as tensors."""
        from .reader import load_kernel

        return load_kernel(self.store, get=get, **kwargs)


# ------------------------------------------------------------------------------ checks
def _as_int(b):
    """b as a Python int when it is an integer (int, numpy integer), else None."""
    if isinstance(b, bool):
        return None
    try:
        return operator.index(b)
    except TypeError:
        return None


def _check_tile(tile, shape: tuple[int, int], symmetric: bool) -> tuple[int, int]:
    if _as_int(tile) is not None:
        tile = (tile, tile)
    if isinstance(tile, (tuple, list)) and len(tile) == 2:
        tile = tuple(_as_int(b) if _as_int(b) is not None else b for b in tile)
    if not isinstance(tile, (tuple, list)) or len(tile) != 2 or not all(
            isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in tile):
        raise ValueError(f"{_FUNC}: batch_size must be a positive int or a pair (b1, b2) of "
                         f"positive ints (rows, columns of one tile), got {tile!r}")
    if symmetric and tile[0] != tile[1]:
        raise ValueError(f"{_FUNC}: a symmetric kernel (x2=None) is stored as the upper "
                         f"triangle of square tiles, got batch_size={tuple(tile)!r}; use "
                         f"batch_size={tile[0]} (or pass x2 explicitly for a rectangular "
                         f"layout)")
    # A tile larger than the kernel is the whole kernel (tiles at the edges may be smaller).
    return min(tile[0], shape[0]), min(tile[1], shape[1])


def _check_int(value, arg: str, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{_FUNC}: {arg} must be a positive int, got {value!r}")
    return value


def _check_device(device) -> str:
    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{_FUNC}: device must name a torch device ('cpu', 'cuda', 'cuda:1'), "
                         f"got {device!r}") from e


def _gigabytes(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def _graph_inputs(kernel_fn, pattern, mask, shape, symmetric: bool):
    """(pattern1, pattern2, mask1, mask2) of `compute`, one entry per input row checked (the
    tiles slice them with the inputs; `Layer.kernel` checks the rest per tile)."""
    if pattern is None and mask is None:
        return (None,) * 4
    if not isinstance(kernel_fn, Layer):
        raise TypeError(f"{_FUNC}: pattern= and mask= need a widenets net as kernel_fn, got "
                        f"{type(kernel_fn).__name__}")
    out = []
    for arg, val in (("pattern", pattern), ("mask", mask)):
        pair = (val, None) if symmetric else val
        if val is not None and not symmetric and (not isinstance(val, (tuple, list))
                                                  or len(val) != 2):
            raise ValueError(f"{_FUNC}: with x2 given, {arg} must be a pair ({arg}1, {arg}2)")
        if val is None:
            pair = (None, None)
        for v, n, which in zip(pair, shape, ("x1", "x2")):
            if v is not None and (not hasattr(v, "__len__") or len(v) != n):
                raise ValueError(f"{_FUNC}: {arg} must hold one entry per input of {which} "
                                 f"({n}), got {type(v).__name__} of length "
                                 f"{len(v) if hasattr(v, '__len__') else '?'}")
        out += list(pair)
    return tuple(out)


def _with_aux(fp: dict | None, pattern, mask) -> dict | None:
    """The inputs' fingerprint, extended by their pattern and mask when given."""
    if fp is None or (pattern is None and mask is None):
        return fp
    fp = dict(fp)
    if pattern is not None:
        parts = (pattern,) if isinstance(pattern, torch.Tensor) else (
            pattern.edges, pattern.weights)
        fp["pattern"] = [fingerprint(t) for t in parts]
    if mask is not None:
        fp["mask"] = fingerprint(mask)
    return fp


# ------------------------------------------------------------------------------ public
@renamed_arguments(since="0.2", tile="batch_size")
def compute(kernel_fn, x1, x2=None, *, store, pattern=None, mask=None, batch_size=None,
            get=None, client=None, dtype: torch.dtype = torch.float64,
            description: str | None = None, device="cpu",
            threads: int | None = None, progress: bool = False, check_space: bool = True,
            check_existing: bool = True) -> TileRun:
    """Compute a kernel tile by tile into an on-disk store (zarr); rerunning resumes.

    Args:
        kernel_fn: a widenets net (`wn.Layer`; its `.kernel(x1, x2, get=..., dtype=...)` is
            used; its `repr`, plus a hash of any Python function it holds such as
            Elementwise's, describes it), or any callable `kernel_fn(x1, x2, get=...)`
            returning one (n1, n2) tensor per requested kernel (an empirical-NTK closure, a
            Monte Carlo kernel); x2=None asks it for the symmetric kernel of x1 with itself.
        x1: (n1, ...) inputs (torch tensor or numpy array).
        x2: (n2, ...) inputs, or None for the symmetric kernel of x1 (then only the upper
            triangle of tiles is computed; the reader mirrors it).
        store: a directory path; created if missing, continued if it holds the same call.
        pattern, mask: the graphs and valid-position masks of the inputs, as in
            `Layer.kernel` ((p1, p2) / (m1, m2), or p1 / m1 when x2 is None); sliced with the
            inputs for every tile and part of the inputs' fingerprint. Layers only.
        batch_size: the tile edge: a tile holds the kernel of batch_size x batch_size input
            pairs; an int (square) or (b1, b2); the last tiles may be smaller. Symmetric
            kernels need square tiles. One tile of each kernel must fit in a worker's memory
            (a few times b1 * b2 * itemsize). None: the existing store's tile when resuming,
            else 2048. (`tile=` is the deprecated spelling.)
        get: keyword-only; None (default) for both "nngp" and "ntk", or "nngp", "ntk" or a
            tuple of them (one stored array each).
        client: None to compute in this process with `threads` threads; or a
            `dask.distributed.Client`, a cluster object (`LocalCluster`, dask-jobqueue's
            `SLURMCluster`) or a scheduler address ("tcp://host:8786") whose workers compute
            the tiles (the store must be on a file system they all see).
        dtype: dtype of the inputs handed to kernel_fn and of the stored kernel.
        description: what determines kernel_fn's values; required for plain callables
            (a layer's default is its repr). Stored and compared on resume.
        device: torch device kernel_fn runs on, on every worker ("cuda" for GPU workers).
        threads: in-process tile threads (default 1: a layer's kernel already computes each
            tile's blocks on all the cores). With more, each tile's blocks get
            cores / threads of them, so that the machine is not oversubscribed.
        progress: show a progress bar over tiles with an ETA (tqdm).
        check_space: refuse to start when the free disk space is smaller than the missing
            tiles need.
        check_existing: when continuing a store, check every finished tile's data against the
            CRC-32 in its record first and recompute the damaged ones (with a warning). Costs
            one read of the stored tiles (see benchmarks/tiles.py); False trusts them.

    Returns:
        A `TileRun` (tiles computed / skipped; `.open()` and `.load()` read the result).

    Raises:
        StoreMismatchError: the store holds a kernel of a different net, inputs, dtype, tile or
            get.
        TileStoreError: the path is not a readable widenets tile store, or another run is
            computing it.
        ValueError: no inputs (0 rows) or no features; a store path below a regular file.
        TileError: a tile failed (finished tiles are kept; a rerun resumes). TypeError,
            ValueError and FloatingPointError from a tile (kernel_fn returned the wrong
            shape, or NaN) keep their type.
        OSError: the disk is full (ENOSPC); finished tiles are kept.
        KeyboardInterrupt: Ctrl-C; finished tiles are kept.

    Example:
        >>> net = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1))
        >>> x = torch.randn(10, 3, dtype=torch.float64)
        >>> run = wn.tiles.compute(net, x, store="k.zarr", get="ntk")
        >>> run.tiles_computed, run.tiles_total
        (1, 1)
        >>> wn.tiles.compute(net, x, store="k.zarr", get="ntk").tiles_skipped    # resumed: done
        1
    """
    from .. import __version__

    start = time.perf_counter()
    gets = parse_get(get, _FUNC)
    if len(set(gets)) != len(gets):
        raise ValueError(f"{_FUNC}: get lists a kernel twice: {get!r}")
    gets = tuple(g for g in ("nngp", "ntk") if g in gets)  # one canonical order
    if dtype not in _DTYPES:
        raise TypeError(f"{_FUNC}: dtype must be torch.float64, float32 or float16 (the dtypes "
                        f"a zarr store holds), got {dtype!r}")
    kind, desc = describe_kernel_fn(kernel_fn, description, func=_FUNC)
    threads = _check_int(threads, "threads") or 1
    device = _check_device(device)
    if not isinstance(check_existing, bool):
        raise TypeError(f"{_FUNC}: check_existing must be True or False, got {check_existing!r}")
    x1 = _inputs(x1, "x1", dtype)
    if x2 is not None:
        x2 = _inputs(x2, "x2", dtype)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(f"{_FUNC}: x1 and x2 must have the same shape after the batch "
                             f"axis, got x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)}")
    symmetric = x2 is None
    shape = (x1.shape[0], (x1 if symmetric else x2).shape[0])
    aux = _graph_inputs(kernel_fn, pattern, mask, shape, symmetric)
    root = _as_path(store, _FUNC)
    exists = root.exists() and not (root.is_dir() and not any(root.iterdir()))  # empty: new
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
        if exists:  # resume with the store's own tiles
            stored_meta = read_metadata(root, func=_FUNC)[1]
            batch_size = tuple(stored_meta["tile"])
            if stored_meta["shape"] != list(shape):
                batch_size = DEFAULT_BATCH_SIZE  # a mismatch: reported below
    tile = _check_tile(batch_size, shape, symmetric)

    wanted = {"format": FORMAT, "kind": kind, "description": desc, "get": list(gets),
              "dtype": _DTYPES[dtype], "symmetric": symmetric, "shape": list(shape),
              "tile": list(tile), "x1": _with_aux(fingerprint(x1), aux[0], aux[2]),
              "x2": _with_aux(fingerprint(x2), aux[1], aux[3]),
              "widenets_version": __version__}
    created = None
    if not exists:
        meta = dict(wanted, uuid=uuid.uuid4().hex, created=time.time())
        created = init_store(root, meta, func=_FUNC)  # None: another run created it first
    if created is None:
        lay, meta = read_metadata(root, func=_FUNC)
        check_metadata(meta, wanted, root, func=_FUNC)
        if meta.get("widenets_version") != __version__:
            warnings.warn(f"{_FUNC}: the store {str(root)!r} was started by widenets "
                          f"{meta.get('widenets_version')} and is continued by {__version__}; "
                          f"if the kernel formulas changed in between, start a new store",
                          RuntimeWarning, stacklevel=3)
        lock = StoreLock(lay, func=_FUNC)
        try:
            lay.done.mkdir(exist_ok=True)
            clean_partial_files(lay)
            if check_existing:
                _recheck_finished(lay, meta, threads)
        except BaseException:
            lock.release()
            raise
    else:
        lay, lock = created
    try:
        return _compute_missing(kernel_fn, x1, x2, lay, meta, gets, dtype, device, shape, tile,
                                symmetric, client, threads, progress, check_space, start, aux)
    finally:
        lock.release()


def _compute_missing(kernel_fn, x1, x2, lay, meta, gets, dtype, device, shape, tile, symmetric,
                     client, threads, progress, check_space, start, aux=(None,) * 4) -> TileRun:
    """Compute the tiles the store lacks (the store is locked by this process)."""
    tiles = tile_list(shape, tile, symmetric)
    done = done_tiles(lay, meta)
    todo = [t for t in tiles if t not in done]
    if check_space and todo:
        _check_space(lay, meta, todo, dtype)

    job = TileJob(kernel_fn=kernel_fn, is_layer=isinstance(kernel_fn, Layer), get=gets,
                  dtype=dtype, device=device, root=lay.root, meta=meta, aux=aux)
    bar = _progress_bar(progress, len(tiles), len(tiles) - len(todo), lay.root)
    try:
        if todo:
            if client is None:
                _run_local(job, x1, x2, todo, threads, bar, lay, len(tiles))
            else:
                client, own = _as_client(client)
                try:
                    _run_dask(client, job, x1, x2, todo, bar, lay, len(tiles))
                finally:
                    if own:
                        client.close()
    finally:
        if bar is not None:
            bar.close()
    return TileRun(store=lay.root, tiles_total=len(tiles), tiles_skipped=len(tiles) - len(todo),
                   tiles_computed=len(todo), seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------ helpers
def _inputs(x, arg: str, dtype) -> torch.Tensor:
    x = as_input_tensor(x, func=_FUNC, arg=arg, dtype=dtype).cpu().contiguous()
    if x.ndim < 2 or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise ValueError(f"{_FUNC}: {arg} must be (n, features...) with n >= 1 inputs and at "
                         f"least one feature, got shape {tuple(x.shape)}; nothing was stored")
    return x


def _recheck_finished(lay: StoreLayout, meta: dict, threads: int) -> list:
    """CRC-check every finished tile of a store being resumed; drop the records of damaged
    ones (with a warning) so that they are recomputed. Returns the damaged tiles."""
    done = sorted(done_tiles(lay, meta))
    if not done:
        return []
    # zlib.crc32 and file reads release the GIL: a few threads overlap them.
    with ThreadPoolExecutor(max_workers=max(2, threads)) as pool:
        reasons = list(pool.map(lambda t: check_tile(lay, meta, *t, func=_FUNC), done))
    bad = [(t, r) for t, r in zip(done, reasons, strict=True) if r is not None]
    for (i, j), _ in bad:
        remove_record(lay, i, j)
    if bad:
        warnings.warn(f"{_FUNC}: {len(bad)} finished tile(s) of {str(lay.root)!r} failed their "
                      f"CRC-32 check and will be recomputed, e.g. {bad[0][1]}", RuntimeWarning,
                      stacklevel=4)
    return [t for t, _ in bad]


def _progress_bar(progress: bool, total: int, initial: int, root: Path):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="tile", desc=f"tiles -> {root.name}",
                smoothing=0.1)


def _tile_bytes(meta: dict, t: tuple[int, int], dtype: torch.dtype) -> int:
    (r0, r1), (c0, c1) = _bounds(meta, *t)
    return (r1 - r0) * (c1 - c0) * torch.empty((), dtype=dtype).element_size()


def _check_space(lay: StoreLayout, meta: dict, todo, dtype) -> None:
    need = sum(_tile_bytes(meta, t, dtype) for t in todo) * len(meta["get"])
    free = shutil.disk_usage(lay.root).free
    if need > free:
        raise OSError(errno.ENOSPC,
                      f"{_FUNC}: the {len(todo)} missing tiles need {_gigabytes(need)} but "
                      f"only {_gigabytes(free)} are free under {str(lay.root)!r}; free space or "
                      f"use a store on a larger disk (check_space=False skips this check)")


def _stop_message(lay: StoreLayout, n_total: int) -> str:
    n_done = len(list(lay.done.glob("*-*.json")))
    return (f"{n_done} of {n_total} tiles are finished and kept in {str(lay.root)!r}; "
            f"rerun the same call to compute the rest")


def _failure(exc: BaseException, t, lay: StoreLayout, n_total: int) -> BaseException:
    """The error to raise when tile t failed with exc."""
    kept = _stop_message(lay, n_total)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return OSError(exc.errno, f"{_FUNC}: disk full while writing tile {t} ({exc}); "
                                  f"the unfinished tile was not recorded. {kept} after "
                                  f"freeing space")
    if type(exc) in (TypeError, ValueError, FloatingPointError):
        # A misuse (kernel_fn's contract, bad values): keep the type users can catch.
        return type(exc)(f"{exc} (tile {t}). {kept}")
    return TileError(f"{_FUNC}: tile {t} failed with {type(exc).__name__}: {exc}. {kept}")


def _run_here(job, x1, x2, todo, bar, lay, n_total) -> None:
    """Tiles computed one by one in this thread, each written by a writer thread while the
    next one computes. torch's intra-op (OpenMP) parallelism is ~1.5x slower when driven from
    a pool thread (measured on the 2-core machine), and writing overlaps computing. Ctrl-C
    stops the tile in flight (not recorded, so a rerun redoes it) and lets the write of the
    last computed tile finish."""
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="widenets-tile-writer")
    pending = None                                   # (future of a write, its tile)

    def finish():
        fut, t = pending
        exc = fut.exception()
        if exc is not None:
            raise _failure(exc, t, lay, n_total) from exc
        if bar is not None:
            bar.update(1)

    try:
        for t in todo:
            try:
                blocks, seconds = compute_tile(job, x1, x2, *t)
            except Exception as exc:
                if pending is not None:
                    wait([pending[0]])
                raise _failure(exc, t, lay, n_total) from exc
            if pending is not None:
                finish()
            pending = (writer.submit(store_tile, job, *t, blocks, seconds), t)
        if pending is not None:
            finish()
    except KeyboardInterrupt:
        if pending is not None:
            wait([pending[0]])
        raise KeyboardInterrupt(f"{_FUNC}: interrupted; {_stop_message(lay, n_total)}") \
            from None
    finally:
        writer.shutdown(wait=True)


def _run_local(job, x1, x2, todo, threads, bar, lay, n_total) -> None:
    if threads == 1:
        _run_here(job, x1, x2, todo, bar, lay, n_total)
        return
    # tile threads x the block threads of each tile's kernel stay within the cores
    per_tile = max(1, block_threads() // threads)

    def run_tile_limited(*args):
        # set torch's count in this pool thread explicitly: a new thread copies the
        # process-wide value, which another thread's kernel call may hold at 1 at that moment
        with torch_threads(per_tile), threads_limit(per_tile):
            return run_tile(*args)

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="widenets-tile")
    pending = {}
    queue = list(reversed(todo))
    try:
        while queue or pending:
            # Keep at most `threads` tiles in flight: Ctrl-C then waits for those only.
            while queue and len(pending) < threads:
                t = queue.pop()
                pending[pool.submit(run_tile_limited, job, x1, x2, *t)] = t
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for f in finished:
                t = pending.pop(f)
                exc = f.exception()
                if exc is not None:
                    wait(pending)  # let the running tiles finish and record themselves
                    pending.clear()
                    raise _failure(exc, t, lay, n_total) from exc
                if bar is not None:
                    bar.update(1)
    except KeyboardInterrupt:
        wait(pending)
        raise KeyboardInterrupt(f"{_FUNC}: interrupted; {_stop_message(lay, n_total)}") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _as_client(client):
    """(a dask Client, whether this call created it) from a Client, cluster or address."""
    from distributed import Client

    if isinstance(client, Client):
        return client, False
    if isinstance(client, str) or hasattr(client, "scheduler_address"):
        return Client(client), True
    raise TypeError(f"{_FUNC}: client must be None, a dask.distributed.Client, a cluster "
                    f"(LocalCluster, SLURMCluster, ...) or a scheduler address string, got "
                    f"{type(client).__name__}")


def _run_dask(client, job, x1, x2, todo, bar, lay, n_total) -> None:
    try:
        from distributed import as_completed
    except ImportError as e:  # pragma: no cover - dask[distributed] is a dependency
        raise ImportError(f"{_FUNC}: client= needs dask.distributed; pip install "
                          f"'dask[distributed]'") from e
    seen = client.run(_store_visible, str(lay.root))
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        raise ValueError(f"{_FUNC}: the store {str(lay.root)!r} is not visible on worker(s) "
                         f"{', '.join(blind)}; workers write tiles directly, so put the store "
                         f"on a file system every worker mounts at the same path")
    # Ship the inputs and the job to every worker once; tile tasks carry only indices.
    [job_f, x1_f] = client.scatter([job, x1], broadcast=True, hash=False)
    x2_f = None if x2 is None else client.scatter([x2], broadcast=True, hash=False)[0]
    token = uuid.uuid4().hex[:8]
    futures = {}
    for t in todo:
        f = client.submit(run_tile, job_f, x1_f, x2_f, *t, pure=False,
                          key=f"widenets-tile-{token}-{t[0]}-{t[1]}")
        futures[f] = t
    try:
        for f in as_completed(list(futures)):
            if f.status != "finished":
                exc = f.exception()
                client.cancel(list(futures))
                raise _failure(exc, futures[f], lay, n_total) from exc
            if bar is not None:
                bar.update(1)
            f.release()
    except KeyboardInterrupt:
        client.cancel(list(futures))
        raise KeyboardInterrupt(f"{_FUNC}: interrupted; {_stop_message(lay, n_total)}") from None
    finally:
        client.cancel([job_f, x1_f] + ([] if x2_f is None else [x2_f]))


def _store_visible(path: str) -> bool:
    return Path(path, "widenets.json").exists()
