"""Function-space ODEs for any loss and momentum (seed 002 eq. 7, SM §B), against the MSE
closed form, explicit small-step gradient descent on a linear model, the damped-oscillator
solution per eigenmode, and explicit heavy-ball steps."""

import numpy as np
import pytest
import torch

import widenets as wn


@pytest.fixture(scope="module")
def features():
    """A linear model f(x) = f_0(x) + J(x) ω with one ω column per output (Θ ⊗ I exactly)."""
    g = torch.Generator().manual_seed(5)
    j = torch.randn(12 + 4, 40, generator=g, dtype=torch.float64) / 40 ** 0.5
    j_tr, j_te = j[:12], j[12:]
    f0 = 0.3 * torch.randn(12, 3, generator=g, dtype=torch.float64)
    f0_te = 0.3 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    labels = torch.arange(12) % 3
    onehot = torch.nn.functional.one_hot(labels, 3).to(torch.float64)
    return j_tr, j_te, f0, f0_te, onehot


def test_mse_ode_matches_closed_form(features):
    """loss="mse" integrated by solve_ivp equals eqs. 9-11 (times unsorted, 0 included);
    the solver runs at rtol 1e-10, so 1e-7 leaves room only for integration error."""
    j_tr, j_te, f0, f0_te, y = features
    theta, theta_tx = j_tr @ j_tr.T, j_te @ j_tr.T
    ts = torch.tensor([5.0, 0.0, 1.0, 30.0])
    closed = wn.predict.gradient_descent_mse(theta, y, learning_rate=0.7)(ts, f0, f0_te,
                                                                          theta_tx)
    ode = wn.predict.gradient_descent("mse", theta, y, learning_rate=0.7)(ts, f0, f0_te,
                                                                         theta_tx)
    for a, b in zip(ode, closed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)
    # a custom callable loss, vector targets
    mse = lambda fx, yy: 0.5 * ((fx - yy) ** 2).sum()  # noqa: E731
    out = wn.predict.gradient_descent(mse, theta, y[:, 0], learning_rate=0.7)(5.0, f0[:, 0])
    torch.testing.assert_close(out, closed[0][0][:, 0], rtol=1e-7, atol=1e-7)


def _euler_cross_entropy(j_tr, j_te, f0, f0_te, y, eta, t, substeps):
    j_tr, j_te, f0, f0_te, y = (a.numpy() for a in (j_tr, j_te, f0, f0_te, y))
    omega = np.zeros((j_tr.shape[1], y.shape[1]))
    h = eta / substeps
    for _ in range(int(t * substeps)):
        f = f0 + j_tr @ omega
        e = np.exp(f - f.max(1, keepdims=True))
        grad = e / e.sum(1, keepdims=True) - y     # ∇_f of -Σ y log softmax f
        omega = omega - h * j_tr.T @ grad
    return torch.from_numpy(f0 + j_tr @ omega), torch.from_numpy(f0_te + j_te @ omega)


def test_cross_entropy_matches_small_step_descent(features):
    """Cross-entropy gradient flow against parameter-space gradient descent with step η/M on
    the linear model, Richardson-extrapolated over M = 20, 40 (error O(1/M²) ≈ 1e-5 here);
    tolerance 1e-4 against outputs of size O(1)."""
    j_tr, j_te, f0, f0_te, y = features
    theta, theta_tx = j_tr @ j_tr.T, j_te @ j_tr.T
    eta, t = 1.0, 15.0
    tr, te = wn.predict.gradient_descent("cross_entropy", theta, y, learning_rate=eta)(
        t, f0, f0_te, theta_tx)
    a_tr, a_te = _euler_cross_entropy(j_tr, j_te, f0, f0_te, y, eta, t, 20)
    b_tr, b_te = _euler_cross_entropy(j_tr, j_te, f0, f0_te, y, eta, t, 40)
    torch.testing.assert_close(tr, 2 * b_tr - a_tr, rtol=0, atol=1e-4)
    torch.testing.assert_close(te, 2 * b_te - a_te, rtol=0, atol=1e-4)
    assert float((tr - f0).abs().max()) > 0.3        # it trained


