"""The on-disk layout of a tiled kernel store, its metadata and its atomic tile records.

A store is a directory (a zarr group, format 3 with zarr 3, format 2 with zarr 2 on Python
3.10) that holds one chunked array per kernel and the bookkeeping that makes a run resumable:

    STORE/
      zarr.json            zarr group metadata (.zgroup/.zattrs in format 2);
                           attributes["widenets"] = a copy of the metadata
      nngp/, ntk/          zarr arrays of shape (n1, n2), one chunk per tile (chunk files
                           nngp/c/I/J, or nngp/I/J in format 2), no compression, fill value NaN
                           (a tile never written reads as NaN, never as 0)
      widenets.json        the metadata (authoritative): net description, inputs' fingerprints,
                           dtype, tile, shape, widenets version
      done/I-J.json        one record per finished tile: its row/column ranges and a CRC-32 of
                           each kernel's tile bytes
      .lock                flock held by the process running `compute` (one run at a time)

A tile counts as finished only when its record exists. Records are written after every kernel's
chunk of that tile is on disk, by write-to-temporary-then-rename, so a run killed at any instant
leaves either a finished tile or no record (the tile is recomputed). A new store is built in a
temporary directory and renamed into place, so a store either exists with its metadata or does
not exist at all.

For symmetric kernels (x2 None) only tiles (i, j) with i <= j are computed and stored; the
reader mirrors them (`reader.py`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "FORMAT", "TileStoreError", "StoreMismatchError", "IncompleteStoreError", "CorruptTileError",
    "StoreLayout", "fingerprint", "describe_kernel_fn", "tile_ranges", "tile_list", "init_store",
    "read_metadata", "check_metadata", "done_tiles", "write_tile", "clean_partial_files",
    "tile_record", "remove_record", "StoreLock", "read_checked_block", "check_tile",
]

FORMAT = "widenets-tiles/1"
_META = "widenets.json"
_DONE = "done"


class TileStoreError(RuntimeError):
    """A store that cannot be used: unreadable, not a widenets store, or damaged.

    Example:
        >>> issubclass(wn.tiles.TileStoreError, RuntimeError)
        True
    """


class StoreMismatchError(ValueError):
    """The store was made by a different net, inputs, dtype, tile or `get` than this call.

    Example:
        >>> net = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1))
        >>> x = torch.randn(10, 3, dtype=torch.float64)
        >>> run = wn.tiles.compute(net, x, store="k.zarr", get="ntk")
        >>> wn.tiles.compute(net, 2 * x, store="k.zarr", get="ntk")
        Traceback (most recent call last):
        ...
        widenets.tiles...StoreMismatchError: tiles.compute: the existing store ...
    """


class IncompleteStoreError(TileStoreError):
    """The store is missing tiles (a run was interrupted); rerun `compute` to finish it.

    Example:
        >>> issubclass(wn.tiles.IncompleteStoreError, wn.tiles.TileStoreError)
        True
    """


class CorruptTileError(TileStoreError):
    """A finished tile's data (or its record) is damaged: its bytes fail the CRC-32 stored in
    its record, or cannot be read. Rerunning the `compute` call recomputes damaged tiles.

    Example:
        >>> issubclass(wn.tiles.CorruptTileError, wn.tiles.TileStoreError)
        True
    """


# ------------------------------------------------------------------------------ helpers
def _atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def fingerprint(x: torch.Tensor | None) -> dict | None:
    """Shape, dtype and SHA-256 of the bytes of an input batch (None for None).

    Args:
        x: (n, ...) inputs, already in the dtype the kernel is computed in.
    """
    if x is None:
        return None
    arr = np.ascontiguousarray(x.detach().cpu().numpy())
    digest = hashlib.sha256(arr.view(np.uint8).reshape(-1).data).hexdigest()
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": digest}


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe_kernel_fn(kernel_fn, description: str | None, *, func: str) -> tuple[str, str]:
    """The (kind, description) recorded for `kernel_fn`.

    A widenets layer is described by `describe.describe_layer`: its `repr` (the architecture
    and its hyperparameters) plus the content of every Python callable it holds (Elementwise's
    fn: code, captured values, globals read, partial arguments, module parameters). A layer
    holding a callable that cannot be described, and any plain callable, need a user-given
    `description`. Memory addresses (`<function f at 0x...>`) are removed so that the
    description is the same in a new process.
    """
    from ..layers.base import Layer
    from .describe import DescriptionError, describe_layer

    if description is not None and (not isinstance(description, str) or not description.strip()):
        raise TypeError(f"{func}: description must be a non-empty str, got {description!r}")
    if isinstance(kernel_fn, Layer):
        if description is None:
            try:
                description = describe_layer(kernel_fn)
            except DescriptionError as e:
                raise TypeError(
                    f"{func}: cannot describe the net for the store: {e}. A store must know "
                    f"everything that determines the kernel's values to refuse mixing two "
                    f"nets; pass description='...' naming it (e.g. description='tanh(2 z) "
                    f"net, scale 2.0')") from None
        return "layer", _ADDRESS.sub("", description)
    if not callable(kernel_fn):
        raise TypeError(f"{func}: kernel_fn must be a widenets net (wn.Layer) or a callable "
                        f"kernel_fn(x1, x2, get=...), got {type(kernel_fn).__name__}")
    if description is None:
        raise TypeError(f"{func}: kernel_fn is a plain callable, so the store cannot describe it "
                        f"by itself; pass description='...' naming everything that determines "
                        f"its values (model, seed, width, n_samples), e.g. "
                        f"description='empirical NTK of resnet18, seed 0'")
    return "callable", _ADDRESS.sub("", description)


def tile_ranges(n: int, b: int) -> list[tuple[int, int]]:
    """[(start, stop)] of the tiles of size b covering range(n); the last may be smaller."""
    return [(s, min(s + b, n)) for s in range(0, n, b)]


def tile_list(shape: tuple[int, int], tile: tuple[int, int], symmetric: bool) -> list:
    """All tile indices (i, j) of a store, row-major; for symmetric kernels only i <= j."""
    n1, n2 = (len(tile_ranges(shape[0], tile[0])), len(tile_ranges(shape[1], tile[1])))
    return [(i, j) for i in range(n1) for j in range(n2) if not symmetric or i <= j]


# ------------------------------------------------------------------------------ layout
def _zarr_major() -> int:
    import zarr

    return int(zarr.__version__.split(".")[0])


@dataclass(frozen=True)
class StoreLayout:
    """Paths inside a store (a local directory) of zarr format `zarr_format` (3 or 2)."""

    root: Path
    zarr_format: int = 3

    @property
    def meta(self) -> Path:
        return self.root / _META

    @property
    def done(self) -> Path:
        return self.root / _DONE

    def record(self, i: int, j: int) -> Path:
        return self.done / f"{i}-{j}.json"

    def chunk(self, name: str, i: int, j: int) -> Path:
        # Format 3: chunk_key_encoding {"name": "default", "separator": "/"}; format 2:
        # dimension_separator "/" (both set in init_store).
        if self.zarr_format == 2:
            return self.root / name / str(i) / str(j)
        return self.root / name / "c" / str(i) / str(j)

    def array_meta(self, name: str) -> Path:
        return self.root / name / ("zarr.json" if self.zarr_format == 3 else ".zarray")


def _as_path(store, func: str) -> Path:
    if isinstance(store, (str, os.PathLike)):
        s = os.fspath(store)
        if "://" in s:
            raise ValueError(f"{func}: store must be a local directory path (visible to every "
                             f"worker, e.g. on a shared file system), got the URL {s!r}")
        root = Path(s).expanduser().absolute()
        for parent in root.parents:
            if parent.exists() and not parent.is_dir():
                raise ValueError(f"{func}: store must be a directory path, but {str(root)!r} "
                                 f"lies below {str(parent)!r}, which is a file; choose a store "
                                 f"path inside a directory")
            if parent.is_dir():
                break
        return root
    raise TypeError(f"{func}: store must be a directory path (str or os.PathLike), "
                    f"got {type(store).__name__}")


# ------------------------------------------------------------------------------ metadata
def init_store(store, meta: dict, *, func: str):
    """Create a new store atomically: build it in a temporary directory, then rename it.

    Args:
        store: the directory to create (must not exist, or be empty).
        meta: metadata (see `compute`); needs "shape", "tile", "dtype" and "get". Its
            "zarr_format" is set here.

    Returns:
        (layout, lock): the new store and its `StoreLock`, taken before the store appears under
        its name (so a concurrent run sees it locked); or None when another process created
        the store first (between the caller's check and the rename): the caller then opens
        it as an existing store.

    Raises:
        OSError: the store cannot be created there (the message names the store, not the
            temporary directory).
    """
    import zarr

    root = _as_path(store, func)
    meta["zarr_format"] = 3 if _zarr_major() >= 3 else 2
    tmp = root.with_name(f".{root.name}.{uuid.uuid4().hex}.init")
    lock = None
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        if meta["zarr_format"] == 3:
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            for name in meta["get"]:
                group.create_array(
                    name, shape=tuple(meta["shape"]), chunks=tuple(meta["tile"]),
                    dtype=meta["dtype"], fill_value=np.nan, compressors=None,
                    chunk_key_encoding={"name": "default", "separator": "/"})
        else:  # zarr 2 (Python 3.10)
            group = zarr.open_group(str(tmp), mode="w")
            for name in meta["get"]:
                group.create_dataset(
                    name, shape=tuple(meta["shape"]), chunks=tuple(meta["tile"]),
                    dtype=meta["dtype"], fill_value=np.nan, compressor=None,
                    dimension_separator="/")
        group.attrs["widenets"] = meta
        (tmp / _DONE).mkdir()
        _atomic_write_text(tmp / _META, json.dumps(meta, indent=1))
        # The lock is on the lock file's inode: taken here, it holds once the store is renamed.
        lock = StoreLock(StoreLayout(tmp, meta["zarr_format"]), func=func)
        try:
            os.rename(tmp, root)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and root.is_dir():
                lock.release()
                shutil.rmtree(tmp, ignore_errors=True)
                return None  # another run created the store first
            raise
    except BaseException as e:
        if lock is not None:
            lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, TileStoreError):
            err = type(e)(f"{func}: cannot create the tile store {str(root)!r}: "
                          f"{e.strerror or e}")
            err.errno = e.errno
            raise err from None
        raise
    return StoreLayout(root, meta["zarr_format"]), lock


def read_metadata(store, *, func: str) -> tuple[StoreLayout, dict]:
    """The layout and metadata of an existing store, or a clear error."""
    root = _as_path(store, func)
    if not root.exists():
        raise FileNotFoundError(f"{func}: no tile store at {str(root)!r}; create it with "
                                f"wn.tiles.compute(..., store={str(root)!r})")
    lay = StoreLayout(root)  # for the metadata path; the format is read below
    if not root.is_dir() or not lay.meta.exists():
        raise TileStoreError(f"{func}: {str(root)!r} exists but is not a widenets tile store "
                             f"(no {_META}); pass a new store path or remove it")
    try:
        meta = json.loads(lay.meta.read_text())
    except (OSError, ValueError) as e:
        raise TileStoreError(f"{func}: the metadata {str(lay.meta)!r} of the tile store is "
                             f"unreadable ({e}); the store is damaged: remove it and recompute"
                             ) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise TileStoreError(f"{func}: {str(lay.meta)!r} is not widenets tile metadata of format "
                             f"{FORMAT!r} (got format {got!r})")
    lay = StoreLayout(root, meta.get("zarr_format", 3))
    if lay.zarr_format == 3 and _zarr_major() < 3:
        raise TileStoreError(f"{func}: the tile store {str(root)!r} is in zarr format 3, which "
                             f"needs zarr >= 3 (Python >= 3.11); this environment has zarr "
                             f"{_zarr_major()}")
    for name in meta["get"]:
        if not lay.array_meta(name).exists():
            raise TileStoreError(f"{func}: the tile store {str(root)!r} lacks its {name!r} array; "
                                 f"the store is damaged: remove it and recompute")
    return lay, meta


# Fields that must agree for a call to continue an existing store, with how to say it.
_CHECKED = [
    ("description", "net (kernel_fn)"),
    ("x1", "inputs x1"),
    ("x2", "inputs x2"),
    ("symmetric", "symmetry (x2 None or not)"),
    ("get", "kernels (get)"),
    ("dtype", "dtype"),
    ("shape", "shape"),
    ("tile", "tile (batch_size)"),
]


def _short(v) -> str:
    if isinstance(v, dict) and "sha256" in v:
        return f"shape {v['shape']} {v['dtype']} sha256 {v['sha256'][:12]}"
    s = repr(v)
    return s if len(s) <= 200 else s[:197] + "..."


def check_metadata(stored: dict, wanted: dict, root: Path, *, func: str) -> None:
    """Refuse to continue a store made by a different net, inputs, dtype, tile or get."""
    bad = [(label, stored.get(k), wanted.get(k)) for k, label in _CHECKED
           if stored.get(k) != wanted.get(k)]
    if bad:
        lines = "; ".join(f"{label}: store has {_short(a)}, this call has {_short(b)}"
                          for label, a, b in bad)
        raise StoreMismatchError(
            f"{func}: the existing store {str(root)!r} was computed for a different call "
            f"({lines}). Refusing to mix kernels: pass a new store path, or delete the store "
            f"to start over")


# ------------------------------------------------------------------------------ records
def done_tiles(lay: StoreLayout, meta: dict, *, repair: bool = True) -> set[tuple[int, int]]:
    """Tiles with a record whose chunk files all exist.

    With `repair`, a record whose data is missing is dropped (with a warning) so that the
    tile is recomputed; readers pass repair=False and only leave such tiles out.
    """
    import warnings

    done = set()
    try:
        names = os.listdir(lay.done)
    except FileNotFoundError:
        return done
    for fname in names:
        m = re.fullmatch(r"(\d+)-(\d+)\.json", fname)
        if not m:
            continue
        i, j = int(m.group(1)), int(m.group(2))
        if all(lay.chunk(name, i, j).exists() for name in meta["get"]):
            if repair:
                try:
                    tile_record(lay, i, j)
                except CorruptTileError:
                    warnings.warn(f"tile store {str(lay.root)!r}: the record of tile ({i}, {j}) "
                                  f"is damaged; the tile will be recomputed", RuntimeWarning,
                                  stacklevel=3)
                    remove_record(lay, i, j)
                    continue
            done.add((i, j))
        elif repair:
            warnings.warn(f"tile store {str(lay.root)!r}: tile ({i}, {j}) has a record but its "
                          f"data is missing; it will be recomputed", RuntimeWarning, stacklevel=3)
            remove_record(lay, i, j)
    return done


def tile_record(lay: StoreLayout, i: int, j: int, *, func: str = "tiles") -> dict | None:
    """The record of tile (i, j), or None when the tile is not finished.

    Raises:
        CorruptTileError: the record exists but is not a readable record with CRCs.
    """
    path = lay.record(i, j)
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CorruptTileError(f"{func}: the record {str(path)!r} of tile ({i}, {j}) is "
                               f"damaged ({type(e).__name__}: {e})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("crc32"), dict):
        raise CorruptTileError(f"{func}: the record {str(path)!r} of tile ({i}, {j}) is "
                               f"damaged (no CRC-32 values)")
    return rec


def read_checked_block(lay: StoreLayout, meta: dict, name: str, i: int, j: int, *,
                       func: str, record: dict | None = None) -> np.ndarray:
    """The stored block of tile (i, j) of kernel `name`, after checking its CRC-32.

    Args:
        record: the tile's record if already read (else it is read here).

    Raises:
        CorruptTileError: the record is missing or damaged, the data cannot be read (a
            truncated chunk file), or its CRC-32 differs from the record's.
    """
    rec = tile_record(lay, i, j, func=func) if record is None else record
    where = f"tile ({i}, {j}) of the {name} kernel in {str(lay.root)!r}"
    fix = ("; rerun the wn.tiles.compute call that made the store: it re-checks the finished "
           "tiles and recomputes damaged ones (wn.tiles.verify(store) lists them)")
    if rec is None:
        raise CorruptTileError(f"{func}: {where} has no record (it is not finished){fix}")
    try:
        block = np.ascontiguousarray(read_block(lay.root, name, meta, i, j))
    except Exception as e:  # noqa: BLE001 - any undecodable chunk is damage
        raise CorruptTileError(f"{func}: {where} is unreadable ({type(e).__name__}: {e}), e.g. "
                               f"a truncated chunk file {str(lay.chunk(name, i, j))!r}{fix}"
                               ) from None
    crc = zlib.crc32(block.view(np.uint8).reshape(-1).data)
    want = rec["crc32"].get(name)
    if crc != want:
        stored = f"{want:#010x}" if isinstance(want, int) else repr(want)
        raise CorruptTileError(f"{func}: {where} is damaged: its data fails the CRC-32 check "
                               f"(record {stored}, data {crc:#010x}); the chunk file "
                               f"{str(lay.chunk(name, i, j))!r} was altered{fix}")
    return block


def check_tile(lay: StoreLayout, meta: dict, i: int, j: int, *, func: str) -> str | None:
    """None when every kernel's data of finished tile (i, j) matches its record's CRC-32;
    otherwise the reason it does not (a damaged record, unreadable data, a CRC mismatch)."""
    try:
        rec = tile_record(lay, i, j, func=func)
        for name in meta["get"]:
            read_checked_block(lay, meta, name, i, j, func=func, record=rec)
    except CorruptTileError as e:
        return str(e)
    return None


def remove_record(lay: StoreLayout, i: int, j: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        lay.record(i, j).unlink()


class StoreLock:
    """An exclusive advisory lock (flock) on a store, held by the process running `compute`.

    Two runs writing the same store at once would not corrupt it (writes are atomic and the
    tiles identical) but would waste the work twice; the second run is refused instead. The
    operating system releases the lock when the process dies, even by SIGKILL.
    """

    def __init__(self, lay: StoreLayout, *, func: str):
        self.file = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        f = open(lay.root / ".lock", "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise TileStoreError(f"{func}: the store {str(lay.root)!r} is being computed by "
                                 f"another run ({holder}); wait for it to finish or stop it. "
                                 f"Two runs on one store would compute the same tiles twice"
                                 ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {os.uname().nodename}")
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the file releases the flock
            self.file = None


def clean_partial_files(lay: StoreLayout) -> int:
    """Remove temporary files left by writes that a kill interrupted; returns how many."""
    n = 0
    for dirpath, _, files in os.walk(lay.root):
        for f in files:
            if f.endswith(".partial"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, f))
                    n += 1
    return n


_ARRAYS: dict = {}


def _array(root: Path, name: str, meta: dict, mode: str = "r+"):
    """The zarr array `name` of a store, opened once per process (workers reuse it)."""
    import zarr

    key = (str(root), name, meta["uuid"], mode)
    arr = _ARRAYS.get(key)
    if arr is None:
        if meta.get("zarr_format", 3) == 3:
            arr = zarr.open_array(str(root / name), mode=mode, zarr_format=3)
        else:
            arr = zarr.open_array(str(root / name), mode=mode)
        _ARRAYS[key] = arr
    return arr


def write_tile(root: Path, meta: dict, i: int, j: int, blocks: dict[str, np.ndarray],
               *, seconds: float, worker: str | None = None) -> None:
    """Write tile (i, j) of every kernel, then its record (the tile is finished only then).

    Args:
        root: the store directory.
        meta: its metadata.
        blocks: kernel name -> (rows, cols) array of the store's dtype.
        seconds: compute time of the tile (kept in the record).
        worker: the Dask worker's address, None in-process (kept in the record).
    """
    lay = StoreLayout(root)
    (r0, r1), (c0, c1) = _bounds(meta, i, j)
    crc = {}
    for name, block in blocks.items():
        _array(root, name, meta)[r0:r1, c0:c1] = block
        crc[name] = zlib.crc32(np.ascontiguousarray(block).view(np.uint8).reshape(-1).data)
    record = {"tile": [i, j], "rows": [r0, r1], "cols": [c0, c1], "crc32": crc,
              "seconds": round(seconds, 4), "host": os.uname().nodename, "pid": os.getpid(),
              "worker": worker, "finished": time.time()}
    _atomic_write_text(lay.record(i, j), json.dumps(record))


def _bounds(meta: dict, i: int, j: int) -> tuple[tuple[int, int], tuple[int, int]]:
    (n1, n2), (b1, b2) = meta["shape"], meta["tile"]
    return (i * b1, min((i + 1) * b1, n1)), (j * b2, min((j + 1) * b2, n2))


def read_block(root: Path, name: str, meta: dict, i: int, j: int) -> np.ndarray:
    """The stored (rows, cols) block of tile (i, j) of kernel `name`."""
    (r0, r1), (c0, c1) = _bounds(meta, i, j)
    return _array(root, name, meta, mode="r")[r0:r1, c0:c1]
