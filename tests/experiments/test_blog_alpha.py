"""blog-alpha (--quick): with output scale α and the loss divided by α², the relative weight
change and the NTK change fall like 1/α (lazy training, seed 001 / Chizat & Bach), while the
training still fits the data at every α."""

from __future__ import annotations

import pytest

from widenets.experiments import load, make_config


@pytest.mark.slow
def test_weight_and_ntk_change_fall_like_one_over_alpha(tmp_path):
    mod = load("blog-alpha")
    res = mod.run(make_config(mod, quick=True))
    m = res.metrics
    # Chizat & Bach: ||w_T - w_0|| = O(1/α) once α is large; the first-order theory gives
    # exactly -1 for the weights and -1 for the normalized NTK change (a second-order effect
    # would give -2, a loss not divided by α² gives 0 or +1).
    assert -1.2 < m["slope weight change vs alpha (alpha >= 3)"] < -0.8, m
    assert -1.3 < m["slope ntk change vs alpha (alpha >= 3)"] < -0.6, m
    kc = m["ntk change by alpha"]
    assert kc[min(kc)] > 30 * kc[max(kc)], kc      # rich (α = 0.3) vs lazy (α = 100)
    for alpha, loss in m["final loss by alpha"].items():
        assert loss < 0.05 * m["initial loss"], (alpha, m["final loss by alpha"])
    mod.plot(res, tmp_path / "alpha.png")
    assert (tmp_path / "alpha.png").stat().st_size > 10_000
