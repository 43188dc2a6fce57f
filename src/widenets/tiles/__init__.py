"""Kernels larger than memory: tile by tile into an on-disk store, resumable, local or on Dask.

    import widenets as wn
    run = wn.tiles.compute(net, x, store="k.zarr", batch_size=2048, get="ntk")   # resumable
    k = wn.tiles.open("k.zarr")          # lazy dask array (mirrored upper triangle)
    ntk = k.load()                       # torch tensor, if it fits
    ntk = wn.tiles.load_kernel("k.zarr", max_bytes=8e9)   # or a clear error when it does not
    op = wn.tiles.StoreOperator("k.zarr", get="ntk")   # K @ v streamed tile by tile (solvers)

Every read checks each tile's CRC-32 (stored in its record when the tile was written), and a
resumed `compute` re-checks the finished tiles: a damaged tile raises `CorruptTileError` or is
recomputed, never returned. zarr and dask are imported only when a function here needs them.
"""

from .compute import TileError, TileRun, compute
from .matvec import StoreOperator
from .reader import KernelTooLargeError, load_kernel, open, status, verify
from .store import CorruptTileError, IncompleteStoreError, StoreMismatchError, TileStoreError

__all__ = [
    "compute", "open", "load_kernel", "status", "verify", "TileRun", "TileError",
    "TileStoreError", "StoreMismatchError", "IncompleteStoreError", "KernelTooLargeError",
    "CorruptTileError", "StoreOperator",
]
