"""lee-s3 (--quick): with the cross-entropy and momentum, the linearization tracks the network,
then at late times (after the training set is fit) the logits keep growing and so does the
distance between the two models, more for the narrower net (seed 002 §3, Figs. S3-S4)."""

from __future__ import annotations

import pytest

from widenets.experiments import load, make_config


@pytest.mark.slow
def test_late_time_logit_growth_and_error_growth(tmp_path):
    mod = load("lee-s3")
    cfg = make_config(mod, quick=True)
    res = mod.run(cfg)
    m = res.metrics
    narrow, wide = cfg.widths
    for w in cfg.widths:
        # the training set is fit (cross-entropy far below log 10 = 2.3) ...
        assert m[f"width {w}: train loss final"] < 0.05, m
        # ... and yet the logits keep growing (no fixed point, unlike MSE) ...
        assert m[f"width {w}: logit rms growth late"] > 1.03, m
        # ... and the network-linearization gap grows with them over the late records
        assert m[f"width {w}: logit gap growth late"] > 1.05, m
        net_acc, lin_acc = m[f"width {w}: test accuracy (network, linearized)"]
        assert abs(net_acc - lin_acc) < 0.1, m
    assert m[f"width {narrow}: logit gap final"] > m[f"width {wide}: logit gap final"], m
    mod.plot(res, tmp_path / "s3.png")
    assert (tmp_path / "s3.png").stat().st_size > 10_000
