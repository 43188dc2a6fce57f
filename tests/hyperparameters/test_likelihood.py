"""Marginal likelihood, cross-validated likelihood and the fit, against independent references:
torch.distributions.MultivariateNormal, the trained-ensemble predictor of wn.predict, and the
Fisher-information error of a maximum-likelihood estimate on data drawn from the NNGP itself."""

import math

import pytest
import torch

import widenets as wn


def _net(w=1.5, b=0.2):
    return wn.serial(wn.Dense(32, w_std=w, b_std=b), wn.Erf(), wn.Dense(1, w_std=w, b_std=b))


@pytest.mark.parametrize("kernel", ["nngp", "ntk"])
def test_marginal_likelihood_equals_multivariate_normal(kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(25, 3, generator=g, dtype=torch.float64)
    y = torch.randn(25, 2, generator=g, dtype=torch.float64)
    net, noise = _net(), 0.05
    k = net.kernel(x, get=kernel)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(25, dtype=torch.float64),
                                                 covariance_matrix=k + noise * torch.eye(25, dtype=torch.float64))
    ref = mvn.log_prob(y.T).sum()          # independent columns: a sum over them
    got = wn.predict.marginal_likelihood(net, x, y, kernel=kernel, noise=noise)
    # a missing ½ on the log-determinant or a wrong column count changes it by O(10)
    assert abs(float(got) - float(ref)) < 1e-10 * abs(float(ref))


def test_marginal_likelihood_errors():
    x, y = torch.randn(5, 2), torch.randn(5)
    with pytest.raises(ValueError, match="marginal_likelihood: noise must be"):
        wn.predict.marginal_likelihood(_net(), x, y, kernel="nngp", noise=-1.0)
    with pytest.raises(ValueError, match="marginal_likelihood: kernel must be"):
        wn.predict.marginal_likelihood(_net(), x, y, kernel="rbf", noise=0.1)
    dup = torch.cat([x, x])
    with pytest.raises(ValueError, match="increase noise"):   # singular without noise
        wn.predict.marginal_likelihood(_net(), dup, torch.randn(10), kernel="nngp", noise=0.0)


def test_cv_likelihood_equals_ensemble_predictor():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.randn(12, generator=g, dtype=torch.float64)
    net, noise, t = _net(), 0.1, 3.0
    got = wn.predict.cv_log_likelihood(net, x, y, kernel="ntk", noise=noise, t=t, folds=3,
                                       seed=5)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    ref = 0.0
    for val in torch.tensor_split(perm, 3):
        tr = torch.tensor([i for i in range(12) if i not in set(val.tolist())])
        pred = wn.predict.gradient_descent_mse_ensemble(net, x[tr], y[tr])
        out = pred(t, x[val], kernel="ntk", compute_cov=True)
        cov = out.covariance + noise * torch.eye(len(val), dtype=torch.float64)
        ref += float(torch.distributions.MultivariateNormal(out.mean, cov).log_prob(y[val]))
    assert abs(float(got) - ref) < 1e-8 * abs(ref)


