"""Kernel-matrix products streamed from a tile store: K @ V without K in memory.

`StoreOperator(store, get="ntk")` is a linear operator on the stored (n1, n2) kernel: every
product `op.matmul(V)` (V of shape (n2, k), several right-hand sides at once) reads each stored
tile exactly once. For a symmetric store only the upper triangle of tiles is stored and read:
a stored tile T = K[I, J] with I < J contributes T @ V[J] to rows I and Tᵀ @ V[I] to rows J
(docs/math.md §solvers, "streamed products"). A reader thread fetches the next tiles
from disk while the current one is multiplied (a bounded queue: at most `prefetch` tiles wait
in memory), so a product costs about max(disk time, compute time) of one pass over the store.

With `client=` (a `dask.distributed.Client`) the tiles are split across the workers once;
every product sends V to each worker, each worker reads and multiplies its own tiles and sends
back one (n1, k) partial product: only vectors travel over the network. The store must be on
a file system every worker sees.

Products are accumulated in float64 (each float32 tile is converted on the fly), so the
operator is exactly the stored matrix and its products are accurate to float64 rounding.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import torch

from .reader import status, verify
from .store import (
    IncompleteStoreError,
    StoreLayout,
    TileStoreError,
    read_checked_block,
    read_metadata,
    tile_list,
)

__all__ = ["StoreOperator"]


def check_store(store, *, func: str, crc: bool = True) -> tuple[Path, dict]:
    """Refuse an incomplete or damaged store before any work is done.

    Completeness: every tile has its record (`wn.tiles.status`). With `crc`, every tile's bytes
    are checked against the CRC-32 in its record (`wn.tiles.verify`, one read of the store).

    Returns:
        The store's root directory and metadata.

    Raises:
        IncompleteStoreError: missing tiles. TileStoreError: damaged tiles.
    """
    lay, meta = read_metadata(store, func=func)
    st = status(store)
    if st["missing"]:
        raise IncompleteStoreError(
            f"{func}: the store {str(lay.root)!r} is incomplete: {len(st['missing'])} of "
            f"{st['tiles_total']} tiles are missing (e.g. tile {st['missing'][0]}); rerun the "
            f"wn.tiles.compute call that made it to finish it before solving")
    if crc:
        bad = verify(store)
        if bad:
            raise TileStoreError(
                f"{func}: the store {str(lay.root)!r} has {len(bad)} damaged tile(s) (e.g. tile "
                f"{bad[0]}: its bytes do not match the CRC-32 of its record); run "
                f"wn.tiles.verify(store, repair=True) and rerun the compute call to redo them")
    return lay.root, meta


def read_block(root: Path, name: str, meta: dict, i: int, j: int):
    """Tile (i, j) of kernel `name`, its CRC-32 checked against its record on every read."""
    lay = StoreLayout(Path(root), meta.get("zarr_format", 3))
    return read_checked_block(lay, meta, name, i, j, func="tiles.StoreOperator")


def _tile_reader(root: Path, name: str, meta: dict, tiles, prefetch: int):
    """Yield ((i, j), block) for `tiles`, read by a background thread `prefetch` tiles ahead."""
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    done = object()

    def work():
        try:
            for i, j in tiles:
                if stop.is_set():
                    return
                q.put(((i, j), read_block(root, name, meta, i, j)))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)
            return
        q.put(done)

    thread = threading.Thread(target=work, name="widenets-tile-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, TileStoreError):
                raise item
            if isinstance(item, BaseException):
                raise TileStoreError(f"tiles: reading a tile of {str(root)!r} failed "
                                     f"({type(item).__name__}: {item})") from item
            yield item
    finally:
        stop.set()
        while thread.is_alive():    # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


def stream_product(root, name: str, meta: dict, tiles, v: np.ndarray,
                   prefetch: int = 2) -> np.ndarray:
    """Σ over `tiles` of their contribution to K @ v, in float64: (n1, k).

    Args:
        root: the store directory; name: "nngp" or "ntk"; meta: the store's metadata.
        tiles: stored tile indices (i, j) (i <= j for a symmetric store).
        v: (n2, k) float64 array.
        prefetch: tiles read ahead of the multiplication.
    """
    root = Path(root)
    (n1, _), (b1, b2) = meta["shape"], meta["tile"]
    sym = meta["symmetric"]
    out = np.zeros((n1, v.shape[1]), dtype=np.float64)
    step = _ROWS if v.shape[1] <= 32 else 4 * _ROWS
    buf = np.empty((step, b2), dtype=np.float64)
    for (i, j), block in _tile_reader(root, name, meta, tiles, prefetch):
        r0, c0 = i * b1, j * b2
        rows, cols = block.shape
        # docs/math.md §solvers: K[J, I] = K[I, J]ᵀ, read once, used twice.
        twice = sym and i != j
        vj = v[c0:c0 + cols]
        for s in range(0, rows, step):
            # A few rows at a time in float64: converting the whole tile first would write and
            # read it from memory twice more (2.3x slower per tile, measured in
            # benchmarks/solve.py's development); the products are the same. With many
            # columns (a Nyström sketch) 256 rows: the (cols, k) update of the mirrored rows
            # is then written 4x less often (1.7x faster per tile at k = 1024).
            e = min(s + step, rows)
            part = buf[:e - s, :cols]
            part[...] = block[s:e]
            out[r0 + s:r0 + e] += part @ vj
            if twice:
                out[c0:c0 + cols] += part.T @ v[r0 + s:r0 + e]
    return out


_ROWS = 64      # rows of a tile converted to float64 at a time (cache-sized)


class StoreOperator:
    """The kernel `get` of a tile store as a linear operator (products streamed from disk).

    Args:
        store: a store directory written by `wn.tiles.compute` (or the lazy array of
            `wn.tiles.open`).
        get: "nngp" or "ntk" (None: the only kernel of a one-kernel store).
        client: None (this process) or a `dask.distributed.Client`: tiles split across its
            workers, only vectors sent.
        check: "crc" (default; completeness and every tile's CRC-32, one read of the store),
            "complete" (records only) or None, done once when the operator is made.
        prefetch: tiles read ahead of the multiplication.

    Attributes:
        shape: (n1, n2); symmetric: whether only the upper triangle is stored; dtype: the
        stored dtype; root, meta, name; passes: how many full passes over the tiles were made.

    Example:
        >>> import torch, widenets as wn, tempfile, os
        >>> net = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1))
        >>> x = torch.randn(10, 3, dtype=torch.float64)
        >>> path = os.path.join(tempfile.mkdtemp(), "k.zarr")
        >>> _ = wn.tiles.compute(net, x, store=path, batch_size=4, get="ntk")
        >>> op = wn.tiles.StoreOperator(path, get="ntk")
        >>> v = torch.randn(10, 2, dtype=torch.float64)
        >>> torch.allclose(op.matmul(v), net.kernel(x, get="ntk") @ v)
        True
    """

    def __init__(self, store, get: str | None = "ntk", *, client=None, check: str | None = "crc",
                 prefetch: int = 2):
        func = "tiles.StoreOperator"
        if hasattr(store, "store") and hasattr(store, "metadata"):   # a wn.tiles.open array
            store = store.store
        if check not in ("crc", "complete", None):
            raise ValueError(f"{func}: check must be 'crc', 'complete' or None, got {check!r}")
        if check is None:
            lay, meta = read_metadata(store, func=func)
            self.root = lay.root
        else:
            self.root, meta = check_store(store, func=func, crc=check == "crc")
        stored = tuple(meta["get"])
        if get is None:
            if len(stored) != 1:
                raise ValueError(f"{func}: the store holds {' and '.join(stored)}; pass get= "
                                 f"to choose one")
            get = stored[0]
        if get not in stored:
            raise ValueError(f"{func}: get must be one of the stored kernels {stored}, got "
                             f"{get!r}")
        self.meta, self.name = meta, get
        self.shape = tuple(meta["shape"])
        self.symmetric = bool(meta["symmetric"])
        self.dtype = np.dtype(meta["dtype"])
        self.tiles = tile_list(self.shape, tuple(meta["tile"]), self.symmetric)
        self.prefetch = int(prefetch)
        self.client = client
        self.passes = 0
        self._parts = None
        if client is not None:
            workers = sorted(client.scheduler_info()["workers"])
            if not workers:
                raise ValueError(f"{func}: the Dask client has no workers")
            self._parts = _split(self.tiles, workers, self.meta)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole (mirrored) kernel if it were loaded."""
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """K @ v for v of shape (n2,) or (n2, k), one pass over the stored tiles (float64)."""
        vec = v.ndim == 1
        arr = np.ascontiguousarray((v[:, None] if vec else v).detach().cpu().numpy(),
                                   dtype=np.float64)
        if arr.shape[0] != self.shape[1]:
            raise ValueError(f"tiles.StoreOperator.matmul: v must have {self.shape[1]} rows, "
                             f"got shape {tuple(v.shape)}")
        if self.client is None:
            out = stream_product(self.root, self.name, self.meta, self.tiles, arr,
                                 self.prefetch)
        else:
            out = self._dask_product(arr)
        self.passes += 1
        res = torch.from_numpy(out)
        return res[:, 0] if vec else res

    __matmul__ = matmul

    def _dask_product(self, arr: np.ndarray) -> np.ndarray:
        client = self.client
        [vf] = client.scatter([arr], broadcast=True, hash=False)
        futures = [client.submit(stream_product, str(self.root), self.name, self.meta, tiles,
                                 vf, self.prefetch, workers=[w], allow_other_workers=True,
                                 pure=False)
                   for w, tiles in self._parts.items() if tiles]
        out = np.zeros((self.shape[0], arr.shape[1]))
        for part in client.gather(futures):
            out += part
        return out

    def diagonal(self) -> torch.Tensor:
        """The (n,) diagonal of a square kernel, from the diagonal tiles."""
        if self.shape[0] != self.shape[1] or self.meta["tile"][0] != self.meta["tile"][1]:
            raise ValueError("tiles.StoreOperator.diagonal: the kernel is not square")
        out = []
        for i in range(len(range(0, self.shape[0], self.meta["tile"][0]))):
            out.append(np.diagonal(np.asarray(read_block(self.root, self.name, self.meta, i, i),
                                              dtype=np.float64)))
        return torch.from_numpy(np.concatenate(out))

    def columns(self, idx) -> torch.Tensor:
        """K[:, idx] as an (n1, len(idx)) float64 tensor (reads the column blocks holding idx)."""
        idx = np.asarray(idx, dtype=np.int64)
        (n1, _), (b1, b2) = self.shape, self.meta["tile"]
        out = np.empty((n1, len(idx)))
        blocks = idx // b2
        for jb in np.unique(blocks):
            sel = np.nonzero(blocks == jb)[0]
            local = idx[sel] - jb * b2
            for ib, (r0, r1) in enumerate(_ranges(n1, b1)):
                if self.symmetric and ib > jb:
                    t = np.asarray(read_block(self.root, self.name, self.meta, jb, ib)).T
                else:
                    t = np.asarray(read_block(self.root, self.name, self.meta, ib, jb))
                out[r0:r1, sel] = t[:, local]
        return torch.from_numpy(out)

    def load(self) -> torch.Tensor:
        """The whole kernel as a float64 tensor (only for kernels that fit in memory)."""
        (n1, n2), (b1, b2) = self.shape, self.meta["tile"]
        out = np.empty((n1, n2))
        for (i, j), block in _tile_reader(self.root, self.name, self.meta, self.tiles,
                                          self.prefetch):
            t = np.asarray(block, dtype=np.float64)
            out[i * b1:i * b1 + t.shape[0], j * b2:j * b2 + t.shape[1]] = t
            if self.symmetric and i != j:
                out[j * b2:j * b2 + t.shape[1], i * b1:i * b1 + t.shape[0]] = t.T
        return torch.from_numpy(out)


def _ranges(n: int, b: int) -> list[tuple[int, int]]:
    return [(s, min(s + b, n)) for s in range(0, n, b)]


def _split(tiles, workers, meta) -> dict:
    """Tiles dealt to workers so that each gets about the same number of stored elements."""
    (n1, n2), (b1, b2) = meta["shape"], meta["tile"]
    load = {w: 0 for w in workers}
    parts = {w: [] for w in workers}
    sizes = [(min(b1, n1 - i * b1) * min(b2, n2 - j * b2), (i, j)) for i, j in tiles]
    for size, t in sorted(sizes, reverse=True):
        w = min(load, key=load.get)
        parts[w].append(t)
        load[w] += size
    for w in parts:
        parts[w].sort()
    return parts
