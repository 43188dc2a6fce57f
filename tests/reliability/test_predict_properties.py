"""Issue 17 property tests, prediction side: random kernels, targets, dtypes, NaN positions,
regularizations, times and learning rates thrown at `gp_inference` and
`gradient_descent_mse` (seeded generation). Each call must either raise a widenets error whose
message starts with the public function's name, or return finite predictions equal to an
independent reference computed here without widenets' linear algebra:

* gp_inference's mean: `torch.linalg.solve` on K + ρI (ρ relative to the mean diagonal);
* gradient_descent_mse's train outputs: `torch.linalg.matrix_exp` (continuous) or
  `torch.linalg.matrix_power` (discrete) of the one-step / flow map, from zero outputs.

Tolerances scale with the condition number of the system, so an ill-conditioned case is judged
by what any solver can achieve, while a wrong factor (ρ absolute instead of relative, η·t
instead of t, a transposed kernel) misses by O(1).
"""

import re

import numpy as np
import pytest
import torch

import widenets as wn

ERROR = re.compile(r"^(gp_inference|gradient_descent_mse|MSEPredictor)\b")


def _random_kernel(rng):
    n = int(rng.integers(1, 9))
    d = int(rng.integers(1, 5))
    x = torch.from_numpy(rng.standard_normal((n, d)))
    if n > 2 and rng.random() < 0.25:
        x[-1] = x[0]                                      # duplicated training input
    net = wn.serial(wn.Dense(8, w_std=float(rng.uniform(0.5, 2)), b_std=0.1),
                    [wn.Relu, wn.Erf][int(rng.integers(0, 2))](), wn.Dense(1))
    k = net.kernel(x)
    y = torch.from_numpy(rng.standard_normal((n, int(rng.integers(1, 3)))))
    return k, y


def _check_error(exc):
    assert isinstance(exc, (ValueError, TypeError, FloatingPointError)), repr(exc)
    assert ERROR.match(str(exc)), f"error does not name the function: {exc}"


def _close(got, ref, a):
    cond = float(torch.linalg.cond(a)) if a.numel() else 1.0
    tol = 1e-12 * max(cond, 1.0) * max(float(ref.abs().max()), 1.0)
    assert torch.isfinite(got).all()
    assert float((got - ref).abs().max()) <= max(tol, 1e-10), (got, ref, cond)


@pytest.mark.parametrize("seed", range(8))
def test_gp_inference_raises_clearly_or_matches_a_direct_solve(seed):
    rng = np.random.default_rng(seed)
    for _ in range(10):
        k, y = _random_kernel(rng)
        which = ["nngp", "ntk"][int(rng.integers(0, 2))]
        diag_reg = [0.0, 1e-8, 1e-3, 0.5, -1.0][int(rng.integers(0, 5))]
        mat = getattr(k, which).clone()
        if rng.random() < 0.15:
            mat[0, -1] = float("nan")                     # a NaN in the kernel
        if rng.random() < 0.15:
            y[int(rng.integers(0, y.shape[0])), 0] = float("nan")
        try:
            out = wn.predict.gp_inference(mat, y, mat, kernel=which, diag_reg=diag_reg).mean
        except Exception as exc:                          # noqa: BLE001 - judged below
            _check_error(exc)
            continue
        assert diag_reg >= 0 and torch.isfinite(mat).all() and torch.isfinite(y).all()
        a = mat + diag_reg * mat.diagonal().mean() * torch.eye(mat.shape[0], dtype=mat.dtype)
        _close(out, mat @ torch.linalg.solve(a, y), a)


@pytest.mark.parametrize("seed", range(8))
def test_gradient_descent_mse_raises_clearly_or_matches_matrix_exponentials(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(10):
        k, y = _random_kernel(rng)
        theta = k.ntk.to([torch.float32, torch.float64][int(rng.integers(0, 2))])
        lam_max = float(torch.linalg.eigvalsh(k.ntk).max())
        discrete = bool(rng.random() < 0.5)
        eta = float(rng.choice([0.1, 1.0, 1.9, 2.5])) / lam_max   # 2.5/λmax diverges
        t = float(rng.choice([0.0, 1.0, 7.0, 40.0]))
        try:
            pred = wn.predict.gradient_descent_mse(theta, y, learning_rate=eta,
                                                   discrete=discrete)
            f_t = pred(t, torch.zeros_like(y))
        except Exception as exc:                          # noqa: BLE001 - judged below
            _check_error(exc)
            # two legitimate failures: divergence (discrete steps above 2/λmax, t > 0) and a
            # kernel that rounding made indefinite (duplicates in float32), which names diag_reg
            assert (discrete and eta * lam_max > 2 and t > 0) or "diag_reg" in str(exc), exc
            continue
        assert not (discrete and eta * lam_max > 2 and t > 0), "divergence not reported"
        th = theta.to(torch.float64)
        eye = torch.eye(th.shape[0], dtype=torch.float64)
        step = torch.linalg.matrix_power(eye - eta * th, int(t)) if discrete else \
            torch.linalg.matrix_exp(-eta * t * th)
        ref = (eye - step) @ y                            # f_t = (I - e^{-ηΘt}) y from f_0 = 0
        got = f_t[0] if isinstance(f_t, tuple) else f_t
        tol = (1e-4 if theta.dtype == torch.float32 else 1e-9) * max(1.0, float(y.abs().max()))
        assert float((got.to(torch.float64) - ref).abs().max()) <= tol, (got, ref)