@pytest.mark.slow
def test_fit_recovers_the_generating_hyperparameters():
    """Data drawn from the NNGP with σw = 1.6, σb = 0.4 (n = 500, 4 independent columns): the
    maximum-likelihood fit lands within 3 standard errors, the standard errors from the Fisher
    information I_ij = (c/2) tr(A⁻¹ ∂_i A A⁻¹ ∂_j A) of the model at the truth (for these
    sizes: about 0.02 for σw and 0.05 for σb)."""
    g = torch.Generator().manual_seed(0)
    n, c, noise = 500, 4, 0.01
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    true = torch.tensor([1.6, 0.4], dtype=torch.float64)
    start = _net(1.0, 0.1)

    def cov(v):
        net = start.with_hyperparameters({"*.w_std": v[0], "*.b_std": v[1]})
        return net.kernel(x, get="nngp") + noise * torch.eye(n, dtype=torch.float64)

    a = cov(true)
    y = torch.linalg.cholesky(a) @ torch.randn(n, c, generator=g, dtype=torch.float64)
    h = 1e-6                                  # ∂A/∂θ_i by central differences (ample for SEs)
    ainv = torch.linalg.inv(a)
    m = [ainv @ ((cov(true + h * e) - cov(true - h * e)) / (2 * h))
         for e in torch.eye(2, dtype=torch.float64)]
    fisher = torch.tensor([[0.5 * c * float(torch.trace(m[i] @ m[j])) for j in range(2)]
                           for i in range(2)])
    se = torch.sqrt(torch.diagonal(torch.linalg.inv(fisher)))
    fit = wn.predict.fit_hyperparameters(start, x, y, kernel="nngp", tied=True, noise=noise,
                                         learn_noise=False, steps=25)
    got = torch.tensor([fit.hyperparameters["0.w_std"], fit.hyperparameters["0.b_std"]])
    assert fit.objective > fit.record[0]["objective"]
    # the start (1.0, 0.1) is 30 and 6 standard errors away: a fit that does not move, or
    # moves the wrong way, fails
    assert ((got - true).abs() < 3 * se).all(), (got, true, se)
    assert fit.hyperparameters["2.w_std"] == fit.hyperparameters["0.w_std"]   # tied


def test_fit_options_and_errors():
    x = torch.randn(15, 2, dtype=torch.float64)
    y = torch.sin(x[:, 0])
    fit = wn.predict.fit_hyperparameters(_net(), x, y, kernel="ntk", names="*.w_std",
                                         bounds={"*.w_std": (0.5, 3.0)}, optimizer="adam",
                                         steps=3, objective="cv", t=2.0, folds=3)
    assert all(0.5 <= fit.hyperparameters[k] <= 3.0 for k in ("0.w_std", "2.w_std"))
    assert fit.hyperparameters["0.b_std"] == 0.2              # not selected: unchanged
    assert len(fit.record) == 4 and math.isfinite(fit.objective)
    with pytest.raises(ValueError, match="fit_hyperparameters: optimizer"):
        wn.predict.fit_hyperparameters(_net(), x, y, optimizer="sgd")
    with pytest.raises(ValueError, match="bounds for 0.w_std"):
        wn.predict.fit_hyperparameters(_net(), x, y, bounds={"0.w_std": (2.0, 1.0)})
    with pytest.raises(ValueError, match="names key"):
        wn.predict.fit_hyperparameters(_net(), x, y, names="*.gamma")
    # bad targets are named as the argument `y` of the function called, before any kernel
    with pytest.raises(ValueError, match=r"fit_hyperparameters: y must have one row per "
                                         r"training input \(15\), got shape \(4,\)"):
        wn.predict.fit_hyperparameters(_net(), x, y[:4])
    with pytest.raises(ValueError, match="fit_hyperparameters: y contains 1 NaN"):
        wn.predict.fit_hyperparameters(_net(), x, torch.cat([y[:-1], y.new_full((1,), float("nan"))]))


def test_closed_form_gradient_equals_autograd_through_cholesky():
    """The evidence's hand-written backward (½(ααᵀ - c A⁻¹), -α) against plain autograd
    through torch's Cholesky, solve and log-determinant: a missing ½, a sign, or c A⁻¹ with the
    wrong c would each show."""
    from widenets.predict.likelihood import gaussian_log_likelihood

    g = torch.Generator().manual_seed(4)
    b = torch.randn(9, 9, generator=g, dtype=torch.float64)
    k = (b @ b.T / 9).requires_grad_(True)
    y = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    noise = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(gaussian_log_likelihood(k, y, noise, func="t"), (k, y, noise))
    a = 0.5 * (k + k.T) + noise * torch.eye(9, dtype=torch.float64)
    ref_val = torch.distributions.MultivariateNormal(torch.zeros(9, dtype=torch.float64),
                                                     covariance_matrix=a).log_prob(y.T).sum()
    ref = torch.autograd.grad(ref_val, (k, y, noise))
    for g1, g2 in zip(got, ref):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
