"""Shared helpers for the tile-store tests.

Exactness: BLAS (MKL) sums a matrix product in an order that depends on the matrix sizes, so a
kernel computed on a sub-block of the inputs can differ from the same entries of the full kernel
in the last bit. The exact-equality tests therefore use "dyadic" inputs (multiples of 1/4 in
[-1, 1], 16 features): every inner product is exact in any summation order, so everything the
tiling does (indexing, the upper-triangle mirror, the exact diagonal, dtype, writing and reading)
must reproduce the in-memory kernel bit for bit. Tests with general inputs use a tolerance
stated where they use it.
"""

import torch

import widenets as wn


def dyadic(n: int, d: int = 16, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """(n, d) inputs in {-1, -3/4, ..., 1}: exact inner products in any summation order."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, (n, d), generator=g).to(dtype) / 4


def relu_net(depth: int = 3):
    """A depth-`depth` ReLU net (the benchmark's architecture)."""
    layers = []
    for _ in range(depth):
        layers += [wn.Dense(512, w_std=1.5, b_std=0.05), wn.Relu()]
    return wn.serial(*layers, wn.Dense(1, w_std=1.5, b_std=0.05))


def chunk(store, name: str, i: int, j: int):
    """The file of tile (i, j) of kernel `name` in a store (its path depends on the format)."""
    from widenets.tiles.store import read_metadata

    lay, _ = read_metadata(store, func="test")
    return lay.chunk(name, i, j)
