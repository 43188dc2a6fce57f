"""wn.gpytorch kernels inside GPyTorch's own ExactGP training loop, against fit_hyperparameters
(the same optimum reached by two independent code paths: GPyTorch's likelihood, constraints and
solver versus widenets' Cholesky evidence)."""

import pytest
import torch

import widenets as wn

gpytorch = pytest.importorskip("gpytorch")


class ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood, covar):
        super().__init__(x, y, likelihood)
        self.mean = gpytorch.means.ZeroMean()
        self.covar = covar

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean(x), self.covar(x))


def _net():
    return wn.serial(wn.Dense(16, w_std=1.0, b_std=0.3), wn.Erf(), wn.Dense(1, w_std=1.0,
                                                                            b_std=0.3))


def test_kernel_matrix_equals_net_kernel():
    x1 = torch.randn(5, 3, dtype=torch.float64)
    x2 = torch.randn(4, 3, dtype=torch.float64)
    for cls, get in ((wn.gpytorch.NNGPKernel, "nngp"), (wn.gpytorch.NTKKernel, "ntk")):
        k = cls(_net())
        torch.testing.assert_close(k(x1, x2).to_dense(), _net().kernel(x1, x2, get=get),
                                   rtol=1e-12, atol=0)
        torch.testing.assert_close(k(x1, diag=True), _net().kernel(x1, get=get).diagonal(),
                                   rtol=1e-12, atol=0)


def test_exact_gp_training_matches_fit_hyperparameters():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g, dtype=torch.float64)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(40, generator=g, dtype=torch.float64)
    lik = gpytorch.likelihoods.GaussianLikelihood().double()
    model = ExactGP(x, y, lik, wn.gpytorch.NNGPKernel(_net(), tied=True)).double()
    model.train()
    lik.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)     # GPyTorch's usual training loop

    def closure():
        opt.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        return loss

    for _ in range(200):
        opt.zero_grad()
        closure()
        opt.step()
    got = {k: float(v) for k, v in model.covar.hyperparameter_values().items()}
    fit = wn.predict.fit_hyperparameters(_net(), x, y, kernel="nngp", tied=True, steps=60)
    for name in ("0.w_std", "0.b_std"):
        # a factor error in GPyTorch's parameter mapping (σ vs σ², softplus vs exp of the
        # wrong variable) lands far from the widenets optimum
        assert abs(got[name] - fit.hyperparameters[name]) < 2e-3 * fit.hyperparameters[name]
    assert abs(float(lik.noise.detach()) - fit.noise) < 2e-3 * fit.noise
    # the same posterior mean on new inputs
    model.eval()
    lik.eval()
    xt = torch.randn(7, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        mean = model(xt).mean
    ref = wn.predict.gp_inference(fit.net.kernel(x), y, fit.net.kernel(xt, x), kernel="nngp",
                                  diag_reg=fit.noise, diag_reg_absolute=True).mean
    torch.testing.assert_close(mean, ref, rtol=1e-3, atol=1e-4)


def test_priors_and_errors():
    prior = gpytorch.priors.GammaPrior(2.0, 2.0)
    k = wn.gpytorch.NNGPKernel(_net(), tied=True, priors={"*.w_std": prior})
    assert any("w_std" in name for name, *_ in k.named_priors())
    with pytest.raises(TypeError, match="NNGPKernel: net must be a widenets network"):
        wn.gpytorch.NNGPKernel(torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="priors key"):
        wn.gpytorch.NNGPKernel(_net(), priors={"*.gamma": prior})
