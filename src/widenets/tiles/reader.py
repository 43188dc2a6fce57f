"""Reading a tile store back: lazily (dask), whole (a tensor, when it fits), or checked.

For symmetric kernels only the upper triangle of tiles is stored; every reader here mirrors it:
block (i, j) with i > j is the transpose of the stored block (j, i). Diagonal tiles are stored
whole, made exactly symmetric from their upper triangle when computed, so the whole kernel read
back is exactly symmetric.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .._memory import memory_budget
from ..layers.base import parse_get
from .store import (
    IncompleteStoreError,
    StoreLayout,
    _array,
    check_tile,
    done_tiles,
    read_checked_block,
    read_metadata,
    remove_record,
    tile_list,
)
from .whole import missing_tiles, read_whole

__all__ = ["open", "load_kernel", "status", "verify", "KernelTooLargeError"]


class KernelTooLargeError(ValueError):
    """The stored kernel does not fit in the memory allowed for loading it.

    Example:
        >>> issubclass(wn.tiles.KernelTooLargeError, ValueError)
        True
    """


def _make_kernel_array(arr, lay: StoreLayout, meta: dict, name: str, check: bool = True):
    from ._kernel_array import KernelArray

    out = KernelArray(arr.dask, arr.name, arr.chunks, meta=arr._meta)
    out._widenets_source = (lay, meta, name, check)
    out.metadata = meta
    out.store = lay.root
    return out


def _select_gets(meta: dict, get, func: str) -> tuple[tuple[str, ...], bool]:
    stored = tuple(meta["get"])
    if get is None:
        return stored, len(stored) == 1
    gets = parse_get(get, func)
    missing = [g for g in gets if g not in stored]
    if missing:
        raise ValueError(f"{func}: the store holds {', '.join(stored)} but {missing[0]!r} was "
                         f"asked for; compute it into a new store with get={missing[0]!r}")
    return gets, isinstance(get, str)


def _check_complete(lay: StoreLayout, meta: dict, func: str, allow_incomplete: bool) -> list:
    """The missing tiles; an error when there are any and allow_incomplete is False."""
    missing = missing_tiles(lay, meta)
    if missing and not allow_incomplete:
        total = len(tile_list(tuple(meta["shape"]), tuple(meta["tile"]), meta["symmetric"]))
        raise IncompleteStoreError(
            f"{func}: the store {str(lay.root)!r} is incomplete: {len(missing)} of {total} tiles "
            f"are missing (e.g. tile {missing[0]}), a run was interrupted. Rerun the same "
            f"wn.tiles.compute call to finish it, or pass allow_incomplete=True to read missing "
            f"tiles as NaN")
    return missing


def open(store, *args, get=None, allow_incomplete: bool = False,  # noqa: A001 - public name
         check: bool = True):
    """The kernel(s) of a tile store as lazy dask arrays, mirrored when symmetric.

    Args:
        store: a store directory written by `wn.tiles.compute`.
        get: keyword-only; None for every stored kernel; "nngp" or "ntk" for one; a tuple for
            several. (Passing it positionally is deprecated.)
        allow_incomplete: read an interrupted store anyway (missing tiles read as NaN).
        check: check each tile's CRC-32 (stored in its record) as it is read, so that a
            damaged tile raises `CorruptTileError` instead of returning wrong numbers. The
            cost is one CRC per byte read (measured in benchmarks/tiles.py); False skips it.

    Returns:
        A `KernelArray` (a `dask.array.Array` of shape (n1, n2) with `.load()` -> tensor), or a
        tuple of them when `get` is a tuple (in that order), or when get is None and the store
        holds both kernels (in ("nngp", "ntk") order).

    Raises:
        IncompleteStoreError: tiles are missing and allow_incomplete is False.
        CorruptTileError: (when the array is computed) a tile fails its CRC-32 check or
            cannot be read.

    Example:
        >>> import tempfile, torch, widenets as wn
        >>> store = tempfile.mkdtemp() + "/k.zarr"
        >>> x = torch.randn(6, 3, dtype=torch.float64)
        >>> _ = wn.tiles.compute(wn.serial(wn.Dense(4), wn.Relu()), x, store=store,
        ...                      batch_size=4, get="ntk")
        >>> wn.tiles.open(store).shape
        (6, 6)
    """
    import dask.array as da

    func = "tiles.open"
    if args:
        if len(args) > 1 or get is not None:
            raise TypeError(f"{func}: takes the store and keyword arguments (get=, "
                            f"allow_incomplete=, check=), got {len(args) + 1} positional")
        warnings.warn(f"{func}: passing get positionally is deprecated since 0.2; use "
                      f"get={args[0]!r}", FutureWarning, stacklevel=2)
        get = args[0]
    _check_bool(check, "check", func)
    lay, meta = read_metadata(store, func=func)
    gets, single = _select_gets(meta, get, func)
    missing = set(_check_complete(lay, meta, func, allow_incomplete))
    out = []
    for name in gets:
        stored = da.from_zarr(_array(lay.root, name, meta, mode="r"), name=False)
        if check or meta["symmetric"] or missing:
            stored = _tiled(stored, lay, meta, name, missing, check, func)
        out.append(_make_kernel_array(stored, lay, meta, name, check))
    return out[0] if single else tuple(out)


def _check_bool(value, arg: str, func: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{func}: {arg} must be True or False, got {value!r}")


def _tiled(stored, lay, meta, name, missing, check, func):
    """The stored array rebuilt tile by tile: missing tiles NaN (even where a killed write
    left data behind), tiles CRC-checked as they are read, the lower triangle mirrored."""
    import dask
    import dask.array as da

    blocks = {}

    def block(i, j):
        if (i, j) not in blocks:
            shape = stored.blocks[i, j].shape
            if (i, j) in missing:
                blocks[i, j] = da.full(shape, np.nan, dtype=stored.dtype)
            elif check:
                read = dask.delayed(read_checked_block, pure=True)(
                    lay, meta, name, i, j, func=func,
                    dask_key_name=f"widenets-tile-{meta['uuid']}-{name}-{i}-{j}")
                blocks[i, j] = da.from_delayed(read, shape, dtype=stored.dtype)
            else:
                blocks[i, j] = stored.blocks[i, j]
        return blocks[i, j]

    n1, n2 = stored.numblocks
    sym = meta["symmetric"]
    return da.block([[block(i, j) if i <= j or not sym else block(j, i).T for j in range(n2)]
                     for i in range(n1)])


def load_kernel(store, *, get=None, max_bytes: int | None = None, device=None,
                check: bool = True):
    """Load a stored kernel into memory as torch tensor(s), if it fits.

    Args:
        store: a store directory written by `wn.tiles.compute`.
        get: as in `open`.
        check: check each tile's CRC-32 as it is read (as in `open`).
        max_bytes: the most bytes the loaded kernels may take; default half of the memory
            available now.
        device: where to put the tensors (default CPU).

    Returns:
        An (n1, n2) tensor of the store's dtype, or a tuple of them (as `open`).

    Raises:
        KernelTooLargeError: the kernels need more than max_bytes; use `wn.tiles.open` for
            lazy, tile by tile access instead.
        IncompleteStoreError: tiles are missing.
        CorruptTileError: a tile fails its CRC-32 check or cannot be read.

    Example:
        >>> import tempfile, torch, widenets as wn
        >>> store = tempfile.mkdtemp() + "/k.zarr"
        >>> net = wn.serial(wn.Dense(4), wn.Relu())
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> _ = wn.tiles.compute(net, x, store=store, batch_size=2, get="nngp")
        >>> torch.allclose(wn.tiles.load_kernel(store), net.kernel(x, get="nngp"))
        True
    """
    func = "tiles.load_kernel"
    _check_bool(check, "check", func)
    lay, meta = read_metadata(store, func=func)
    gets, single = _select_gets(meta, get, func)
    if max_bytes is not None and (isinstance(max_bytes, bool)
                                  or not isinstance(max_bytes, (int, float))
                                  or not max_bytes >= 0):
        raise ValueError(f"{func}: max_bytes must be a number of bytes >= 0 or None, got "
                         f"{max_bytes!r}")
    n1, n2 = meta["shape"]
    need = n1 * n2 * np.dtype(meta["dtype"]).itemsize * len(gets)
    limit = memory_budget() if max_bytes is None else max_bytes
    if need > limit:
        what = "half of the memory available now" if max_bytes is None else "max_bytes"
        raise KernelTooLargeError(
            f"{func}: the {' and '.join(gets)} kernel{'s' if len(gets) > 1 else ''} in "
            f"{str(lay.root)!r} ({n1} x {n2} {meta['dtype']}) need {need / 1e9:.2f} GB in "
            f"memory, more than {what} ({limit / 1e9:.2f} GB); read it lazily with "
            f"wn.tiles.open(store) (a dask array), use a machine with more memory, or raise "
            f"max_bytes")
    _check_complete(lay, meta, func, allow_incomplete=False)
    out = []
    for name in gets:
        t = torch.from_numpy(read_whole(lay, meta, name, check=check, func=func))
        out.append(t if device is None else t.to(device))
    return out[0] if single else tuple(out)


def status(store) -> dict:
    """How far a store is: {"tiles_total", "tiles_done", "missing": [(i, j), ...], "metadata"}.

    Example:
        >>> net = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1))
        >>> x = torch.randn(10, 3, dtype=torch.float64)
        >>> run = wn.tiles.compute(net, x, store="k.zarr", get="ntk")
        >>> info = wn.tiles.status("k.zarr")
        >>> info["tiles_done"], info["missing"]
        (1, [])
    """
    lay, meta = read_metadata(store, func="tiles.status")
    tiles = tile_list(tuple(meta["shape"]), tuple(meta["tile"]), meta["symmetric"])
    missing = missing_tiles(lay, meta)
    return {"tiles_total": len(tiles), "tiles_done": len(tiles) - len(missing),
            "missing": missing, "metadata": meta}


def verify(store, *, repair: bool = False) -> list[tuple[int, int]]:
    """Check every finished tile's data against the CRC-32 in its record.

    A damaged record (unreadable JSON, no CRC) or unreadable data counts as damage too.

    Args:
        store: a store directory.
        repair: drop the records of damaged tiles, so that the next `compute` redoes them.

    Returns:
        The damaged tiles (i, j) (empty when the store is intact).

    Example:
        >>> net = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1))
        >>> x = torch.randn(10, 3, dtype=torch.float64)
        >>> run = wn.tiles.compute(net, x, store="k.zarr", get="ntk")
        >>> wn.tiles.verify("k.zarr")                         # tiles whose data fail their CRC
        []
    """
    func = "tiles.verify"
    lay, meta = read_metadata(store, func=func)
    bad = []
    for i, j in sorted(done_tiles(lay, meta, repair=False)):
        if check_tile(lay, meta, i, j, func=func) is not None:
            bad.append((i, j))
            if repair:
                remove_record(lay, i, j)
    return bad
