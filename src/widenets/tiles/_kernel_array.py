"""`KernelArray`: the dask array `wn.tiles.open` returns (imported only when dask is needed)."""

from __future__ import annotations

import dask.array as da
import torch

from .whole import missing_tiles, read_whole

__all__ = ["KernelArray"]


class KernelArray(da.Array):
    """A lazy (dask) kernel array read from a tile store, mirrored when symmetric.

    It is a `dask.array.Array` (slice it, reduce it, `.compute()` it); `.load()` reads the
    whole kernel into a torch tensor. `.metadata` is the store's metadata, `.store` its path.
    Results of operations on it are plain dask arrays.
    """

    def load(self, device=None) -> torch.Tensor:
        """The whole (n1, n2) kernel as a torch tensor, read tile by tile into one buffer.

        Args:
            device: where to put the tensor (default CPU).
        """
        lay, meta, name, check = self._widenets_source
        t = torch.from_numpy(read_whole(lay, meta, name, skip=set(missing_tiles(lay, meta)),
                                         check=check, func="KernelArray.load"))
        return t if device is None else t.to(device)
