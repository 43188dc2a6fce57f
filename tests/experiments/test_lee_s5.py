"""lee-s5 (--quick): the test RMSE between a trained net and its trained linearization falls with
width and grows with the training-set size (seed 002 §3, Fig. S5). Each seed has its own data
split and initializations, and every seed must show both trends."""

from __future__ import annotations

import pytest

from widenets.experiments import load, make_config


@pytest.mark.slow
def test_rmse_falls_with_width_and_grows_with_data(tmp_path):
    mod = load("lee-s5")
    res = mod.run(make_config(mod, quick=True))
    m = res.metrics
    # Lazy-training theory: the gap ~ 1/√width at fixed time (measured slope ≈ -0.58 at the
    # quick scale); a fitted slope above -0.25 (e.g. an RMSE that ignores the width) fails.
    assert m["slope_rmse_vs_width"] < -0.25, m
    assert all(s < 0 for s in m["slope_rmse_vs_width_per_seed"]), m
    # More data: a larger gap (measured slope ≈ +0.2); must be positive in every seed.
    assert m["slope_rmse_vs_n_train"] > 0.05, m
    assert all(s > 0 for s in m["slope_rmse_vs_n_train_per_seed"]), m
    mod.plot(res, tmp_path / "s5.png")
    assert (tmp_path / "s5.png").stat().st_size > 10_000
