import os

import pytest
import torch

# The suite computes its kernels with the eager engine: no test pays a compile it did not ask
# for (the "auto" engine would compile in the background for the larger kernels). The engine
# tests (tests/layers/test_engine.py) switch to "fused" explicitly.
os.environ.setdefault("WIDENETS_ENGINE", "eager")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius distance ||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())


@pytest.fixture
def x_small():
    """6 inputs in 8 dimensions with norms spread around sqrt(8) (so K(x, x) differ)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(6, 8, generator=g, dtype=torch.float64)
    scale = torch.linspace(0.6, 1.4, 6, dtype=torch.float64)[:, None]
    return x / x.norm(dim=1, keepdim=True) * 8 ** 0.5 * scale
