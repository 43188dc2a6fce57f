"""The infinite ensemble of infinitely wide networks trained by MSE gradient descent.

Over random initializations f_0 ~ GP(0, K), the linearized network trained for time t is a
Gaussian process (Lee et al. 2019, seed 002, Corollary 1, eqs. 14-15). With Θ the kernel that
drives training, G_t = Θ⁻¹ (I - e^{-ηΘt}) and x test inputs:

    μ_t(x)    = Θ(x, X) G_t Y                                                        (eq. 14)
    Σ_t(x, x) = K(x, x) + Θ(x, X) G_t K G_t Θ(X, x) - (Θ(x, X) G_t K(X, x) + h.c.)    (eq. 15)

kernel="ntk" trains every layer (Θ the NTK); kernel="nngp" trains only the readout layer, whose
tangent kernel is the NNGP K itself (§2.3.1), so t = ∞ gives the NNGP posterior (eq. 13).
With Θ = V diag(λ) Vᵀ computed once, G_t = V diag(gain_t) Vᵀ for every t.
"""

from __future__ import annotations

import torch

from ..layers.base import Layer, as_input_tensor
from ._linalg import (
    SymmetricEig,
    as_targets,
    as_times,
    check_diag_reg,
    check_positive,
    restore_targets_shape,
    time_factors,
)
from .gp import Gaussian, check_kernel_name
from .mse import MSEPredictor

__all__ = ["gradient_descent_mse_ensemble", "EnsemblePredictor"]