def test_momentum_mse_matches_damped_oscillators(features):
    """Momentum on MSE: each eigenmode z of f - Y solves z'' + (1-β) z' + ηλ z = 0 with
    z(0) = z_0, z'(0) = 0; test outputs move by Θ(x,X) Θ⁻¹ (f(X) - f_0(X)) (same linear ODE)."""
    j_tr, j_te, f0, f0_te, y = features
    theta, theta_tx = j_tr @ j_tr.T, j_te @ j_tr.T
    eta, beta, t = 0.05, 0.9, 25.0
    lam, vec = np.linalg.eigh(theta.numpy())
    z0 = vec.T @ (f0 - y).numpy()
    disc = np.sqrt((1 - beta) ** 2 - 4 * eta * lam + 0j)
    s1, s2 = (-(1 - beta) + disc) / 2, (-(1 - beta) - disc) / 2
    zt = ((s2 * np.exp(s1 * t) - s1 * np.exp(s2 * t)) / (s2 - s1)).real[:, None] * z0
    ref_tr = y.numpy() + vec @ zt
    ref_te = f0_te.numpy() + theta_tx.numpy() @ np.linalg.solve(theta.numpy(),
                                                                 ref_tr - f0.numpy())
    tr, te = wn.predict.gradient_descent("mse", theta, y, learning_rate=eta, momentum=beta)(
        t, f0, f0_te, theta_tx)
    np.testing.assert_allclose(tr.numpy(), ref_tr, rtol=0, atol=1e-7)
    np.testing.assert_allclose(te.numpy(), ref_te, rtol=0, atol=1e-6)


def test_momentum_matches_heavy_ball_steps(features):
    """The continuous momentum ODE approximates explicit heavy-ball steps v ← βv - η∇L,
    ω ← ω + v on the linear model with cross-entropy, with error O(ηλ); at ηλ_max ≈ 0.01 the
    agreement is ~1e-3 of the movement (tolerance 1e-2), while measuring time in units of √η,
    β = 0.8 or no momentum are off by 20-100% of it."""
    j_tr, j_te, f0, f0_te, y = features
    theta, theta_tx = j_tr @ j_tr.T, j_te @ j_tr.T
    lam_max = float(torch.linalg.eigvalsh(theta)[-1])
    eta, beta, steps = 0.01 / lam_max, 0.9, 300
    jn, yn, f0n = j_tr.numpy(), y.numpy(), f0.numpy()
    omega = np.zeros((j_tr.shape[1], 3))
    v = np.zeros_like(omega)
    for _ in range(steps):
        f = f0n + jn @ omega
        e = np.exp(f - f.max(1, keepdims=True))
        v = beta * v - eta * jn.T @ (e / e.sum(1, keepdims=True) - yn)
        omega = omega + v
    omega = torch.from_numpy(omega)
    ref_tr, ref_te = f0 + j_tr @ omega, f0_te + j_te @ omega
    tr, te = wn.predict.gradient_descent("cross_entropy", theta, y, learning_rate=eta,
                                         momentum=beta)(steps, f0, f0_te, theta_tx)
    move = float((ref_tr - f0).abs().max())
    assert move > 0.1
    assert float((tr - ref_tr).abs().max()) < 0.01 * move
    assert float((te - ref_te).abs().max()) < 0.01 * move


def test_ode_errors(features):
    j_tr, _, _, _, y = features
    theta = j_tr @ j_tr.T
    with pytest.raises(ValueError, match="loss must be a callable"):
        wn.predict.gradient_descent("hinge", theta, y)
    with pytest.raises(ValueError, match="momentum must be None or a number in"):
        wn.predict.gradient_descent("mse", theta, y, momentum=1.5)
    predict = wn.predict.gradient_descent("mse", theta, y)
    with pytest.raises(ValueError, match="t must be finite"):
        predict(None)
    bad = wn.predict.gradient_descent(lambda fx, yy: fx, theta, y)
    with pytest.raises((ValueError, RuntimeError), match="scalar"):
        bad(1.0)
