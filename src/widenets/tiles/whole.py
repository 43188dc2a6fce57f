"""Reading a whole stored kernel into one array, and the list of missing tiles.

The piece shared by `wn.tiles.load_kernel` (reader.py) and the lazy array's `.load()`
(_kernel_array.py); it sits below both so that neither imports the other.
"""

from __future__ import annotations

import numpy as np

from .store import (
    CorruptTileError,
    StoreLayout,
    done_tiles,
    read_block,
    read_checked_block,
    tile_list,
)

__all__ = ["missing_tiles", "read_whole"]


def missing_tiles(lay: StoreLayout, meta: dict) -> list[tuple[int, int]]:
    """The tiles (i, j) of the store without a record (not finished)."""
    done = done_tiles(lay, meta, repair=False)
    return [t for t in tile_list(tuple(meta["shape"]), tuple(meta["tile"]), meta["symmetric"])
            if t not in done]


def read_whole(lay: StoreLayout, meta: dict, name: str, skip=frozenset(), *,
                check: bool = True, func: str = "tiles.load_kernel") -> np.ndarray:
    """The (n1, n2) kernel, read tile by tile (tiles in `skip` stay NaN), CRC-checked unless
    check is False, mirrored."""
    n1, n2 = meta["shape"]
    out = np.full((n1, n2), np.nan, dtype=np.dtype(meta["dtype"]))
    b1, b2 = meta["tile"]
    for i, j in tile_list((n1, n2), (b1, b2), meta["symmetric"]):
        if (i, j) in skip:
            continue
        if check:
            block = read_checked_block(lay, meta, name, i, j, func=func)
        else:
            try:
                block = read_block(lay.root, name, meta, i, j)
            except Exception as e:  # noqa: BLE001 - any undecodable chunk is damage
                raise CorruptTileError(
                    f"{func}: tile ({i}, {j}) of the {name} kernel in {str(lay.root)!r} is "
                    f"unreadable ({type(e).__name__}: {e}); rerun the compute call that made "
                    f"the store to recompute damaged tiles (wn.tiles.verify(store) lists them)"
                ) from None
        out[i * b1:i * b1 + block.shape[0], j * b2:j * b2 + block.shape[1]] = block
        if meta["symmetric"] and i < j:
            out[j * b2:j * b2 + block.shape[1], i * b1:i * b1 + block.shape[0]] = block.T
    return out
