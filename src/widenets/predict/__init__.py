"""Predict training without training (Lee et al. 2019, seed 002, §2.2-2.4).

docs/math.md §mse-dynamics, §gp, §ensemble.

* `gradient_descent_mse`: MSE gradient descent / flow in closed form at any times (eqs. 8-11),
  `weight_change` the parameter displacement (eq. 8).
* `gradient_descent`: any differentiable loss, optional momentum, as a function-space ODE.
* `gp_inference`: NNGP posterior (eq. 13) and NTK-GP at infinite time (eq. 16).
* `gradient_descent_mse_ensemble`: the infinite ensemble of trained infinitely wide networks at
  any time (eqs. 14-15).
* `max_learning_rate`: the largest stable and the critical learning rates (§2.4).
* `solve`: (K + ρI)⁻¹ Y by Cholesky or preconditioned conjugate gradients, for kernels of any
  size (tile stores streamed from disk, optionally on Dask).
* `krylov_dynamics`: exp(-ηΘt) V and Θ⁻¹(I - exp(-ηΘt)) V by Lanczos, with an error bound: the
  finite-time predictions for kernels too large for the eigendecomposition.

Kernel arguments are tensors, numpy arrays or `wn.Kernel` objects; `diag_reg` is relative to
the mean diagonal unless `diag_reg_absolute=True`.
"""

from .ensemble import EnsemblePredictor, gradient_descent_mse_ensemble
from .gp import Gaussian, gp_inference
from .mse import MSEPredictor, gradient_descent_mse, weight_change
from .ode import ODEPredictor, cross_entropy_loss, gradient_descent, mse_loss
from .rates import max_learning_rate
from .solver import Solution, SolveError, solve

__all__ = [
    "gradient_descent_mse", "weight_change", "gradient_descent", "gp_inference",
    "gradient_descent_mse_ensemble", "max_learning_rate", "Gaussian", "MSEPredictor",
    "ODEPredictor", "EnsemblePredictor", "mse_loss", "cross_entropy_loss",
    "solve", "Solution", "SolveError",
]

from .likelihood import (  # noqa: E402
    FitResult,
    cv_log_likelihood,
    fit_hyperparameters,
    marginal_likelihood,
)

__all__ += ["marginal_likelihood", "cv_log_likelihood", "fit_hyperparameters", "FitResult"]

from .krylov import KrylovDynamics, krylov_dynamics  # noqa: E402

__all__ += ["krylov_dynamics", "KrylovDynamics"]
