"""Shared helpers of the layer tests: analytic kernel vs Monte Carlo, the engine switch."""

import pytest
import torch

import widenets as wn


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.fixture
def mc_check():
    """check(make, x, in_shape, n_samples, tol): make(channels, readout) builds the net.

    The NNGP is estimated with a wide readout (width 256, averaged over its units), the NTK
    with a readout of width 1 (the empirical NTK self-averages over the 256-channel hidden
    layers). Both are compared with the analytic kernel of the same widths (the standard
    parameterization's NTK depends on them) in relative Frobenius norm.
    """
    def check(make, x, in_shape, *, n_samples=4, tol=0.1, seed=0):
        k = make(256, 1).kernel(x)
        mcn = wn.monte_carlo_kernel(make(256, 256), x,
                                    n_samples=n_samples, seed=seed, get="nngp")
        mct = wn.monte_carlo_kernel(make(256, 1), x, n_samples=n_samples,
                                    seed=seed, get="ntk")
        err_nngp, err_ntk = _rel(mcn, k.nngp), _rel(mct, k.ntk)
        assert err_nngp < tol, f"NNGP relative error {err_nngp:.3f} >= {tol}"
        assert err_ntk < tol, f"NTK relative error {err_ntk:.3f} >= {tol}"
        return err_nngp, err_ntk
    return check


@pytest.fixture
def use_engine():
    """use_engine(name): switch the engine for this test (restored after it)."""
    previous = wn.get_engine()
    yield wn.set_engine
    wn.set_engine(previous)
