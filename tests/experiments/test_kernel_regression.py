"""kernel-regression (--quick): NTK and NNGP regression on digits are competitive with a tuned
RBF kernel ridge, and the pipeline's numbers match scikit-learn's own kernel ridge solver."""

from __future__ import annotations

import torch

from widenets.data import load_digits
from widenets.experiments import kernel_regression as kr
from widenets.experiments import load, make_config
from widenets.experiments.common import fc_net


def test_quick_claims_and_plot(tmp_path):
    mod = load("kernel-regression")
    cfg = make_config(mod, quick=True, overrides={"depths": "1,2,4"})
    res = mod.run(cfg)
    m = res.metrics
    # Arora et al. 2019 / Lee et al. 2018: NTK and NNGP regression are competitive with tuned
    # RBF kernels on small image sets. 300 digits give ~0.95 for all three; a 3-point margin
    # fails on a wrong kernel (a constant or linear kernel gets < 0.9).
    for name in ("ntk", "nngp"):
        assert m[f"{name}_best_test_accuracy"] > 0.9, m
        assert m[f"{name}_best_test_accuracy"] >= m["rbf_test_accuracy"] - 0.03, m
    mod.plot(res, tmp_path / "kr.png")
    assert (tmp_path / "kr.png").stat().st_size > 10_000


def test_ntk_regression_matches_sklearn_precomputed_kernel_ridge():
    """Independent solver and kernel path: sklearn KernelRidge(kernel="precomputed") on the NTK
    of a freshly built depth-3 net, against the experiment's one-pass depth recursion."""
    from sklearn.kernel_ridge import KernelRidge

    cfg = kr.Config(n_train=200, n_test=150, depths=(1, 3))
    res = kr.run(cfg)
    ds = load_digits(n_train=200, n_test=150, seed=0)
    net = fc_net(1, 3, w_std=cfg.w_std, b_std=cfg.b_std)
    theta = net.kernel(torch.cat([ds.x_train, ds.x_test]), get="ntk").numpy()
    alpha = cfg.diag_reg * theta[:200, :200].diagonal().mean()
    ridge = KernelRidge(kernel="precomputed", alpha=alpha).fit(theta[:200, :200],
                                                               ds.y_train.numpy())
    pred = torch.from_numpy(ridge.predict(theta[200:, :200]))
    assert ds.accuracy(pred) == res.metrics["ntk_test_accuracy_by_depth"][3]
    loss = float(0.5 * ((pred - ds.y_test) ** 2).sum(1).mean())
    assert abs(loss - res.data["loss"]["ntk"][1]) < 1e-8 * loss
