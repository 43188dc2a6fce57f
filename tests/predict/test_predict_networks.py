"""Predictions against trained finite networks (seed 002, Figs. 2-3).

* A wide network trained by full-batch gradient descent in torch follows
  `gradient_descent_mse` driven by its own empirical NTK, within a tolerance ∝ 1/√width.
* An ensemble of 128 trained networks matches `gradient_descent_mse_ensemble` (eqs. 14-15)
  within statistical error and is far from the NNGP posterior (eq. 13).
"""

import copy

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

import widenets as wn
from widenets.empirical import empirical_ntk


def _toy_data(n_train, n_test, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * d ** 0.5
    y = 0.5 * torch.randn(n_train, 1, generator=g, dtype=torch.float64)
    return x[:n_train], x[n_train:], y


def _relative_errors(width, seed, xtr, xte, y, steps, scales=(1.0,)):
    """Train one network by explicit GD; max |f_net - f_pred| over the checkpoints, relative
    to the largest predicted movement, for predictions at learning rate η · scale."""
    net = wn.serial(wn.Dense(width, w_std=1.5, b_std=0.1), wn.Relu(),
                    wn.Dense(1, w_std=1.5, b_std=0.1))
    model = net.module((xtr.shape[1],), seed=seed, dtype=torch.float64)
    theta = empirical_ntk(model, xtr, implementation="jacobian")
    theta_tx = empirical_ntk(model, xte, xtr, implementation="jacobian")
    with torch.no_grad():
        f0, f0_te = model(xtr), model(xte)
    eta = 0.25 * wn.predict.max_learning_rate(theta)
    ts = torch.tensor(steps, dtype=torch.float64)
    predictors = [wn.predict.gradient_descent_mse(theta, y, learning_rate=eta * c,
                                                  discrete=True) for c in scales]
    preds = [p(ts, f0, f0_te, theta_tx) for p in predictors]
    params = list(model.parameters())
    init = [p.detach().clone() for p in params]
    got_tr, got_te = [], []
    for s in range(steps[-1] + 1):
        if s in steps:
            with torch.no_grad():
                got_tr.append(model(xtr))
                got_te.append(model(xte))
        loss = 0.5 * ((model(xtr) - y) ** 2).sum()        # seed 002: total loss
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= eta * g
    got_tr, got_te = torch.stack(got_tr), torch.stack(got_te)
    p_tr, p_te = preds[0]
    scale = max(float((p_tr - f0).abs().max()), float((p_te - f0_te).abs().max()))
    moved = float(sum(((p.detach() - q) ** 2).sum() for p, q in zip(params, init, strict=True))
                  ** 0.5)
    predicted = float(predictors[0].weight_change(steps[-1], f0))        # eq. 8
    errs = [max(float((got_tr - a).abs().max()), float((got_te - b).abs().max())) / scale
            for a, b in preds]
    return errs, abs(moved - predicted) / predicted


@pytest.mark.slow
def test_wide_network_follows_its_linearization():
    """Width 4096 vs 256, 4 seeds each, 300 steps at η = λ_max⁻¹/2, 10 train and 6 test points.

    Measured relative errors × √width lie in 0.4-2.4 (linearization error O(1/√width), seed
    002 Thm. 2.1), so the tolerance is 3/√width: 0.047 at 4096, 0.19 at 256. A prediction
    with the learning rate off by 30% is 0.07-0.14 away from the trained network, so at 4096
    the test fails on it; the mean error must also shrink with width. The parameter
    displacement ||θ_300 - θ_0|| of the trained network matches `weight_change` (eq. 8) within
    the same 3/√width (measured × √width: 0.03-1.1)."""
    xtr, xte, y = _toy_data(10, 6, 4)
    steps = [3, 10, 30, 100, 300]
    mean_err = {}
    for width in (256, 4096):
        errs = []
        for seed in range(4):
            (err, *wrong), weight_err = _relative_errors(width, seed, xtr, xte, y, steps,
                                                         (1.0, 1.3, 0.7))
            assert err < 3.0 / width ** 0.5, (width, seed, err)
            assert weight_err < 3.0 / width ** 0.5, (width, seed, weight_err)
            if width == 4096:
                assert min(wrong) > 3.0 / width ** 0.5, (seed, wrong)
            errs.append(err)
        mean_err[width] = sum(errs) / len(errs)
    assert mean_err[4096] < 0.5 * mean_err[256]


def _train_ensemble(net, xtr, xte, y, eta, steps, n_nets, *, seed, readout_only=False):
    """Train n_nets networks (seeds seed, seed+1, ...) by full-batch GD, all at once (vmap);
    returns their (n_nets, n_test) test outputs. readout_only trains only the last layer."""
    models = [net.module((xtr.shape[1],), seed=seed + s, dtype=torch.float64)
              for s in range(n_nets)]
    params, buffers = stack_module_state(models)
    last = list(models[0].named_children())[-1][0]
    train = [name for name in params if not readout_only or name.startswith(f"{last}.")]
    base = copy.deepcopy(models[0]).to("meta")
    f = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
    for _ in range(steps):
        loss = 0.5 * ((f(params, buffers, xtr) - y) ** 2).sum()   # independent nets
        grads = torch.autograd.grad(loss, [params[name] for name in train])
        with torch.no_grad():
            for name, g in zip(train, grads, strict=True):
                params[name] -= eta * g
    with torch.no_grad():
        return f(params, buffers, xte)[..., 0]


@pytest.mark.slow
def test_trained_ensemble_matches_ntk_gaussian_not_nngp():
    """128 networks of width 1024 (seeds 1000-1127), 200 steps of GD at η = λ_max⁻¹ (discrete,
    so time matches exactly), 6 train / 4 test points.

    Mean: N dᵀ Σ⁻¹ d with d = sample mean - μ_t is χ² with 4 degrees of freedom under the
    prediction: it must stay below the 99.9% quantile 18.5 (measured 2.1 here; 5-13 on other
    seed sets and data, finite width adds a little). Against the NNGP posterior it is 107 here
    (threshold 60, p < 1e-11 under the NNGP). Variances: sample / predicted variance is within
    the χ²₁₂₇ 99.9% band [0.66, 1.42] (widened to [0.6, 1.5] for finite width; measured
    0.87-1.09)."""
    xtr, xte, y = _toy_data(6, 4, 3)
    width, n_nets, steps = 1024, 128, 200
    net = wn.serial(wn.Dense(width, w_std=1.5, b_std=0.1), wn.Relu(),
                    wn.Dense(1, w_std=1.5, b_std=0.1))
    k_train = net.kernel(xtr)
    eta = 0.5 * wn.predict.max_learning_rate(k_train)
    ens = wn.predict.gradient_descent_mse_ensemble(net, xtr, y, learning_rate=eta,
                                                   discrete=True)
    pred = ens(steps, xte, compute_cov=True)
    nngp = wn.predict.gp_inference(k_train, y, net.kernel(xte, xtr), net.kernel(xte),
                                   kernel="nngp")

    out = _train_ensemble(net, xtr, xte, y, eta, steps, n_nets, seed=1000)

    def chi2(mean, cov):
        d = out.mean(0) - mean[:, 0]
        return float(n_nets * d @ torch.linalg.solve(cov, d))

    assert chi2(pred.mean, pred.covariance) < 18.5
    assert chi2(nngp.mean, nngp.covariance) > 60.0
    ratio = out.var(0) / pred.covariance.diagonal()
    assert bool(((ratio > 0.6) & (ratio < 1.5)).all()), ratio


@pytest.mark.slow
def test_readout_only_ensemble_matches_nngp_kernel_dynamics():
    """kernel="nngp" is training only the readout (seed 002 §2.3.1): 128 networks of width
    1024 whose last layer alone is trained for 100 steps match ens(t, kernel="nngp") (χ² below
    the 99.9% quantile 18.5; measured 10.4) and not the all-layer kernel="ntk" prediction (χ²
    above the 99.999% quantile 25.7; measured 36.8). Variance ratios measured 0.95-1.21."""
    xtr, xte, y = _toy_data(6, 4, 3)
    net = wn.serial(wn.Dense(1024, w_std=1.5, b_std=0.1), wn.Relu(),
                    wn.Dense(1, w_std=1.5, b_std=0.1))
    k_train = net.kernel(xtr)
    eta = 0.5 * 2.0 / float(torch.linalg.eigvalsh(k_train.nngp)[-1])
    ens = wn.predict.gradient_descent_mse_ensemble(net, xtr, y, learning_rate=eta,
                                                   discrete=True)
    out = _train_ensemble(net, xtr, xte, y, eta, 100, 128, seed=3000, readout_only=True)

    def chi2(g):
        d = out.mean(0) - g.mean[:, 0]
        return float(128 * d @ torch.linalg.solve(g.covariance, d))

    readout = ens(100, xte, kernel="nngp", compute_cov=True)
    assert chi2(readout) < 18.5
    assert chi2(ens(100, xte, kernel="ntk", compute_cov=True)) > 25.7
    ratio = out.var(0) / readout.covariance.diagonal()
    assert bool(((ratio > 0.6) & (ratio < 1.5)).all()), ratio
