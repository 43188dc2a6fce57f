"""lee-fig1 (--quick): hidden weights move like 1/n, input/output weights like 1/√n, and the
empirical NTK changes faster than 1/√n in width (seed 002 Fig. 1), measured on trained nets."""

from __future__ import annotations

import pytest

from widenets.experiments import load, make_config


@pytest.mark.slow
def test_relative_change_slopes(tmp_path):
    mod = load("lee-fig1")
    res = mod.run(make_config(mod, quick=True))
    m = res.metrics
    msg = {k: round(v, 3) for k, v in m.items() if isinstance(v, float)}
    # Exponents of the paper: -1/2 (input, output), -1 (hidden). ±0.25 separates -1/2 from -1
    # (a mix-up of the parameter groups or of the width fails), and leaves room for 2 seeds.
    assert -1.25 < m["slope hidden weights"] < -0.75, msg
    for q in ("input weights", "output weights"):
        assert -0.75 < m[f"slope {q}"] < -0.25, msg
    assert m["slope hidden weights"] < m["slope input weights"] - 0.25, msg
    # Θ: between O(1/n) and O(1/√n), closer to 1/n
    assert -1.3 < m["slope NTK Θ"] < -0.5, msg
    mod.plot(res, tmp_path / "fig1.png")
    assert (tmp_path / "fig1.png").stat().st_size > 10_000
