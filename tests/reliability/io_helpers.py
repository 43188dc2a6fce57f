"""Shared helpers of the io reliability tests (tile stores, data files, the command line)."""

from __future__ import annotations

import torch

import widenets as wn


def dyadic(n: int, d: int = 8, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """(n, d) inputs in multiples of 1/4: inner products are exact in any summation order, so a
    tiled kernel must equal the in-memory kernel bit for bit (see tests/tiles/tiles_helpers.py)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, (n, d), generator=g).to(dtype) / 4


def small_net():
    return wn.serial(wn.Dense(8, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(1, w_std=1.5))


def chunk_file(store, name: str, i: int, j: int):
    """The chunk file of tile (i, j) of kernel `name` (its path depends on the zarr format)."""
    from widenets.tiles.store import read_metadata

    lay, _ = read_metadata(store, func="test")
    return lay.chunk(name, i, j)


def flip_byte(path, offset: int, mask: int = 0x01) -> bytes:
    """XOR one byte of a file with `mask`; returns the original bytes (to restore them)."""
    raw = path.read_bytes()
    damaged = bytearray(raw)
    damaged[offset] ^= mask
    path.write_bytes(bytes(damaged))
    return raw


def tile_kw(b) -> dict:
    """{"batch_size": b}; {"tile": b} on the code before issue 17 (its spelling), so that these
    tests can be run against that code to show that each fails for the reason it tests."""
    import inspect

    params = inspect.signature(wn.tiles.compute).parameters
    return {"batch_size": b} if "batch_size" in params else {"tile": b}
