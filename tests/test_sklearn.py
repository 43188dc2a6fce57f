"""scikit-learn estimators (`wn.sklearn`): the estimator contract (check_estimator), Pipeline and
GridSearchCV, and predictions against independent references (KernelRidge with a precomputed
kernel, the closed-form ensemble)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import widenets as wn

NET = wn.serial(wn.Dense(256, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(1, w_std=1.5, b_std=0.1))


def test_sklearn_is_lazy():
    code = ("import sys, widenets; assert 'sklearn' not in sys.modules, 'eager'; "
            "widenets.sklearn.NTKRegressor; assert 'sklearn' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# scikit-learn's checks fit iris, which has duplicated rows: with the default diag_reg=0 a
# duplicated input is refused (an error naming diag_reg, tested below), so the checks run with a
# small ridge.
@pytest.mark.slow
@pytest.mark.parametrize("estimator", [wn.sklearn.NTKRegressor(diag_reg=1e-6),
                                       wn.sklearn.NNGPRegressor(t=5.0),
                                       wn.sklearn.NTKClassifier(diag_reg=1e-6)],
                         ids=lambda e: type(e).__name__)
def test_check_estimator(estimator):
    """Every check of sklearn.utils.estimator_checks applies and passes (pandas and array-API
    checks are skipped by scikit-learn itself when those are not installed)."""
    results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:200]) for r in results
              if r["status"] == "failed"]
    assert not failed
    assert sum(r["status"] == "passed" for r in results) > 40


def _regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    y = np.sin(x @ rng.normal(size=5)) + 0.1 * rng.normal(size=40)
    return x[:30], y[:30], x[30:], y[30:]


def test_nngp_regressor_is_kernel_ridge_with_the_nngp():
    """NNGPRegressor(t=None) mean = KernelRidge(alpha=ρ, precomputed NNGP) (an independent
    solver); return_std/return_cov are the posterior of eq. 13 with noise ρ."""
    xtr, ytr, xte, _ = _regression_data()
    reg = wn.sklearn.NNGPRegressor(NET, diag_reg=1e-3).fit(xtr, ytr)
    k_tr = NET.kernel(torch.from_numpy(xtr), get="nngp").numpy()
    k_te = NET.kernel(torch.from_numpy(xte), torch.from_numpy(xtr), get="nngp").numpy()
    rho = 1e-3 * np.mean(np.diag(k_tr))
    ridge = KernelRidge(alpha=rho, kernel="precomputed").fit(k_tr, ytr)
    np.testing.assert_allclose(reg.predict(xte), ridge.predict(k_te), rtol=1e-8, atol=1e-10)
    mean, cov = reg.predict(xte, return_cov=True)
    k_tt = NET.kernel(torch.from_numpy(xte), get="nngp").numpy()
    cov_ref = k_tt - k_te @ np.linalg.solve(k_tr + rho * np.eye(30), k_te.T)
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-7, atol=1e-10)
    _, std = reg.predict(xte, return_std=True)
    np.testing.assert_allclose(std, np.sqrt(np.diag(cov_ref)), rtol=1e-7, atol=1e-10)


def test_ntk_regressor_matches_ensemble_and_multioutput():
    xtr, ytr, xte, _ = _regression_data()
    y2 = np.stack([ytr, -2 * ytr], 1)
    reg = wn.sklearn.NTKRegressor(NET, t=3.0, learning_rate=0.1, diag_reg=0.0).fit(xtr, y2)
    ens = wn.predict.gradient_descent_mse_ensemble(NET, xtr, y2, learning_rate=0.1)
    g = ens(3.0, xte, compute_cov=True)
    mean, std = reg.predict(xte, return_std=True)
    np.testing.assert_allclose(mean, g.mean.numpy(), rtol=1e-10, atol=1e-12)
    assert mean.shape == (10, 2) and std.shape == (10, 2)
    np.testing.assert_allclose(std[:, 0], np.sqrt(np.diag(g.covariance.numpy())), rtol=1e-10)
    np.testing.assert_allclose(mean[:, 1], -2 * mean[:, 0], rtol=1e-10, atol=1e-12)


def test_classifier_on_digits():
    """One-hot NTK regression on 8x8 digits: > 80% test accuracy from 300 training images
    (measured 0.87; chance is 10%, a broken kernel or argmax lands far below)."""
    x, y = load_digits(return_X_y=True)
    clf = make_pipeline(StandardScaler(), wn.sklearn.NTKClassifier(NET))
    clf.fit(x[:300], y[:300])
    assert clf.score(x[300:600], y[300:600]) > 0.8
    labels = np.array(["a", "b"])[(y[:100] > 4).astype(int)]
    two = wn.sklearn.NTKClassifier(NET).fit(x[:100], labels)
    assert two.decision_function(x[:5]).shape == (5,)
    assert set(two.predict(x[100:120])) <= {"a", "b"}


def test_grid_search_over_diag_reg():
    xtr, ytr, xte, yte = _regression_data()
    search = GridSearchCV(make_pipeline(StandardScaler(), wn.sklearn.NTKRegressor(NET)),
                          {"ntkregressor__diag_reg": [1e-6, 1e-2, 1e0]}, cv=3)
    search.fit(xtr, ytr)
    assert search.best_params_["ntkregressor__diag_reg"] in (1e-6, 1e-2, 1e0)
    assert np.isfinite(search.score(xte, yte))
    assert len(search.cv_results_["mean_test_score"]) == 3


def test_params_stored_verbatim_and_errors():
    reg = wn.sklearn.NTKRegressor(NET, t=7, diag_reg=0.5)
    assert reg.get_params()["net"] is NET and reg.get_params()["t"] == 7
    reg.set_params(t=None)
    assert reg.t is None
    with pytest.raises(TypeError, match="net must be a widenets network"):
        wn.sklearn.NTKRegressor(net="relu").fit(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="t must be None"):
        wn.sklearn.NTKRegressor(t=-1.0).fit(np.eye(3), np.ones(3))
    with pytest.raises(ValueError, match="not positive definite.*diag_reg"):
        wn.sklearn.NTKRegressor(t=None, diag_reg=0.0).fit(np.ones((3, 2)), np.ones(3))


def test_fit_hyperparameters_option_equals_the_direct_fit():
    """NNGPRegressor(fit_hyperparameters=True) predicts with the σ's and noise that
    wn.predict.fit_hyperparameters finds (an independent call), and improves the evidence
    over the default network's."""
    import widenets as wn
    from widenets.sklearn import NNGPRegressor, default_net

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3))
    y = np.sin(2 * x[:, 0]) + 0.05 * rng.standard_normal(40)
    reg = NNGPRegressor(fit_hyperparameters=True, fit_steps=15).fit(x, y)
    xt, yt = torch.tensor(x), torch.tensor(y)
    fit = wn.predict.fit_hyperparameters(default_net(), xt, yt, kernel="nngp", tied=True,
                                         steps=15)
    assert reg.hyperparameters_ == fit.hyperparameters and reg.noise_ == fit.noise
    xq = rng.standard_normal((5, 3))
    ref = wn.predict.gp_inference(fit.net.kernel(xt), yt, fit.net.kernel(torch.tensor(xq), xt),
                                  kernel="nngp", diag_reg=fit.noise, diag_reg_absolute=True).mean
    np.testing.assert_allclose(reg.predict(xq), ref.numpy(), rtol=1e-10, atol=1e-12)
    # the fit raised the evidence above the default network's at the same noise
    default = wn.predict.marginal_likelihood(default_net(), xt, yt, kernel="nngp",
                                             noise=fit.noise)
    assert fit.objective > float(default)


