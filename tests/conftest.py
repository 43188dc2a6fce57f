import os

import pytest
import torch

# The suite runs the default engine, "native" (what users run; kernels of at least
# NATIVE_MIN_ENTRIES entries of Dense/ReLU chains go through the compiled pass, built once per
# machine in about a second), never "auto", which would compile torch.compile units in the
# background. The engine tests (tests/layers/test_engine.py, test_native.py) switch engines
# explicitly.
os.environ.setdefault("WIDENETS_ENGINE", "native")


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
