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


def _diag_nets():
    std = dict(parameterization="standard")
    return {
        "erf": _net(),
        "relu standard": wn.serial(wn.Dense(16, b_std=0.3, **std), wn.Relu(),
                                   wn.Dense(1, b_std=0.1, **std)),
        "layernorm, fan-out, concat": wn.serial(
            wn.Dense(16, b_std=0.2), wn.LayerNorm(), wn.FanOut(2),
            wn.parallel(wn.serial(wn.Relu(), wn.Dense(8)), wn.serial(wn.Gelu(), wn.Dense(24))),
            wn.FanInConcat(), wn.Erf(), wn.Dense(1)),
        "quadrature": wn.serial(wn.Dense(16, b_std=0.2), wn.Elementwise(torch.tanh),
                                wn.Dense(1)),
        "dropout (block fallback)": wn.serial(wn.Dense(16, b_std=0.2), wn.Relu(),
                                              wn.Dropout(0.3), wn.Dense(1)),
    }


@pytest.mark.parametrize("name", list(_diag_nets()))
def test_diag_is_the_diagonal_of_the_full_matrix(name, monkeypatch):
    """diag=True equals the diagonal of the full matrix (x1 = x2, and x1 != x2 pairwise) for
    the NNGP and the NTK, and never computes more than 256 x 256 input pairs per call (the
    full matrix here is 300 x 300). A wrong pairing (a shifted or transposed input, x1 paired
    with x1 instead of x2, a block boundary off by one) changes entries by O(1)."""
    net = _diag_nets()[name]
    g = torch.Generator().manual_seed(7)
    n = 6 if name == "quadrature" else 300      # (the quadrature costs ~5 ms per entry)
    x1 = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x2 = torch.randn(n, 3, generator=g, dtype=torch.float64)
    kernels = [wn.gpytorch.NNGPKernel(net), wn.gpytorch.NTKKernel(net)]
    pairs = []
    kernel = wn.Layer.kernel

    def spy(self, a, b=None, **kw):      # the largest kernel any call computes
        pairs.append(a.shape[0] * (a.shape[0] if b is None else b.shape[0]))
        return kernel(self, a, b, **kw)

    with torch.no_grad():               # (quadrature refuses autograd; gradients: below)
        full = [(k.forward(x1, x1).diagonal(), k.forward(x1, x2).diagonal()) for k in kernels]
        monkeypatch.setattr(wn.Layer, "kernel", spy)
        for k, (want_same, want_cross) in zip(kernels, full):
            same, cross = k(x1, diag=True), k(x1, x2, diag=True)
            # position-wise networks: the same operations entry by entry (bitwise in
            # practice); Elementwise symmetrizes whole kernels, hence rounding
            torch.testing.assert_close(same, want_same, rtol=1e-12, atol=0)
            torch.testing.assert_close(cross, want_cross, rtol=1e-12, atol=0)
    assert pairs and max(pairs) <= 256 * 256, f"a call computed {max(pairs)} input pairs"
    if "fallback" not in name:          # one input whose positions are the n inputs
        assert max(pairs) == 1, f"position-wise network took the block path: {pairs}"


def test_diag_gradients_match_the_full_diagonal():
    # hyperparameter gradients through the O(n) path equal those through the full matrix
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for cls, get in ((wn.gpytorch.NNGPKernel, "nngp"), (wn.gpytorch.NTKKernel, "ntk")):
        k = cls(_net(), tied=True)
        (g_diag,) = torch.autograd.grad(k(x, diag=True).sum(), [k.raw_all_w_std])
        full = k.net.with_hyperparameters(k.hyperparameter_values()).kernel(x, get=get)
        (g_full,) = torch.autograd.grad(full.diagonal().sum(), [k.raw_all_w_std])
        assert float(g_full) != 0.0
        torch.testing.assert_close(g_diag, g_full, rtol=1e-10, atol=0)


def test_diag_needs_inputs_of_the_same_shape():
    k = wn.gpytorch.NNGPKernel(_net())
    with pytest.raises(ValueError, match=r"NNGPKernel.forward: diag=True needs x1 and x2 of "
                                         r"the same shape"):
        k.forward(torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64),
                  diag=True)
