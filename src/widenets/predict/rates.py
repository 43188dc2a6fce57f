"""Learning rates at which gradient descent on MSE converges (Lee et al. 2019, seed 002, §2.4).

For the total loss ½ Σ ||f - y||² the linearized outputs move by f ← f - ηΘ(f - y), so each
eigenmode λ of Θ contracts by 1 - ηλ per step:

* "stable" (the largest stable rate): |1 - ηλ| < 1 for all λ  ⇔  η < 2 / λ_max. With heavy-ball
  momentum β, v ← βv - η∇L, θ ← θ + v, mode λ is stable iff 0 < ηλ < 2(1 + β), so
  η < 2(1 + β) / λ_max.
* "critical": η_critical = 2 / (λ_min + λ_max), the rate of seed 002 §2.4 (Theorem 2.1 holds
  below it); it minimizes the slowest contraction max(|1 - ηλ_min|, |1 - ηλ_max|). Defined
  without momentum.
"""

from __future__ import annotations

import math

from ._linalg import SymmetricEig, as_kernel_matrix, check_diag_reg

__all__ = ["max_learning_rate", "RATE_KINDS"]

RATE_KINDS = ("stable", "critical")


def max_learning_rate(k_train_train, *, momentum: float = 0.0, kind: str = "stable",
                      diag_reg: float = 0.0, diag_reg_absolute: bool = False) -> float:
    """The largest stable learning rate, or the critical rate, of MSE gradient descent.

    Args:
        k_train_train: (n, n) NTK of the training inputs (tensor, numpy array or `wn.Kernel`,
            whose `ntk` is used).
        momentum: β of heavy-ball momentum in [0, 1) (only for kind="stable").
        kind: "stable" (default): 2(1 + β) / λ_max, the rate above which gradient descent
            diverges. "critical": 2 / (λ_min + λ_max) of seed 002 §2.4.
        diag_reg, diag_reg_absolute: as in `gradient_descent_mse` (the rate of the regularized
            dynamics).

    Returns:
        The learning rate (a float; inf for an all-zero kernel with kind="stable").

    Raises:
        ValueError: bad momentum or kind, a kernel that is not positive semi-definite.

    Example:
        >>> k = torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64))
        >>> wn.predict.max_learning_rate(k), wn.predict.max_learning_rate(k, kind="critical")
        (0.666..., 0.5)
    """
    func = "max_learning_rate"
    if kind not in RATE_KINDS:
        raise ValueError(f"{func}: kind must be 'stable' (2(1+momentum)/lambda_max) or "
                         f"'critical' (2/(lambda_min+lambda_max)), got {kind!r}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or \
            not math.isfinite(momentum) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"{func}: momentum must be a number in [0, 1), got {momentum!r}")
    if kind == "critical" and momentum != 0.0:
        raise ValueError(f"{func}: kind='critical' is the momentum-free rate 2/(lambda_min + "
                         f"lambda_max); use kind='stable' with momentum")
    diag_reg = check_diag_reg(diag_reg, func=func)
    k = as_kernel_matrix(k_train_train, func=func, arg="k_train_train", which="ntk")
    eig = SymmetricEig(k, diag_reg=diag_reg, absolute=diag_reg_absolute, func=func,
                       arg="k_train_train")
    lam_max = eig.lam_max
    if lam_max <= 0.0:
        return math.inf
    if kind == "critical":
        return 2.0 / (eig.lam_min + lam_max)
    return 2.0 * (1.0 + momentum) / lam_max
