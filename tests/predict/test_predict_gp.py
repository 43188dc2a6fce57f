"""GP posteriors (eqs. 13, 16) and the trained-ensemble Gaussian (eqs. 14-15), checked against
independent algebra: Gaussian conditioning through the joint precision matrix, and the
covariance of the affine map f_0 -> f_t taken from the MSE predictor (eqs. 9-11)."""

import numpy as np
import pytest
import torch

import widenets as wn


def test_nngp_posterior_is_gaussian_conditioning(kernels, data):
    """eq. 13 against conditioning via the joint precision: Σ_post = ((J⁻¹)_tt)⁻¹ and
    μ_post = -Σ_post (J⁻¹)_tX Y for the joint covariance J of [X_test, X]."""
    k_train, k_test_train, k_test = kernels
    y = data[2]
    joint = torch.cat([torch.cat([k_test.nngp, k_test_train.nngp], 1),
                       torch.cat([k_test_train.nngp.T, k_train.nngp], 1)], 0)
    prec = torch.linalg.inv(joint)
    cov_ref = torch.linalg.inv(prec[:5, :5])
    mean_ref = -cov_ref @ prec[:5, 5:] @ y
    gp = wn.predict.gp_inference(k_train, y, k_test_train, k_test, kernel="nngp")
    torch.testing.assert_close(gp.mean, mean_ref, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(gp.covariance, cov_ref, rtol=1e-7, atol=1e-8)
    # tensors instead of Kernels, vector targets
    gp2 = wn.predict.gp_inference(k_train.nngp, y[:, 0], k_test_train.nngp.numpy(),
                                  k_test.nngp, kernel="nngp")
    torch.testing.assert_close(gp2.mean, mean_ref[:, 0], rtol=1e-7, atol=1e-8)
    assert wn.predict.gp_inference(k_train, y, k_test_train).covariance is None


def _affine_ensemble(k_train, k_test_train, k_test, y, t, eta):
    """Mean and test covariance of f_t over f_0 ~ N(0, K_joint), with f_t(x) affine in f_0
    taken from gradient_descent_mse (eqs. 9-11): one output column per unit vector e_j."""
    n, m = y.shape[0], k_test_train.ntk.shape[0]
    eye = torch.eye(n + m, dtype=torch.float64)
    predict = wn.predict.gradient_descent_mse(k_train.ntk, torch.zeros(n, n + m),
                                              learning_rate=eta)
    _, a_test = predict(t, eye[:n], eye[n:], k_test_train.ntk)       # (m, n + m): f_t = A f_0
    joint = torch.cat([torch.cat([k_train.nngp, k_test_train.nngp.T], 1),
                       torch.cat([k_test_train.nngp, k_test.nngp], 1)], 0)
    _, mean = wn.predict.gradient_descent_mse(k_train.ntk, y, learning_rate=eta)(
        t, 0.0, 0.0, k_test_train.ntk)
    return mean, a_test @ joint @ a_test.T


@pytest.mark.parametrize("t", [0.5, 4.0, None])
def test_ensemble_covariance_is_pushforward_of_prior(net, kernels, data, t):
    """eqs. 14-15 (and 16 at t=None) equal the mean and covariance of the affine map of the
    prior f_0 ~ GP(0, K) given by eqs. 9-11 (a separate code path)."""
    x_train, x_test, y = data
    k_train, k_test_train, k_test = kernels
    ens = wn.predict.gradient_descent_mse_ensemble(net, x_train, y, learning_rate=0.4)
    g = ens(t, x_test, kernel="ntk", compute_cov=True)
    mean_ref, cov_ref = _affine_ensemble(k_train, k_test_train, k_test, y, t, 0.4)
    torch.testing.assert_close(g.mean, mean_ref, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(g.covariance, cov_ref, rtol=1e-7, atol=1e-9)
    if t is None:
        gp = wn.predict.gp_inference(k_train, y, k_test_train, k_test, kernel="ntk")
        torch.testing.assert_close(g.mean, gp.mean, rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(g.covariance, gp.covariance, rtol=1e-7, atol=1e-9)


def test_readout_only_ensemble_at_infinity_is_nngp_posterior(net, kernels, data):
    """kernel="nngp" (train only the readout, tangent kernel K) at t=∞ gives eq. 13."""
    x_train, x_test, y = data
    k_train, k_test_train, k_test = kernels
    ens = wn.predict.gradient_descent_mse_ensemble(net, x_train, y)
    g = ens(None, x_test, kernel="nngp", compute_cov=True)
    gp = wn.predict.gp_inference(k_train, y, k_test_train, k_test, kernel="nngp")
    torch.testing.assert_close(g.mean, gp.mean, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(g.covariance, gp.covariance, rtol=1e-7, atol=1e-9)
    # and NTK-GP and NNGP differ (seed 002, Fig. 2): the test is not vacuous
    g_ntk = ens(None, x_test, kernel="ntk", compute_cov=True)
    assert float((g_ntk.covariance - g.covariance).diagonal().abs().max()) > 1e-2


def test_ensemble_times_and_train_set(net, data):
    x_train, x_test, y = data
    ens = wn.predict.gradient_descent_mse_ensemble(net, x_train, y, learning_rate=0.4)
    ts = torch.tensor([0.0, 1.0, 5.0])
    g = ens(ts, x_test, compute_cov=True)
    assert g.mean.shape == (3, 5, 3) and g.covariance.shape == (3, 5, 5)
    g1 = ens(5.0, x_test, compute_cov=True)
    torch.testing.assert_close(g.mean[2], g1.mean)
    torch.testing.assert_close(g.covariance[2], g1.covariance)
    # t = 0: the prior, mean 0 and covariance K(x, x)
    torch.testing.assert_close(g.mean[0], torch.zeros(5, 3, dtype=torch.float64))
    torch.testing.assert_close(g.covariance[0], net.kernel(x_test, get="nngp"))
    # training set at t = ∞: mean Y, zero variance; at finite t: e^{-ηΘt} K e^{-ηΘt}
    g_tr = ens(None, compute_cov=True)
    torch.testing.assert_close(g_tr.mean, y, atol=1e-8, rtol=0)
    assert float(g_tr.covariance.abs().max()) < 1e-8
    k = net.kernel(x_train)
    decay = torch.linalg.matrix_exp(-0.4 * 2.0 * k.ntk)
    torch.testing.assert_close(ens(2.0, compute_cov=True).covariance,
                               decay @ k.nngp @ decay, rtol=1e-8, atol=1e-10)
    assert ens(1.0, x_test).covariance is None


def test_gp_inference_errors(kernels, data):
    k_train, k_test_train, k_test = kernels
    y = data[2]
    with pytest.raises(ValueError, match="needs the NNGP as well as the NTK"):
        wn.predict.gp_inference(k_train.ntk, y, k_test_train.ntk, k_test.nngp, kernel="ntk")
    with pytest.raises(ValueError, match="kernel must be 'nngp'"):
        wn.predict.gp_inference(k_train, y, k_test_train, kernel="ntkgp")
    dup = torch.ones(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="not positive definite.*diag_reg"):
        wn.predict.gp_inference(dup, torch.ones(3), torch.ones(2, 3))
    out = wn.predict.gp_inference(dup, torch.ones(3), torch.ones(2, 3), diag_reg=1e-6)
    assert torch.isfinite(out.mean).all()
    with pytest.raises(ValueError, match=r"k_test_train must have shape \(n, 12\)"):
        wn.predict.gp_inference(k_train, y, torch.ones(5, 4))


def test_ensemble_errors(net, data):
    x_train, x_test, y = data
    with pytest.raises(TypeError, match="net must be a widenets layer"):
        wn.predict.gradient_descent_mse_ensemble(lambda x: x, x_train, y)
    with pytest.raises(ValueError, match="one row per training input"):
        wn.predict.gradient_descent_mse_ensemble(net, x_train, y[:3])
    ens = wn.predict.gradient_descent_mse_ensemble(net, x_train, y)
    with pytest.raises(ValueError, match="feature shape of x_train"):
        ens(1.0, np.ones((2, 7)))
    with pytest.raises(ValueError, match="kernel must be"):
        ens(1.0, x_test, kernel="both")
