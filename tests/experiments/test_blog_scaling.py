"""blog-scaling (--quick): ‖∇f‖ ~ m^0.5, ‖∇²f‖ ~ m^0, κ ~ m^-1 for seed 001's LeCun tanh net,
measured with Hessian-vector products on random finite nets."""

from __future__ import annotations

import pytest

from widenets.experiments import load, make_config


@pytest.mark.slow
def test_laziness_exponents(tmp_path):
    mod = load("blog-scaling")
    res = mod.run(make_config(mod, quick=True))
    m = res.metrics
    # ±0.15 around the theory's exponents: the three are 0.5 apart, so a wrong norm (e.g. the
    # Frobenius norm of the Jacobian squared, slope 1) or a wrong init scale fails.
    assert abs(m["slope jacobian_norm"] - 0.5) < 0.15, m
    assert abs(m["slope hessian_norm"]) < 0.15, m
    assert abs(m["slope kappa"] + 1.0) < 0.15, m
    mod.plot(res, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
