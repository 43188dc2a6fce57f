"""hanin-nica (--quick): the NTK's second moment ratio grows exponentially in β = depth/width
with a slope near 5 (seed 003 Thm. 1), nets of equal β at different widths agree, and the mean
first-step change grows with β (Thm. 2). Monte Carlo over random finite nets."""

from __future__ import annotations

import numpy as np
import pytest

from widenets.experiments import load, make_config


@pytest.mark.slow
def test_ratio_grows_like_exp_5_beta(tmp_path):
    mod = load("hanin-nica")
    res = mod.run(make_config(mod, quick=True))
    m = res.metrics
    rows = res.data["rows"]
    # Over β in 0.05..0.4 the averaged layer terms give a local slope of log(ratio) on β of
    # 3-4 that tends to 5 as β grows (see tests/finite_width/test_moments.py); [2.5, 6]
    # rejects a frozen kernel (0) and a doubled exponent (10).
    assert 2.5 < m["slope log ratio vs beta (all)"] < 6.0, m
    # β, not width: equal-β pairs (2 x 20 vs 4 x 40, 4 x 20 vs 8 x 40) agree within 3 σ
    assert m["equal beta pairs, max |z|"] < 3.0, (m, res.data["pairs"])
    # E[K] is the analytic infinite-width NTK diagonal within Monte Carlo error plus the
    # finite-width correction (a few % at these β)
    assert m["max mean rel. error vs analytic NTK"] < 0.1, m
    for w in {r["width"] for r in rows}:
        sel = sorted((r for r in rows if r["width"] == w), key=lambda r: r["beta"])
        assert np.all(np.diff([abs(r["dk_rel"]) for r in sel]) > 0), sel
    mod.plot(res, tmp_path / "hn.png")
    assert (tmp_path / "hn.png").stat().st_size > 10_000
