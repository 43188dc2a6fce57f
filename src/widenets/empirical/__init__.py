"""Empirical (finite-width) kernels of torch modules and Monte Carlo estimates of the analytic ones."""

from .jacobian import jacobian_ntk
from .monte_carlo import monte_carlo_kernel

__all__ = ["jacobian_ntk", "monte_carlo_kernel"]