class EnsemblePredictor:
    """Mean and covariance of the trained infinite ensemble, at any time and test inputs.

    Made by `gradient_descent_mse_ensemble`. The train-train kernel is computed when it is
    made; the eigendecomposition of its NTK (or NNGP) on first use, then kept.

    Attributes:
        net: the widenets network.
        x_train: (n, d) float64 training inputs; y_train: (n, k) targets.
        k_train: the `wn.Kernel` of the training inputs (nngp and ntk).

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> x_train, y_train = torch.randn(6, 3), torch.randn(6, 1)
        >>> ens = wn.predict.gradient_descent_mse_ensemble(net, x_train, y_train)
        >>> isinstance(ens, wn.predict.EnsemblePredictor)
        True
    """

    _func = "gradient_descent_mse_ensemble"

    def __init__(self, net, x_train, y_train, *, learning_rate: float = 1.0,
                 diag_reg: float = 0.0, diag_reg_absolute: bool = False,
                 discrete: bool = False):
        func = self._func
        if not isinstance(net, Layer):
            raise TypeError(f"{func}: net must be a widenets layer (e.g. wn.serial(...)), got "
                            f"{type(net).__name__}")
        self.net = net
        self.learning_rate = check_positive(learning_rate, func=func, arg="learning_rate")
        self.diag_reg = check_diag_reg(diag_reg, func=func)
        self.diag_reg_absolute = bool(diag_reg_absolute)
        if not isinstance(discrete, bool):
            raise TypeError(f"{func}: discrete must be True or False, got {discrete!r}")
        self.discrete = discrete
        self.x_train = as_input_tensor(x_train, func=func, arg="x_train", dtype=torch.float64)
        self.y_train, self._vector = as_targets(y_train, func=func, n=self.x_train.shape[0])
        self.k_train = self._kernel(self.x_train, None, None)
        self._eig: dict[str, SymmetricEig] = {}
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def targets(self) -> torch.Tensor:
        """The targets in the shape they were given, (n,) or (n, k)."""
        return restore_targets_shape(self.y_train, self._vector)

    def _kernel(self, x1, x2, get):
        k = self.net.kernel(x1, x2, get=get)
        if isinstance(k, list):
            raise ValueError(f"{self._func}: net ends in {len(k)} branches; end it with "
                             f"FanInSum() or FanInConcat() and a readout")
        return k

    def eig(self, kernel: str) -> SymmetricEig:
        """The eigendecomposition of the train-train `kernel` ("ntk" or "nngp"), cached."""
        if kernel not in self._eig:
            self._eig[kernel] = SymmetricEig(
                getattr(self.k_train, kernel), diag_reg=self.diag_reg,
                absolute=self.diag_reg_absolute, func=self._func,
                arg=f"the train-train {kernel.upper()}")
        return self._eig[kernel]

    def _projections(self, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Vᵀ Y and Vᵀ K V for the training kernel `kernel`, cached."""
        if kernel not in self._cache:
            vec = self.eig(kernel).eigenvectors
            self._cache[kernel] = (vec.T @ self.y_train, vec.T @ self.k_train.nngp @ vec)
        return self._cache[kernel]

    def __call__(self, t=None, x_test=None, *, kernel: str = "ntk",
                 compute_cov: bool = False) -> Gaussian:
        """Mean (and covariance) of the ensemble's outputs after training for time t.

        Args:
            t: a number or a 1-D tensor of times (steps when discrete); None means t = ∞.
            x_test: (m, d) test inputs; None for the training inputs.
            kernel: "ntk" (train all layers, default) or "nngp" (train only the readout).
            compute_cov: also return the (m, m) covariance over inputs (eq. 15).

        Returns:
            `Gaussian(mean, covariance)`: mean (m, k) or (m,) as y_train, covariance (m, m) or
            None; both with a leading time axis when t is 1-D.
        """
        func = self._func
        kernel = check_kernel_name(kernel, func=func)
        tt, scalar = as_times(t, func=func, discrete=self.discrete)
        eig = self.eig(kernel)
        _, gain = time_factors(eig, tt, learning_rate=self.learning_rate,
                               discrete=self.discrete)
        vty, kv = self._projections(kernel)
        if x_test is None:
            k_td = getattr(self.k_train, kernel)
            nngp_td = self.k_train.nngp
            nngp_tt = self.k_train.nngp if compute_cov else None
        else:
            x_test = as_input_tensor(x_test, func=func, arg="x_test", dtype=torch.float64)
            if x_test.shape[1:] != self.x_train.shape[1:]:
                raise ValueError(f"{func}: x_test must have the feature shape of x_train "
                                 f"{tuple(self.x_train.shape[1:])}, got {tuple(x_test.shape)}")
            get = "nngp" if kernel == "nngp" else (("ntk", "nngp") if compute_cov else "ntk")
            kt = self._kernel(x_test, self.x_train, get)
            if isinstance(kt, tuple):
                k_td, nngp_td = kt
            else:
                k_td, nngp_td = kt, kt
            nngp_tt = self._kernel(x_test, None, "nngp") if compute_cov else None
        # eq. 14: μ_t(x) = Θ(x, X) V diag(gain_t) Vᵀ Y.
        mean = restore_targets_shape(MSEPredictor._apply(k_td, gain, vty, eig.eigenvectors),
                                     self._vector)
        cov = None
        if compute_cov:
            b = k_td @ eig.eigenvectors                      # Θ(x, X) V: (m, n)
            bg = b[None] * gain[:, None, :]                  # Θ(x, X) G_t V: (T, m, n)
            cross = bg @ (eig.eigenvectors.T @ nngp_td.T)    # Θ(x, X) G_t K(X, x): (T, m, m)
            # eq. 15: K(x,x) + Θ(x,X) G K G Θ(X,x) - (Θ(x,X) G K(X,x) + h.c.)
            cov = nngp_tt + bg @ kv @ bg.transpose(1, 2) - cross - cross.transpose(1, 2)
            cov = 0.5 * (cov + cov.transpose(1, 2))
        if scalar:
            return Gaussian(mean[0], None if cov is None else cov[0])
        return Gaussian(mean, cov)


def gradient_descent_mse_ensemble(net, x_train, y_train, *, learning_rate: float = 1.0,
                                  diag_reg: float = 0.0, diag_reg_absolute: bool = False,
                                  discrete: bool = False) -> EnsemblePredictor:
    """The infinite ensemble of infinitely wide `net`s trained by MSE gradient descent.

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> x_train, x_test, y_train = torch.randn(6, 3), torch.randn(2, 3), torch.randn(6, 1)
        >>> ens = wn.predict.gradient_descent_mse_ensemble(net, x_train, y_train)
        >>> mean, cov = ens(1.0, x_test, kernel="ntk", compute_cov=True)
        >>> mean.shape, cov.shape
        (torch.Size([2, 1]), torch.Size([2, 2]))

    Args:
        net: a widenets network (its analytic kernels are used).
        x_train: (n, d) training inputs.
        y_train: (n,) or (n, k) targets.
        learning_rate: η (total loss ½ Σ ||f - y||²).
        diag_reg: ρ added to the diagonal of the kernel that drives training, relative by
            default (ρ = diag_reg · mean diagonal). The prior covariance K in eq. 15 stays
            unregularized, so with kernel="nngp" and ρ > 0 the t = ∞ covariance is that of the
            ensemble trained with the regularized kernel, not the noisy-observation posterior
            (`gp_inference(kernel="nngp", diag_reg=...)` gives that).
        diag_reg_absolute: True to add diag_reg itself.
        discrete: True for whole gradient-descent steps, (I - ηΘ)^t instead of e^{-ηΘt}
            (an extension: the seed's eqs. 14-15 are for gradient flow).

    Returns:
        An `EnsemblePredictor` ens with `ens(t=None, x_test=None, *, kernel="ntk",
        compute_cov=False) -> Gaussian(mean, covariance)`.
    """
    return EnsemblePredictor(net, x_train, y_train, learning_rate=learning_rate,
                             diag_reg=diag_reg, diag_reg_absolute=diag_reg_absolute,
                             discrete=discrete)
