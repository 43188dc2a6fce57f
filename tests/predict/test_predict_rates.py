"""max_learning_rate (seed 002 §2.4): explicit gradient descent on the linearized model
converges at 0.9x the stable rate and diverges at 1.1x, with and without momentum."""

import numpy as np
import pytest
import torch

import widenets as wn


def _residual_after(theta, y, eta, steps, momentum=0.0):
    """Explicit (heavy-ball) gradient descent in function space f ← f + u,
    u ← βu - ηΘ(f - y) (the linearized network, MSE), from f = 0; returns ||f - y||."""
    theta, y = theta.numpy(), y.numpy()
    f, u = np.zeros_like(y), np.zeros_like(y)
    for _ in range(steps):
        u = momentum * u - eta * theta @ (f - y)
        f = f + u
    return float(np.linalg.norm(f - y))


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_stable_rate_separates_convergence_from_divergence(kernels, data, momentum):
    """At 0.9x the residual shrinks by > 1e3 in 3000 steps (the slowest mode contracts by
    1 - 0.9·2(1+β)λ_min/λ_max-ish per step); at 1.1x the top mode grows by >= 1.2 per step,
    > 1e3 in 300 steps. A rate off by a factor 2 (e.g. 1/λ_max) would fail the second."""
    theta, y = kernels[0].ntk, data[2]
    rate = wn.predict.max_learning_rate(kernels[0], momentum=momentum)
    lam = torch.linalg.eigvalsh(theta)
    assert rate == pytest.approx(2 * (1 + momentum) / float(lam[-1]), rel=1e-12)
    start = float(y.norm())
    assert _residual_after(theta, y, 0.9 * rate, 3000, momentum) < 1e-3 * start
    assert _residual_after(theta, y, 1.1 * rate, 300, momentum) > 1e3 * start


def test_critical_rate_minimizes_slowest_contraction(kernels):
    """2/(λ_min + λ_max) is where |1 - ηλ_min| = |1 - ηλ_max|: the best worst-mode contraction
    (checked on a grid of rates around it)."""
    theta = kernels[0].ntk
    lam = torch.linalg.eigvalsh(theta).numpy()
    crit = wn.predict.max_learning_rate(theta, kind="critical")
    assert crit == pytest.approx(2 / (lam[0] + lam[-1]), rel=1e-12)

    def worst(eta):
        return np.abs(1 - eta * lam).max()

    grid = crit * np.linspace(0.5, 1.5, 101)
    assert worst(crit) <= min(worst(e) for e in grid) + 1e-12
    assert crit < wn.predict.max_learning_rate(theta)


def test_rate_errors(kernels):
    with pytest.raises(ValueError, match="kind must be 'stable'"):
        wn.predict.max_learning_rate(kernels[0], kind="best")
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\)"):
        wn.predict.max_learning_rate(kernels[0], momentum=1.0)
    with pytest.raises(ValueError, match="critical.*momentum"):
        wn.predict.max_learning_rate(kernels[0], momentum=0.5, kind="critical")
    with pytest.raises(ValueError, match="not positive semi-definite"):
        wn.predict.max_learning_rate(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
