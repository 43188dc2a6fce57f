"""Empirical (finite-width) kernels of any torch model, linearization, Monte Carlo kernels.

* `empirical_ntk`, `empirical_nngp`: Θ = J Jᵀ and K = f fᵀ of a finite model, with three exact
  implementations ("jacobian", "ntvp", "structured") and "auto" (cost.py).
* `linearize`, `taylor_expand`: the model expanded in its parameters around p0 (jvp).
* `register_structured_layer`, `LayerStructure`: teach the structured NTK a new layer type.
* `monte_carlo_kernel`: averages over random finite networks of a widenets layer.
* `jacobian_ntk`: deprecated since 0.2 (`empirical_ntk(..., implementation="jacobian")`).

Modules, lowest first (each imports only modules above it): _target, structure, factors,
attention, bare, jacobian, ntvp, structured, cost, ntk, linearize, monte_carlo.
"""

from .linearize import TaylorModel, linearize, taylor_expand
from .monte_carlo import monte_carlo_kernel
from .ntk import empirical_nngp, empirical_ntk, jacobian_ntk
from .structure import LayerStructure, register_structured_layer

__all__ = ["empirical_ntk", "empirical_nngp", "linearize", "taylor_expand", "TaylorModel",
           "LayerStructure", "register_structured_layer", "jacobian_ntk", "monte_carlo_kernel"]
