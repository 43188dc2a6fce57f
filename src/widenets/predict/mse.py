"""Closed-form gradient descent on the MSE loss (Lee et al. 2019, seed 002, §2.2, eqs. 8-11).

Training the linearized network f_lin(x) = f_0(x) + J_0(x) ω with the total loss
L = ½ Σ_i ||f(x_i) - y_i||² and learning rate η gives, with Θ = Θ_0(X, X):

    f_t(X)  = Y + e^{-ηΘt} (f_0(X) - Y)                                       (eq. 9)
    f_t(x)  = f_0(x) + Θ(x, X) Θ⁻¹ (I - e^{-ηΘt}) (Y - f_0(X))                (eqs. 10 + 11)
    ω_t     = -J_0(X)ᵀ Θ⁻¹ (I - e^{-ηΘt}) (f_0(X) - Y)                        (eq. 8)

and discrete gradient descent replaces e^{-ηΘt} by (I - ηΘ)^t, t the number of steps. The
eigendecomposition Θ = V diag(λ) Vᵀ is computed once; each call then costs one product with V
per set of outputs, for any number of times.

Several output columns are trained independently with the same kernel: the full NTK is taken to
be Θ ⊗ I (exact at infinite width; `wn.empirical_ntk` in trace mode returns the mean over
outputs, which is this Θ).
"""

from __future__ import annotations

import numpy as np
import torch

from ._linalg import (
    SymmetricEig,
    as_kernel_matrix,
    as_outputs,
    as_targets,
    as_times,
    check_diag_reg,
    check_positive,
    is_store,
    restore_targets_shape,
    time_factors,
)

__all__ = ["gradient_descent_mse", "weight_change", "MSEPredictor"]

# solve_options that also apply to the Lanczos path of finite times (krylov_dynamics).
_KRYLOV_OPTIONS = ("tol", "max_iter", "client", "progress")


