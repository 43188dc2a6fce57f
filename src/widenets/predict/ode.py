"""Gradient descent with any loss, and with momentum, as ODEs in function space.

The linearized network's outputs obey (Lee et al. 2019, seed 002, eq. 7, SM §B), with t the
number of steps, η the learning rate and Θ ⊗ I the NTK:

    d f(X)/dt = -η Θ(X, X) ∇_f L(f(X)),      d f(x)/dt = -η Θ(x, X) ∇_f L(f(X)).

Heavy-ball momentum β (v ← βv - η∇_θL, θ ← θ + v) becomes, for the function-space velocity
u = J v, u ← βu - ηΘ∇L and f ← f + u, whose continuous-time limit is the second-order ODE

    d f/dt = u,      d u/dt = -(1 - β) u - η Θ ∇_f L(f)            (u = 0 at t = 0),

the damped oscillator of SM §B written in steps (its time τ = √η t gives f'' = -((1-β)/√η) f'
- Θ∇L). Both are integrated with scipy.integrate.solve_ivp (DOP853 by default, tight
tolerances); for MSE without momentum prefer the exact `gradient_descent_mse`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._checks import describe as _describe
from ._linalg import (
    as_kernel_matrix,
    as_outputs,
    as_targets,
    as_times,
    check_positive,
    restore_targets_shape,
)

__all__ = ["gradient_descent", "ODEPredictor", "mse_loss", "cross_entropy_loss", "LOSSES"]


def mse_loss(fx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Total squared error ½ Σ (f - y)² (seed 002, §2.1; not averaged over samples).

    Example:
        >>> wn.predict.mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(2.5000)
    """
    return 0.5 * ((fx - y) ** 2).sum()


