"""Closed-form MSE gradient descent (seed 002, eqs. 8-11) against independent computations:
direct ODE integration (scipy solve_ivp), explicit gradient-descent steps on a linearized
network, and the matrix exponential."""

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.integrate import solve_ivp
from torch.func import functional_call, jacrev

import widenets as wn
from widenets.empirical import empirical_ntk


def test_gradient_flow_matches_solve_ivp(kernels, data):
    """eqs. 9-11 against integrating df/dt = -η Θ(·, X)(f(X) - Y) at rtol 1e-12.

    Outputs are O(1) and the integration error ~1e-10, so atol 1e-8 fails on any wrong
    factor (η vs η/2 changes outputs by O(0.1))."""
    k_train, k_test_train, _ = kernels
    _, _, y = data
    theta, theta_tx = k_train.ntk.numpy(), k_test_train.ntk.numpy()
    g = torch.Generator().manual_seed(1)
    f0 = torch.randn(y.shape, generator=g, dtype=torch.float64)
    f0_test = torch.randn(5, 3, generator=g, dtype=torch.float64)
    eta = 0.3
    times = np.array([0.0, 0.5, 3.0, 20.0])
    n, k = y.shape

    def rhs(_, s):
        f = s.reshape(-1, k)
        grad = f[:n] - y.numpy()
        return -eta * np.concatenate([theta @ grad, theta_tx @ grad]).reshape(-1)

    s0 = np.concatenate([f0.numpy(), f0_test.numpy()]).reshape(-1)
    sol = solve_ivp(rhs, (0, times[-1]), s0, t_eval=times, method="DOP853", rtol=1e-12,
                    atol=1e-14)
    ref = sol.y.T.reshape(len(times), -1, k)
    predict = wn.predict.gradient_descent_mse(k_train, y, learning_rate=eta)
    train, test = predict(torch.tensor(times), f0, f0_test, k_test_train)
    np.testing.assert_allclose(train.numpy(), ref[:, :n], atol=1e-8, rtol=0)
    np.testing.assert_allclose(test.numpy(), ref[:, n:], atol=1e-8, rtol=0)
    # a scalar time gives the same rows without the time axis
    tr2, te2 = predict(3.0, f0, f0_test, k_test_train.ntk)
    torch.testing.assert_close(tr2, train[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(te2, test[2], rtol=1e-12, atol=1e-12)


def _linearized(model, x):
    """Per-example Jacobian (n, P) of a single-output model, and its outputs (n,)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi[None],)).reshape(())

    jac = torch.func.vmap(jacrev(f), in_dims=(None, 0))(params, x)
    j = torch.cat([v.reshape(x.shape[0], -1) for v in jac.values()], dim=1)
    with torch.no_grad():
        out = model(x).reshape(-1)
    return j, out


def test_discrete_matches_explicit_steps_on_linearized_network(net, data):
    """discrete=True equals explicit gradient descent on the linearized network, step for step.

    The linear model f(x) = f_0(x) + J(x) ω (one ω column per output: the Θ ⊗ I structure) is
    trained by ω ← ω - η J(X)ᵀ (f(X) - Y) with Θ = J Jᵀ; train and test outputs and ||ω||
    (eq. 8) must agree to round-off (1e-9 relative) at every one of 40 steps."""
    x_train, x_test, y = data
    model = net.module((4,), seed=3, dtype=torch.float64)
    j_tr, _ = _linearized(model, x_train)
    j_te, _ = _linearized(model, x_test)
    theta = j_tr @ j_tr.T
    torch.testing.assert_close(theta, empirical_ntk(model, x_train, implementation="jacobian"),
                               rtol=1e-10, atol=1e-10)
    g = torch.Generator().manual_seed(2)
    f0 = torch.randn(y.shape, generator=g, dtype=torch.float64)
    f0_test = torch.randn(5, 3, generator=g, dtype=torch.float64)
    eta = 1.5 / float(torch.linalg.eigvalsh(theta)[-1])     # large steps: oscillating modes
    omega = torch.zeros(j_tr.shape[1], 3, dtype=torch.float64)
    steps = 40
    trains, tests, norms = [], [], []
    for _ in range(steps + 1):
        f_tr, f_te = f0 + j_tr @ omega, f0_test + j_te @ omega
        trains.append(f_tr)
        tests.append(f_te)
        norms.append(omega.norm())
        omega = omega - eta * j_tr.T @ (f_tr - y)
    predict = wn.predict.gradient_descent_mse(theta, y, learning_rate=eta, discrete=True)
    ts = torch.arange(steps + 1, dtype=torch.float64)
    train, test = predict(ts, f0, f0_test, j_te @ j_tr.T)
    torch.testing.assert_close(train, torch.stack(trains), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(test, torch.stack(tests), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(predict.weight_change(ts, f0), torch.stack(norms), rtol=1e-8,
                               atol=1e-9)
    wc = wn.predict.weight_change(theta, y, 7, f0, learning_rate=eta, discrete=True)
    torch.testing.assert_close(wc, norms[7], rtol=1e-8, atol=1e-9)


def test_infinite_time_is_ntk_gp_mean(kernels, data):
    """t=None gives f(X) = Y exactly and the test mean Θ(x,X) Θ⁻¹ Y of eq. 16 (Cholesky path
    in gp_inference, eigendecomposition here); t=1e6 is already there."""
    k_train, k_test_train, _ = kernels
    _, _, y = data
    predict = wn.predict.gradient_descent_mse(k_train, y, learning_rate=1.0)
    train, test = predict(None, 0.0, 0.0, k_test_train)
    torch.testing.assert_close(train, y, rtol=0, atol=1e-12)
    gp = wn.predict.gp_inference(k_train, y, k_test_train, kernel="ntk")
    torch.testing.assert_close(test, gp.mean, rtol=1e-9, atol=1e-9)
    direct = k_test_train.ntk @ torch.linalg.solve(k_train.ntk, y)
    torch.testing.assert_close(test, direct, rtol=1e-8, atol=1e-8)
    _, test_late = predict(1e6, 0.0, None, k_test_train)
    torch.testing.assert_close(test_late, test, rtol=1e-7, atol=1e-7)
    # a mixed vector of times, infinity included
    tr, te = predict(torch.tensor([0.0, float("inf")]), 0.0, None, k_test_train)
    assert tr.shape == (2, 12, 3) and te.shape == (2, 5, 3)
    torch.testing.assert_close(te[1], test)
    assert float(te[0].abs().max()) == 0.0


def test_vector_targets_and_shapes(kernels, data):
    k_train, k_test_train, _ = kernels
    _, _, y = data
    predict_col = wn.predict.gradient_descent_mse(k_train.ntk, y[:, 1], learning_rate=0.5)
    predict_all = wn.predict.gradient_descent_mse(k_train.ntk.numpy(), y.numpy(),
                                                  learning_rate=0.5)
    tr, te = predict_col(2.0, 0.0, None, k_test_train)
    assert tr.shape == (12,) and te.shape == (5,)
    tr_all, te_all = predict_all(2.0, 0.0, None, k_test_train.ntk.numpy())
    torch.testing.assert_close(tr, tr_all[:, 1])
    torch.testing.assert_close(te, te_all[:, 1])
    assert predict_col(torch.tensor([1.0, 2.0])).shape == (2, 12)
    assert predict_col(torch.tensor(2.0)).shape == (12,)


def test_diag_reg_relative_and_absolute(kernels, data):
    """Relative diag_reg adds ρ = diag_reg·mean(diag Θ); checked against the matrix exponential
    of Θ + ρI (scipy expm, independent of the eigendecomposition)."""
    k_train, _, y = kernels[0], kernels[1], data[2]
    theta = k_train.ntk
    rho = 0.1 * float(theta.diagonal().mean())
    expm = scipy.linalg.expm(-0.7 * 2.0 * (theta.numpy() + rho * np.eye(12)))
    ref = y.numpy() - expm @ y.numpy()
    rel = wn.predict.gradient_descent_mse(theta, y, learning_rate=0.7, diag_reg=0.1)(2.0)
    ab = wn.predict.gradient_descent_mse(theta, y, learning_rate=0.7, diag_reg=rho,
                                         diag_reg_absolute=True)(2.0)
    np.testing.assert_allclose(rel.numpy(), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ab.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_singular_kernel_finite_time_and_infinite_time_error():
    """A PSD kernel of rank 2 (duplicate inputs): finite times follow expm (the zero modes do
    not move); t=None has no limit and raises, suggesting diag_reg, which then works."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 2, generator=g, dtype=torch.float64)
    theta = a @ a.T
    y = torch.randn(5, generator=g, dtype=torch.float64)
    predict = wn.predict.gradient_descent_mse(theta, y)
    ref = y.numpy() - scipy.linalg.expm(-3.0 * theta.numpy()) @ y.numpy()
    np.testing.assert_allclose(predict(3.0).numpy(), ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="diag_reg"):
        predict(None)
    out = wn.predict.gradient_descent_mse(theta, y, diag_reg=1e-3)(None)
    assert torch.isfinite(out).all()


def test_not_positive_semidefinite_raises_with_diag_reg_hint():
    theta = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)   # eigenvalues -1, 3
    with pytest.raises(ValueError, match="gradient_descent_mse.*not positive semi-definite"
                                         ".*diag_reg"):
        wn.predict.gradient_descent_mse(theta, torch.ones(2))


def test_discrete_infinite_time_and_bad_learning_rate(kernels, data):
    k_train, _, _ = kernels
    y = data[2]
    lam_max = float(torch.linalg.eigvalsh(k_train.ntk)[-1])
    ok = wn.predict.gradient_descent_mse(k_train, y, learning_rate=1.0 / lam_max, discrete=True)
    torch.testing.assert_close(ok(None), y, rtol=0, atol=1e-12)
    bad = wn.predict.gradient_descent_mse(k_train, y, learning_rate=2.5 / lam_max,
                                          discrete=True)
    with pytest.raises(ValueError, match="diverges.*max_learning_rate"):
        bad(None)
    with pytest.raises(FloatingPointError, match="diverges"):   # issue 17 item 8
        bad(50)


@pytest.mark.parametrize("kwargs, call, match", [
    (dict(y_train=torch.ones(11)), None, "one row per training input"),
    (dict(learning_rate=0.0), None, "learning_rate must be a finite number > 0"),
    (dict(diag_reg=-1.0), None, "diag_reg must be a finite number >= 0"),
    (dict(), dict(t=-1.0), "t must be >= 0"),
    (dict(discrete=True), dict(t=1.5), "whole numbers"),
    (dict(), dict(t=torch.ones(2, 2)), "scalar or a 1-D tensor"),
    (dict(), dict(t=1.0, fx_test_0=0.0), "fx_test_0 was given without k_test_train"),
    (dict(), dict(t=1.0, fx_train_0=torch.ones(3)), "fx_train_0 must be a number or have shape"),
    (dict(), dict(t=1.0, k_test_train=torch.ones(5, 11)),
     r"k_test_train must have shape \(n, 12\)"),
])
def test_bad_input_messages(kernels, data, kwargs, call, match):
    k_train = kernels[0]
    args = dict(k_train_train=k_train.ntk, y_train=data[2][:, 0])
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        predict = wn.predict.gradient_descent_mse(
            args.pop("k_train_train"), args.pop("y_train"), **args)
        predict(**call)


def test_kernel_argument_checks(kernels, data):
    k_nngp_only = kernels[0].replace(ntk=None)
    with pytest.raises(ValueError, match="without its 'ntk' field"):
        wn.predict.gradient_descent_mse(k_nngp_only, data[2])
    bad = kernels[0].ntk.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        wn.predict.gradient_descent_mse(bad, data[2])
    with pytest.raises(ValueError, match="symmetric"):
        wn.predict.gradient_descent_mse(kernels[0].ntk + torch.triu(torch.ones(12, 12)), data[2])
    with pytest.raises(TypeError, match="wn.Kernel, a torch tensor or a numpy array"):
        wn.predict.gradient_descent_mse("kernel", data[2])