class MSEPredictor:
    """Outputs of MSE gradient descent at any time, from one eigendecomposition of Θ.

    Made by `gradient_descent_mse`; call it as `predictor(t, fx_train_0, fx_test_0,
    k_test_train)`.

    Attributes:
        eig: the `SymmetricEig` of the (regularized) train-train kernel.
        y_train: (n, k) targets (a vector target is kept as one column internally).
        learning_rate, discrete: as given.

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> x_train, x_test, y_train = torch.randn(6, 3), torch.randn(2, 3), torch.randn(6, 1)
        >>> k_train, k_test_train = net.kernel(x_train), net.kernel(x_test, x_train)
        >>> predict = wn.predict.gradient_descent_mse(k_train, y_train)
        >>> isinstance(predict, wn.predict.MSEPredictor)
        True
        >>> predict(torch.tensor([1.0, 2.0, 3.0]), 0.0).shape     # three times at once
        torch.Size([3, 6, 1])
    """

    _func = "gradient_descent_mse"

    def __init__(self, k_train_train, y_train, *, learning_rate: float = 1.0,
                 diag_reg: float = 0.0, diag_reg_absolute: bool = False,
                 discrete: bool = False, solve_options: dict | None = None,
                 kernel: str = "ntk"):
        func = self._func
        if kernel not in ("nngp", "ntk"):
            raise ValueError(f"{func}: kernel must be 'ntk' (train every layer) or 'nngp' "
                             f"(train the readout only), got {kernel!r}")
        self.kernel = kernel
        if solve_options is not None and not isinstance(solve_options, dict):
            raise TypeError(f"{func}: solve_options must be a dict of wn.predict.solve keyword "
                            f"arguments or None, got {type(solve_options).__name__}")
        self.learning_rate = check_positive(learning_rate, func=func, arg="learning_rate")
        diag_reg = check_diag_reg(diag_reg, func=func)
        if not isinstance(discrete, bool):
            raise TypeError(f"{func}: discrete must be True or False, got {discrete!r}")
        self.discrete = discrete
        self._op = None
        if is_store(k_train_train) or _is_store_operator(k_train_train):
            from .solver import _fits_in_memory, as_operator

            opts = solve_options or {}
            op, _ = as_operator(k_train_train, kernel=kernel, func=func,
                                client=opts.get("client"), check=opts.get("check_store", "crc"))
            if not _fits_in_memory(op) or opts.get("client") is not None:
                # Too large for the eigendecomposition (kernel, eigenvectors, workspace):
                # t = ∞ by `solve`, finite t by Lanczos; only products with the store.
                self._init_iterative(op, y_train, diag_reg, diag_reg_absolute, opts)
                return
            k = op.load()
            eps = float(np.finfo(op.dtype).eps)
            if eps > torch.finfo(k.dtype).eps:
                k.widenets_source_eps = eps          # read by source_eps (float32 stores)
        else:
            k = as_kernel_matrix(k_train_train, func=func, arg="k_train_train", which=kernel)
        self.y_train, self._vector = as_targets(y_train, func=func, n=k.shape[0],
                                                dtype=k.dtype, device=k.device)
        self.eig = SymmetricEig(k, diag_reg=diag_reg, absolute=diag_reg_absolute, func=func,
                                arg="k_train_train")
        # Vᵀ (f_0 - Y) for the default f_0 = 0, reused by every call that keeps the default.
        self._proj_default = -(self.eig.eigenvectors.T @ self.y_train)

    def _init_iterative(self, op, y_train, diag_reg, absolute, options):
        """A store too large for the eigendecomposition: t = ∞ through `solve`, finite t by
        Lanczos (`krylov_dynamics`)."""
        self._op = op
        self._solve_options = {k: v for k, v in options.items() if k != "check_store"}
        self._diag_reg, self._absolute = diag_reg, absolute
        self.eig = None
        self.y_train, self._vector = as_targets(y_train, func=self._func, n=self._op.shape[0])

    def _solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """Θ_reg⁻¹ rhs through `wn.predict.solve` (stores that do not fit in memory)."""
        from .solver import solve

        out = solve(self._op, rhs, diag_reg=self._diag_reg, diag_reg_absolute=self._absolute,
                    check_store=None, **self._solve_options)
        self.last_solution = out
        return out.alpha

    def _krylov(self, r: torch.Tensor, times: torch.Tensor):
        """exp(-ηΘt) r and Θ⁻¹(I - exp(-ηΘt)) r at finite times by Lanczos (docs/math.md
        §krylov)."""
        from .krylov import krylov_dynamics

        opts = {key: v for key, v in self._solve_options.items() if key in _KRYLOV_OPTIONS}
        out = krylov_dynamics(self._op, r, times, learning_rate=self.learning_rate,
                              diag_reg=self._diag_reg, diag_reg_absolute=self._absolute,
                              discrete=self.discrete, check_store=None, **opts)
        self.last_krylov = out
        return out

    def _iterative_factors(self, tt: torch.Tensor, r: torch.Tensor):
        """decay(Θ) r and gain(Θ) r for every time: (T, n, k) each, and gainᵀ Θ gain (T, k).

        Finite times by Lanczos, t = ∞ by `solve` (decay = 0, gain = Θ⁻¹ r).
        """
        n, k = r.shape
        decay = torch.zeros(tt.numel(), n, k, dtype=torch.float64)
        gain = torch.zeros_like(decay)
        energy = torch.zeros(tt.numel(), k, dtype=torch.float64)
        fin = torch.isfinite(tt)
        if bool(fin.any()):
            kr = self._krylov(r, tt[fin])
            decay[fin], gain[fin], energy[fin] = kr.decay, kr.gain, kr.gain_energy
        if not bool(fin.all()):
            alpha = self._solve(r)
            gain[~fin] = alpha
            energy[~fin] = (r * alpha).sum(0)                     # rᵀ Θ⁻¹ r
        return decay, gain, energy

    def _iterative_call(self, t, fx_train_0, fx_test_0, k_test_train):
        """A store too large for memory: eqs. 9-11 with the factors of `_iterative_factors`."""
        func = self._func
        tt, scalar = as_times(t, func=func, discrete=self.discrete)
        n, k = self.y_train.shape
        f0 = as_outputs(fx_train_0, func=func, arg="fx_train_0", shape=(n, k),
                        vector=self._vector, dtype=torch.float64, device="cpu")
        decay, gain, _ = self._iterative_factors(tt, f0 - self.y_train)
        times = tt.numel()
        # eq. 9: f_t(X) = Y + e^{-ηΘt} (f_0(X) - Y)  (0 at t = ∞).
        train = restore_targets_shape(self.y_train + decay, self._vector)
        if k_test_train is None:
            if fx_test_0 is not None:
                raise ValueError(f"{func}: fx_test_0 was given without k_test_train; pass the "
                                 f"(m, n) test-train NTK to get test outputs")
            return train[0] if scalar else train
        flat = gain.permute(1, 0, 2).reshape(n, times * k)      # every time in one product
        if is_store(k_test_train):
            from ..tiles import StoreOperator

            top = StoreOperator(k_test_train if not hasattr(k_test_train, "store")
                                else k_test_train.store, get=self.kernel)
            if top.shape[1] != n:
                raise ValueError(f"{func}: k_test_train must have shape (m, {n}), got "
                                 f"{top.shape}")
            prod = top.matmul(flat)
            m = top.shape[0]
        else:
            ktx = as_kernel_matrix(k_test_train, func=func, arg="k_test_train",
                                   which=self.kernel, shape=(None, n))
            prod, m = ktx @ flat, ktx.shape[0]
        prod = prod.reshape(m, times, k).permute(1, 0, 2)
        f0_test = as_outputs(0.0 if fx_test_0 is None else fx_test_0, func=func,
                             arg="fx_test_0", shape=(m, k), vector=self._vector,
                             dtype=torch.float64, device="cpu")
        # eqs. 10-11: f_t(x) = f_0(x) - Θ(x, X) Θ⁻¹ (I - e^{-ηΘt}) (f_0(X) - Y).
        test = restore_targets_shape(f0_test - prod, self._vector)
        if scalar:
            return train[0], test[0]
        return train, test

    def _op_rho(self) -> float:
        if self._absolute:
            return float(self._diag_reg)
        return float(self._diag_reg) * float(self._op.diagonal().mean()) if self._diag_reg \
            else 0.0

    def _iterative_weight_change(self, t, fx_train_0):
        """||ω_t||² = Σ_c (g_cᵀ Θ_reg g_c - ρ ||g_c||²), g = gain(Θ_reg) r (eq. 8)."""
        tt, scalar = as_times(t, func=self._func, discrete=self.discrete)
        n, k = self.y_train.shape
        f0 = as_outputs(fx_train_0, func=self._func, arg="fx_train_0", shape=(n, k),
                        vector=self._vector, dtype=torch.float64, device="cpu")
        _, gain, energy = self._iterative_factors(tt, f0 - self.y_train)
        sq = energy.sum(1) - self._op_rho() * (gain * gain).sum((1, 2))
        out = torch.sqrt(torch.clamp(sq, min=0.0))
        return out[0] if scalar else out

    # ------------------------------------------------------------------ helpers
    @property
    def n_train(self) -> int:
        return self.y_train.shape[0]

    def _residual_projection(self, fx_train_0) -> torch.Tensor:
        """Vᵀ (f_0(X) - Y): (n, k)."""
        if isinstance(fx_train_0, (int, float)) and not isinstance(fx_train_0, bool) and \
                fx_train_0 == 0:
            return self._proj_default
        f0 = as_outputs(fx_train_0, func=self._func, arg="fx_train_0",
                        shape=tuple(self.y_train.shape), vector=self._vector,
                        dtype=self.y_train.dtype, device=self.y_train.device)
        return self.eig.eigenvectors.T @ (f0 - self.y_train)

    def _times(self, t):
        return as_times(t, func=self._func, discrete=self.discrete)

    @staticmethod
    def _apply(left: torch.Tensor, factors: torch.Tensor, proj: torch.Tensor,
               vec: torch.Tensor | None = None) -> torch.Tensor:
        """left @ [vec] @ diag(factors[s]) @ proj for every time s, as one matrix product.

        left: (m, n); factors: (T, n); proj: (n, k); vec: optional (n, n). Returns (T, m, k).
        With vec, the cheaper order is chosen: left @ (vec @ X) costs n²Tk + mnTk,
        (left @ vec) @ X costs mn² + mnTk; the first wins when T·k < m (e.g. one time).
        """
        n_t, n = factors.shape
        k = proj.shape[1]
        m = left.shape[0]
        scaled = (factors.T[:, :, None] * proj[:, None, :]).reshape(n, n_t * k)
        if vec is not None:
            if n_t * k < m:
                scaled = vec @ scaled
            else:
                left = left @ vec
        return (left @ scaled).reshape(m, n_t, k).permute(1, 0, 2)

    # ------------------------------------------------------------------ public
    def __call__(self, t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        """Train (and test) outputs after training for time t.

        Args:
            t: a number or a 1-D tensor of times (steps when discrete); None means t = ∞.
                Continuous time t corresponds to t steps of gradient descent at the learning
                rate (the flow runs for time η t).
            fx_train_0: (n,) or (n, k) network outputs on the training set at t = 0, or a
                number (0 by default: a centered network).
            fx_test_0: (m,) or (m, k) outputs on the test set at t = 0, or a number; None is 0.
            k_test_train: (m, n) NTK Θ(x_test, X) (or a `wn.Kernel`, its `ntk` is used); None
                for training-set outputs only.

        Returns:
            fx_train_t: shaped like y_train, with a leading time axis (T, ...) when t is 1-D.
            With k_test_train, the tuple (fx_train_t, fx_test_t), fx_test_t of shape (m, k)
            (or (m,) for vector targets), likewise with a time axis.
        """
        func = self._func
        if self._op is not None:
            return self._iterative_call(t, fx_train_0, fx_test_0, k_test_train)
        tt, scalar = self._times(t)
        decay, gain = time_factors(self.eig, tt, learning_rate=self.learning_rate,
                                   discrete=self.discrete)
        proj = self._residual_projection(fx_train_0)
        vec = self.eig.eigenvectors
        # Lee et al. 2019, eq. 9: f_t(X) = Y + V diag(decay) Vᵀ (f_0 - Y).
        train = self.y_train + self._apply(vec, decay, proj)
        train = restore_targets_shape(train, self._vector)
        if k_test_train is None:
            if fx_test_0 is not None:
                raise ValueError(f"{func}: fx_test_0 was given without k_test_train; pass the "
                                 f"(m, n) test-train NTK to get test outputs")
            return train[0] if scalar else train
        ktx = as_kernel_matrix(k_test_train, func=func, arg="k_test_train",
                               which=self.kernel, shape=(None, self.n_train)).to(vec.device)
        m, k = ktx.shape[0], self.y_train.shape[1]
        f0_test = as_outputs(0.0 if fx_test_0 is None else fx_test_0, func=func,
                             arg="fx_test_0", shape=(m, k), vector=self._vector,
                             dtype=vec.dtype, device=vec.device)
        # Lee et al. 2019, eqs. 10-11: f_t(x) = f_0(x) - Θ(x,X) V diag(gain) Vᵀ (f_0(X) - Y).
        test = f0_test - self._apply(ktx, gain, proj, vec)
        test = restore_targets_shape(test, self._vector)
        if scalar:
            return train[0], test[0]
        return train, test

    def gain_weights(self, t=None, fx_train_0=0.0) -> torch.Tensor:
        """W_t = Θ⁻¹ (I - e^{-ηΘt}) (Y - f_0(X)), so that f_t(x) = f_0(x) + Θ(x, X) W_t.

        One eigendecomposition, `solve` (t = ∞) or Lanczos run (finite t, stores too large for
        memory) serves any number of test points: multiply by Θ(x, X) in blocks of test rows.

        Args:
            t: as in `__call__`.
            fx_train_0: as in `__call__`.

        Returns:
            (n, k) (or (n,) for vector targets), with a leading time axis for a 1-D t.

        Example:
            >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
            >>> x_train, x_test, y_train = torch.randn(6, 3), torch.randn(2, 3), torch.randn(6, 1)
            >>> predict = wn.predict.gradient_descent_mse(net.kernel(x_train), y_train)
            >>> w = predict.gain_weights(2.0)
            >>> k_test = net.kernel(x_test, x_train).ntk.double()
            >>> bool(torch.allclose(k_test @ w, predict(2.0, 0.0, 0.0, k_test)[1]))
            True
        """
        tt, scalar = self._times(t)
        n, k = self.y_train.shape
        if self._op is not None:
            f0 = as_outputs(fx_train_0, func=self._func, arg="fx_train_0", shape=(n, k),
                            vector=self._vector, dtype=torch.float64, device="cpu")
            _, gain, _ = self._iterative_factors(tt, f0 - self.y_train)
            out = -gain
        else:
            _, gain = time_factors(self.eig, tt, learning_rate=self.learning_rate,
                                   discrete=self.discrete)
            vec = self.eig.eigenvectors
            out = -self._apply(vec, gain, self._residual_projection(fx_train_0))
        out = restore_targets_shape(out, self._vector)
        return out[0] if scalar else out

    def weight_change(self, t=None, fx_train_0=0.0) -> torch.Tensor:
        """||θ_t - θ_0||, the parameter displacement of the linearized network (eq. 8).

        ||ω_t||² = Σ_c r_cᵀ (I - e^{-ηΘt}) Θ⁻¹ J Jᵀ Θ⁻¹ (I - e^{-ηΘt}) r_c with r = f_0(X) - Y
        and J Jᵀ = Θ - ρ I (the unregularized kernel; ρ the diag_reg added). With several
        outputs J Jᵀ = Θ ⊗ I is assumed (exact for one output and at infinite width).

        Args:
            t: as in `__call__`.
            fx_train_0: as in `__call__`.

        Returns:
            A scalar tensor, or (T,) for a 1-D t.
        """
        if self._op is not None:
            return self._iterative_weight_change(t, fx_train_0)
        tt, scalar = self._times(t)
        _, gain = time_factors(self.eig, tt, learning_rate=self.learning_rate,
                               discrete=self.discrete)
        proj = self._residual_projection(fx_train_0)
        jjt = torch.clamp(self.eig.eigenvalues - self.eig.reg, min=0.0)
        sq = (gain ** 2 * jjt) @ (proj ** 2).sum(1)
        out = torch.sqrt(sq)
        return out[0] if scalar else out


def _is_store_operator(k) -> bool:
    """Whether k is a `wn.tiles.StoreOperator` (tiles imported only when it may be one)."""
    if not (hasattr(k, "matmul") and hasattr(k, "meta")):
        return False
    from ..tiles import StoreOperator

    return isinstance(k, StoreOperator)


def gradient_descent_mse(k_train_train, y_train, *, learning_rate: float = 1.0,
                         diag_reg: float = 0.0, diag_reg_absolute: bool = False,
                         discrete: bool = False, solve_options: dict | None = None,
                         kernel: str = "ntk") -> MSEPredictor:
    """Predict MSE gradient descent in closed form (Lee et al. 2019, eqs. 8-11).

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> x_train, x_test, y_train = torch.randn(6, 3), torch.randn(2, 3), torch.randn(6, 1)
        >>> k_train, k_test_train = net.kernel(x_train), net.kernel(x_test, x_train)
        >>> predict = wn.predict.gradient_descent_mse(k_train, y_train, learning_rate=1.0)
        >>> fx_train, fx_test = predict(10.0, 0.0, 0.0, k_test_train)    # outputs at t = 10
        >>> fx_train.shape, fx_test.shape
        (torch.Size([6, 1]), torch.Size([2, 1]))
        >>> bool(torch.allclose(predict(None, 0.0), y_train.double(), atol=1e-6))   # t = ∞
        True

    Args:
        k_train_train: (n, n) NTK on the training inputs (a tensor, a numpy array, a
            `wn.Kernel`, whose `ntk` is used, or a tile store: its directory, `wn.tiles.open`'s
            array or a `wn.tiles.StoreOperator`, of any size); the empirical NTK of a finite
            network predicts that network's linearization, the analytic NTK the
            infinite-width limit.
        y_train: (n,) or (n, k) targets; each column trains independently.
        learning_rate: η. The loss is the total ½ Σ ||f - y||² (not the mean over samples).
        diag_reg: ρ added to the diagonal of k_train_train. Relative by default: ρ =
            diag_reg · mean(diag k_train_train). Needed when the kernel is singular and t = ∞.
        diag_reg_absolute: True to add diag_reg itself.
        discrete: True for gradient descent with whole steps, (I - ηΘ)^t; False for gradient
            flow e^{-ηΘt} (t then counts steps of size η as well).
        solve_options: for a tile store too large for the eigendecomposition (a store of
            any size, a `wn.tiles.StoreOperator`, or any store with a Dask `client`): keyword
            arguments of `wn.predict.solve` (tol, preconditioner, rank, max_iter, client,
            progress, checkpoint, check_store), used for t = None; a finite t goes through
            `wn.predict.krylov_dynamics` (Lanczos, docs/math.md §krylov), which takes tol,
            max_iter, client and progress from the same dict. The Lanczos error estimate of
            the last call is in `predictor.last_krylov`. Ask for all times in one call: one
            Lanczos run serves them all.
        kernel: "ntk" (default; train every layer) or "nngp" (train only the readout): which
            kernel of a `wn.Kernel` or a two-kernel store drives training.

    Returns:
        An `MSEPredictor` p with `p(t=None, fx_train_0=0.0, fx_test_0=None,
        k_test_train=None)` and `p.weight_change(t, fx_train_0)`.

    Raises:
        ValueError: a kernel that is not positive semi-definite (suggests diag_reg), wrong
            shapes, non-finite values.
    """
    return MSEPredictor(k_train_train, y_train, learning_rate=learning_rate, diag_reg=diag_reg,
                        diag_reg_absolute=diag_reg_absolute, discrete=discrete,
                        solve_options=solve_options, kernel=kernel)


def weight_change(k_train_train, y_train, t=None, fx_train_0=0.0, *, learning_rate: float = 1.0,
                  diag_reg: float = 0.0, diag_reg_absolute: bool = False,
                  discrete: bool = False) -> torch.Tensor:
    """||θ_t - θ_0|| of the linearized network trained on MSE (Lee et al. 2019, eq. 8).

    A shortcut for `gradient_descent_mse(...).weight_change(t, fx_train_0)`; keep the
    predictor instead when asking for several t (one eigendecomposition serves all).

    Args:
        k_train_train, y_train, learning_rate, diag_reg, diag_reg_absolute, discrete: as in
            `gradient_descent_mse`.
        t: a number or 1-D tensor of times; None is t = ∞.
        fx_train_0: (n,) or (n, k) outputs at t = 0, or a number.

    Returns:
        A scalar tensor, or (T,) for a 1-D t.

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> x_train, x_test, y_train = torch.randn(6, 3), torch.randn(2, 3), torch.randn(6, 1)
        >>> k_train, k_test_train = net.kernel(x_train), net.kernel(x_test, x_train)
        >>> w = wn.predict.weight_change(k_train, y_train, torch.tensor([0.0, 1.0]))
        >>> w.shape, float(w[0])
        (torch.Size([2]), 0.0)
    """
    predictor = MSEPredictor(k_train_train, y_train, learning_rate=learning_rate,
                             diag_reg=diag_reg, diag_reg_absolute=diag_reg_absolute,
                             discrete=discrete)
    return predictor.weight_change(t, fx_train_0)