def cross_entropy_loss(fx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Total softmax cross-entropy -Σ_i Σ_c y_ic log softmax(f_i)_c; y (n, k) one-hot or
    probabilities.

    Example:
        >>> loss = wn.predict.cross_entropy_loss(torch.zeros(3, 2), torch.eye(2)[[0, 1, 1]])
        >>> round(loss.item(), 4)                              # 3 log 2
        2.0794
    """
    return -(y * torch.log_softmax(fx, dim=-1)).sum()


LOSSES = {"mse": mse_loss, "cross_entropy": cross_entropy_loss}

_METHODS = ("auto", "RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
# method="auto": DOP853 unless η λ_max t > _STIFF (then LSODA, whose steps are not limited by
# the stability of an explicit method: an explicit solver needs ~η λ_max t steps).
_STIFF = 1e3


class ODEPredictor:
    """Outputs of gradient descent (any loss, optional momentum) at any times, by integration.

    Made by `gradient_descent`; call it as `predictor(t, fx_train_0, fx_test_0, k_test_train)`.

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> x_train, x_test, y_train = torch.randn(6, 3), torch.randn(2, 3), torch.randn(6, 1)
        >>> k_train, k_test_train = net.kernel(x_train), net.kernel(x_test, x_train)
        >>> y_onehot = torch.eye(2)[[0, 1, 0, 1, 1, 0]]
        >>> ode = wn.predict.gradient_descent("cross_entropy", k_train, y_onehot)
        >>> isinstance(ode, wn.predict.ODEPredictor), ode(2.0, 0.0).shape
        (True, torch.Size([6, 2]))
    """

    _func = "gradient_descent"

    def __init__(self, loss, k_train_train, y_train, *, learning_rate: float = 1.0,
                 momentum: float | None = None, method: str = "auto", rtol: float = 1e-10,
                 atol: float = 1e-12, progress: bool = False):
        func = self._func
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"{func}: loss must be a callable loss(fx, y) -> scalar or one "
                                 f"of {tuple(LOSSES)}, got {loss!r}")
            loss = LOSSES[loss]
        if not callable(loss):
            raise TypeError(f"{func}: loss must be a callable loss(fx, y) -> scalar tensor or "
                            f"one of {tuple(LOSSES)}, got {type(loss).__name__}")
        self.loss: Callable = loss
        self.k_train_train = as_kernel_matrix(k_train_train, func=func, arg="k_train_train",
                                              which="ntk")
        n = self.k_train_train.shape[0]
        if self.k_train_train.shape[1] != n:
            raise ValueError(f"{func}: k_train_train must be square (n, n), got "
                             f"{tuple(self.k_train_train.shape)}")
        self.learning_rate = check_positive(learning_rate, func=func, arg="learning_rate")
        if momentum is not None and (isinstance(momentum, bool) or
                                     not isinstance(momentum, (int, float)) or
                                     not 0.0 <= momentum < 1.0):
            raise ValueError(f"{func}: momentum must be None or a number in [0, 1), got "
                             f"{momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        if method not in _METHODS:
            raise ValueError(f"{func}: method must be one of {_METHODS} (scipy solve_ivp), got "
                             f"{method!r}")
        self.method = method
        self.rtol = check_positive(rtol, func=func, arg="rtol")
        self.atol = check_positive(atol, func=func, arg="atol")
        self.y_train, self._vector = as_targets(y_train, func=func, n=n,
                                                dtype=self.k_train_train.dtype,
                                                device=self.k_train_train.device)
        self._y_arg = self.y_train[:, 0] if self._vector else self.y_train
        self.progress = bool(progress)
        self.nfev = 0               # right-hand side evaluations of the last call
        self.stopped_at = None      # the time at which the last call's dynamics had converged
        self._closed_form = None
        if self.loss is mse_loss and self.momentum is None:
            # MSE without momentum is linear: the exact closed form (eqs. 9-11) costs the same
            # at any t, where integrating costs ~η λ_max t steps (issue 17 item 13).
            from .mse import MSEPredictor

            try:
                self._closed_form = MSEPredictor(self.k_train_train, self.y_train,
                                                 learning_rate=self.learning_rate)
            except ValueError:
                self._closed_form = None    # not positive semi-definite: integrate instead
        self._lam_max = None

    def _stiffness(self, t_end: float) -> float:
        """η λ_max t_end (λ_max by eigvalsh, or 50 power iterations for n > 3000)."""
        if self._lam_max is None:
            k = self.k_train_train
            if k.shape[0] <= 3000:
                self._lam_max = float(torch.linalg.eigvalsh(0.5 * (k + k.T))[-1])
            else:
                v = torch.ones(k.shape[0], dtype=k.dtype, device=k.device)
                for _ in range(50):
                    v = k @ v
                    v = v / torch.linalg.norm(v)
                self._lam_max = float(v @ (k @ v))
        return self.learning_rate * max(self._lam_max, 0.0) * t_end

    def _loss_gradient(self, f_train: torch.Tensor) -> torch.Tensor:
        """∇_f L at the (n, k) training outputs, as (n, k)."""
        if self.loss is mse_loss:
            return f_train - self.y_train
        if self.loss is cross_entropy_loss:
            return torch.softmax(f_train, dim=-1) * self.y_train.sum(-1, keepdim=True) \
                - self.y_train
        arg = (f_train[:, 0] if self._vector else f_train).detach().requires_grad_(True)
        with torch.enable_grad():
            value = self.loss(arg, self._y_arg)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ValueError(f"{self._func}: loss(fx, y) must return a scalar tensor, got "
                                 f"{_describe(value)}")
            (g,) = torch.autograd.grad(value.reshape(()), arg, allow_unused=True)
        if g is None:
            raise ValueError(f"{self._func}: loss(fx, y) does not depend on fx")
        g = g.reshape(f_train.shape)
        if not torch.isfinite(g).all():
            raise FloatingPointError(f"{self._func}: the loss gradient became non-finite "
                                     f"during integration; check the loss and the kernel scale")
        return g

    def _numpy_gradient(self):
        """∇_f L in numpy for the built-in losses (None for a user callable)."""
        y = self.y_train.cpu().numpy()
        if self.loss is mse_loss:
            return lambda f: f - y
        if self.loss is cross_entropy_loss:
            y_sum = y.sum(-1, keepdims=True)

            def grad(f):
                e = np.exp(f - f.max(-1, keepdims=True))
                return e / e.sum(-1, keepdims=True) * y_sum - y
            return grad
        return None

    def __call__(self, t, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        """Train (and test) outputs after t steps of gradient descent.

        Args:
            t: a number or a 1-D tensor of times, in steps (any order; fractional allowed).
                Must be finite: the ODE is integrated up to max(t).
            fx_train_0: (n,) or (n, k) outputs on the training set at t = 0, or a number.
            fx_test_0: (m,) or (m, k) test outputs at t = 0, or a number; None is 0.
            k_test_train: (m, n) NTK Θ(x_test, X) (or a `wn.Kernel`); None for train only.

        Returns:
            fx_train_t shaped like y_train (with a leading time axis for a 1-D t), or the tuple
            (fx_train_t, fx_test_t) when k_test_train is given.
        """
        func = self._func
        tt, scalar = as_times(t, func=func, discrete=False, allow_inf=False)
        if self._closed_form is not None:
            self.nfev, self.stopped_at = 0, None
            return self._closed_form(t, fx_train_0, fx_test_0, k_test_train)
        kdd = self.k_train_train
        n, k = self.y_train.shape
        dtype, device = kdd.dtype, kdd.device
        f0 = as_outputs(fx_train_0, func=func, arg="fx_train_0", shape=(n, k),
                        vector=self._vector, dtype=dtype, device=device)
        ktd = None
        if k_test_train is not None:
            ktd = as_kernel_matrix(k_test_train, func=func, arg="k_test_train", which="ntk",
                                   shape=(None, n)).to(device)
        elif fx_test_0 is not None:
            raise ValueError(f"{func}: fx_test_0 was given without k_test_train; pass the "
                             f"(m, n) test-train NTK to get test outputs")
        m = 0 if ktd is None else ktd.shape[0]
        ft0 = None
        if ktd is not None:
            ft0 = as_outputs(0.0 if fx_test_0 is None else fx_test_0, func=func,
                             arg="fx_test_0", shape=(m, k), vector=self._vector, dtype=dtype,
                             device=device)
        n_f = (n + m) * k
        eta, beta = self.learning_rate, self.momentum

        k_all = kdd if ktd is None else torch.cat([kdd, ktd])     # Θ(train and test, X)
        grad_np = self._numpy_gradient() if device.type == "cpu" else None
        if grad_np is not None:
            # Built-in losses on CPU: the right-hand side in numpy (no per-op torch overhead).
            k_np = k_all.numpy()

            def velocity(state: np.ndarray) -> np.ndarray:
                # eq. 7: df/dt = -η Θ(·, X) ∇_f L(f(X)), train and test rows at once.
                return -eta * (k_np @ grad_np(state[:n * k].reshape(n, k))).reshape(-1)
        else:
            def velocity(state: np.ndarray) -> np.ndarray:
                f_train = torch.from_numpy(state[:n * k]).to(device=device, dtype=dtype)
                g = self._loss_gradient(f_train.reshape(n, k))
                return (-eta * (k_all @ g)).reshape(-1).cpu().numpy()

        def rhs(_, state: np.ndarray) -> np.ndarray:
            if beta is None:
                return velocity(state)
            u = state[n_f:]
            du = velocity(state[:n_f]) - (1.0 - beta) * u    # SM §B, in steps
            return np.concatenate([u, du])

        state0 = f0 if ft0 is None else torch.cat([f0, ft0])
        state0 = state0.reshape(-1)
        if beta is not None:
            state0 = torch.cat([state0, torch.zeros_like(state0)])
        times = np.unique(tt.numpy())
        t_end = float(times[-1])
        if t_end == 0.0:
            states = state0.cpu().numpy()[:, None].repeat(len(times), axis=1)
        else:
            from scipy.integrate import solve_ivp  # imported on first use (import time)

            method = self.method
            if method == "auto":
                method = "LSODA" if self._stiffness(t_end) > _STIFF else "DOP853"
            counter = _Counter(func, t_end, self.progress)
            atol, rtol = self.atol, self.rtol

            def counted(t_now, state):
                counter(t_now)
                return rhs(t_now, state)

            def converged(t_now, state):
                # Stop once the rest of the run cannot move any output by more than the
                # tolerance: ||df/dt||_∞ (t_end - t) <= atol + rtol ||f||_∞ (the velocity of a
                # gradient flow on a convex loss does not grow).
                v = np.abs(rhs(t_now, state)).max()
                return v * (t_end - t_now) - (atol + rtol * np.abs(state).max())

            converged.terminal = True
            converged.direction = -1
            sol = solve_ivp(counted, (0.0, t_end), state0.cpu().numpy(), method=method,
                            t_eval=times, rtol=rtol, atol=atol, events=converged)
            counter.close()
            self.nfev = counter.calls
            if sol.status == 1:              # converged before t_end: the state stays put
                t_stop = float(sol.t_events[0][0])
                self.stopped_at = t_stop if t_stop < t_end * (1 - 1e-9) else None
                final = sol.y_events[0][0]
                got = np.asarray(sol.y, dtype=final.dtype).reshape(final.shape[0], -1)
                states = np.concatenate(
                    [got, np.repeat(final[:, None], len(times) - got.shape[1], 1)], 1)
            elif sol.status != 0:
                raise RuntimeError(f"{func}: the ODE solver ({method}) failed: "
                                   f"{sol.message}; try method='LSODA' or smaller t")
            else:
                self.stopped_at = None
                states = sol.y
        order = np.searchsorted(times, tt.numpy())
        out = torch.from_numpy(np.ascontiguousarray(states[:n_f, order].T)).to(
            device=device, dtype=dtype).reshape(len(order), n + m, k)
        train = restore_targets_shape(out[:, :n], self._vector)
        if ktd is None:
            return train[0] if scalar else train
        test = restore_targets_shape(out[:, n:], self._vector)
        return (train[0], test[0]) if scalar else (train, test)


class _Counter:
    """Counts right-hand side calls; with `progress`, one line a second of the time reached."""

    def __init__(self, func: str, t_end: float, progress: bool):
        import time

        self.func, self.t_end, self.progress = func, t_end, progress
        self.calls, self._clock, self._shown = 0, time.perf_counter, -1e300

    def __call__(self, t_now: float) -> None:
        self.calls += 1
        if self.progress and self._clock() - self._shown >= 1.0:
            import sys

            self._shown = self._clock()
            sys.stderr.write(f"\r{self.func}: t = {t_now:.4g} of {self.t_end:.4g} "
                             f"({self.calls} evaluations)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.progress:
            import sys

            sys.stderr.write("\n")


def gradient_descent(loss, k_train_train, y_train, *, learning_rate: float = 1.0,
                     momentum: float | None = None, method: str = "auto",
                     rtol: float = 1e-10, atol: float = 1e-12,
                     progress: bool = False) -> ODEPredictor:
    """Predict gradient descent with any differentiable loss (and momentum) by solving its ODE.

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5), wn.Relu(), wn.Dense(1))
        >>> x_train, x_test, y_train = torch.randn(6, 3), torch.randn(2, 3), torch.randn(6, 1)
        >>> k_train, k_test_train = net.kernel(x_train), net.kernel(x_test, x_train)
        >>> ode = wn.predict.gradient_descent("mse", k_train, y_train, momentum=0.9)
        >>> ode(1.0, 0.0).shape
        torch.Size([6, 1])
        >>> exact = wn.predict.gradient_descent_mse(k_train, y_train)
        >>> bool(torch.allclose(wn.predict.gradient_descent("mse", k_train, y_train)(1.0, 0.0),
        ...                     exact(1.0, 0.0), atol=1e-6))
        True

    Args:
        loss: "mse" (½ Σ (f - y)²), "cross_entropy" (-Σ y log softmax f, y one-hot), or a
            callable loss(fx, y) -> scalar tensor differentiable in fx (torch.autograd), with
            fx shaped like y_train. Use total (summed) losses to keep seed 002's time scale.
        k_train_train: (n, n) NTK of the training inputs (tensor, numpy array or `wn.Kernel`).
        y_train: (n,) or (n, k) targets.
        learning_rate: η; t counts steps of this size.
        momentum: None for plain gradient descent, or heavy-ball β in [0, 1) (second-order
            ODE, seed 002 SM §B; accurate when η λ_max and (1 - β)² are small).
        method, rtol, atol: scipy.integrate.solve_ivp settings. "auto" (default): DOP853
            (explicit, 8th order), or LSODA when η λ_max t > 1e3 (stiff: an explicit method
            would need ~η λ_max t steps). For loss="mse" without momentum the exact closed
            form of `gradient_descent_mse` is used instead (same cost at any t). The
            integration stops early once the outputs can no longer move by more than the
            tolerance before max(t) (the rest of the times get the converged outputs).
        progress: print the time reached (one line a second) while integrating.

    Returns:
        An `ODEPredictor` p with `p(t, fx_train_0=0.0, fx_test_0=None, k_test_train=None)`.
    """
    return ODEPredictor(loss, k_train_train, y_train, learning_rate=learning_rate,
                        momentum=momentum, method=method, rtol=rtol, atol=atol,
                        progress=progress)
