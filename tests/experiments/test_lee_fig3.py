"""lee-fig3 (--quick): a finite net under GD stays close to its linearization (outputs, weights,
losses), and the empirical-NTK closed form tracks it better than the analytic NTK (seed 002
Fig. 3). The linearized model trained by autograd GD is an independent check of eqs. 9-11."""

from __future__ import annotations

import math

import pytest

from widenets.experiments import load, make_config


@pytest.mark.slow
def test_network_follows_linearization(tmp_path):
    mod = load("lee-fig3")
    res = mod.run(make_config(mod, quick=True))
    m = res.metrics
    # GD on f_lin (autograd, float64) against the closed form with Θ̂₀ (one eigh): same
    # dynamics, so only rounding separates them.
    assert m["rmse_linearized_trained_vs_closed_form_max"] < 1e-8 * m["test_output_rms_final"]
    # Width 256: the net's test outputs stay within ~8% of their scale from the linearization
    # (the paper's agreement); 15% fails if the rate or the kernel time scale were off by 2.
    assert m["rmse_network_vs_linearized_max"] < 0.15 * m["test_output_rms_final"], m
    assert m["rmse_network_vs_empirical_closed_form_max"] < \
        0.5 * m["rmse_network_vs_analytic_closed_form_max"], m
    assert abs(math.log(m["test_loss_final_network"] / m["test_loss_final_linearized"])) \
        < math.log(1.2), m
    assert m["weight_rms_gap_over_rms_change"] < 0.5, m
    mod.plot(res, tmp_path / "fig3.png")
    assert (tmp_path / "fig3.png").stat().st_size > 10_000