# ------------------------------------------------------------------ precomputed kernels (issue 18)
@pytest.fixture
def stores(tmp_path):
    """Train-train stores (NNGP and NTK, float64 and float32) of the regression inputs."""
    xtr = _regression_data()[0]
    x = torch.from_numpy(xtr)
    paths = {}
    for dtype in (torch.float64, torch.float32):
        path = tmp_path / f"k-{dtype}.zarr"
        wn.tiles.compute(NET, x, store=path, batch_size=16, dtype=dtype)
        paths[dtype] = path
    return paths


@pytest.fixture
def too_large(monkeypatch):
    """Every store is 'too large' for memory: predictions go through solve / Lanczos."""
    import widenets.predict.solver as solver

    monkeypatch.setattr(solver, "_fits_in_memory", lambda op: False)


@pytest.mark.parametrize("iterative", [False, True], ids=["fits", "too-large"])
def test_estimators_fitted_on_a_store_equal_the_in_memory_ones(stores, request, iterative):
    """fit(X, y, k_train=store) against fit(X, y) on the same data: NTK at t = None and a finite
    t (Lanczos when too large), multi-output, the NNGP posterior with its std, the classifier.
    A wrong factor anywhere (weights not Θ⁻¹, t not applied, NNGP/NTK swapped) is O(1)."""
    if iterative:
        request.getfixturevalue("too_large")
    xtr, ytr, xte, _ = _regression_data()
    store = stores[torch.float64]
    opts = dict(tol=1e-11)
    for t in (None, 2.0):
        ref = wn.sklearn.NTKRegressor(NET, t=t, diag_reg=1e-4).fit(xtr, ytr)
        got = wn.sklearn.NTKRegressor(NET, t=t, diag_reg=1e-4, solve_options=opts).fit(
            xtr, ytr, k_train=store)
        assert (got.predictor_.eig is None) == iterative
        np.testing.assert_allclose(got.predict(xte), ref.predict(xte), rtol=1e-7, atol=1e-9)
    y2 = np.stack([ytr, -ytr], 1)
    np.testing.assert_allclose(
        wn.sklearn.NTKRegressor(NET, t=2.0, diag_reg=1e-4, solve_options=opts).fit(
            xtr, y2, k_train=store).predict(xte),
        wn.sklearn.NTKRegressor(NET, t=2.0, diag_reg=1e-4).fit(xtr, y2).predict(xte),
        rtol=1e-7, atol=1e-9)
    ref = wn.sklearn.NNGPRegressor(NET, diag_reg=1e-3).fit(xtr, ytr)
    got = wn.sklearn.NNGPRegressor(NET, diag_reg=1e-3, solve_options=opts).fit(
        xtr, ytr, k_train=store)
    for a, b in zip(got.predict(xte, return_std=True), ref.predict(xte, return_std=True)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    labels = (ytr > 0).astype(int)
    clf = wn.sklearn.NTKClassifier(NET, diag_reg=1e-4, solve_options=opts).fit(
        xtr, labels, k_train=store)
    ref_clf = wn.sklearn.NTKClassifier(NET, diag_reg=1e-4).fit(xtr, labels)
    np.testing.assert_allclose(clf.decision_function(xte), ref_clf.decision_function(xte),
                               rtol=1e-6, atol=1e-9)


def test_a_float32_store_a_matrix_and_the_ntk_covariance(stores):
    xtr, ytr, xte, _ = _regression_data()
    ref = wn.sklearn.NTKRegressor(NET, diag_reg=1e-3).fit(xtr, ytr)
    # float32 store: the kernel itself differs by float32 rounding (~1e-7 relative).
    got = wn.sklearn.NTKRegressor(NET, diag_reg=1e-3).fit(xtr, ytr,
                                                          k_train=stores[torch.float32])
    np.testing.assert_allclose(got.predict(xte), ref.predict(xte), rtol=1e-3, atol=1e-4)
    # A matrix (here the NTK tensor) and the NTK-GP covariance (eq. 16) from a two-kernel store.
    k = NET.kernel(torch.from_numpy(xtr), get="ntk")
    got = wn.sklearn.NTKRegressor(NET, diag_reg=1e-3).fit(xtr, ytr, k_train=k)
    np.testing.assert_allclose(got.predict(xte), ref.predict(xte), rtol=1e-9, atol=1e-11)
    got = wn.sklearn.NTKRegressor(NET, diag_reg=1e-3).fit(xtr, ytr,
                                                          k_train=stores[torch.float64])
    for a, b in zip(got.predict(xte, return_std=True), ref.predict(xte, return_std=True)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_a_store_of_other_inputs_or_another_net_is_refused(stores):
    xtr, ytr, xte, _ = _regression_data()
    store = stores[torch.float64]
    reg = wn.sklearn.NTKRegressor(NET, diag_reg=1e-3)
    with pytest.raises(ValueError, match="NTKRegressor.fit: k_train was computed from other "
                                         "inputs than X"):
        reg.fit(xtr + 1e-9, ytr, k_train=store)                # a tiny change is caught
    with pytest.raises(ValueError, match="must be the symmetric \\(20, 20\\)"):
        reg.fit(xtr[:20], ytr[:20], k_train=store)
    other = wn.serial(wn.Dense(256, w_std=1.2, b_std=0.1), wn.Relu(), wn.Dense(1))
    with pytest.raises(ValueError, match="k_train does not match the NTK of this estimator's "
                                         "net"):
        wn.sklearn.NTKRegressor(other, diag_reg=1e-3).fit(xtr, ytr, k_train=store)
    with pytest.raises(ValueError, match="k_train does not match"):            # a matrix
        wn.sklearn.NTKRegressor(other, diag_reg=1e-3).fit(
            xtr, ytr, k_train=NET.kernel(torch.from_numpy(xtr), get="ntk"))
    with pytest.raises(ValueError, match="fit_hyperparameters=True changes the kernel"):
        wn.sklearn.NTKRegressor(NET, fit_hyperparameters=True).fit(xtr, ytr, k_train=store)
    fitted = wn.sklearn.NTKRegressor(NET, t=1.0, diag_reg=1e-3).fit(xtr, ytr, k_train=store)
    with pytest.raises(ValueError, match="finite t is not available"):
        fitted.predict(xte, return_std=True)
