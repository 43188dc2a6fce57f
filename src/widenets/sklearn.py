"""scikit-learn estimators from infinitely wide networks (`wn.sklearn`, imported lazily).

* `NTKRegressor`: the mean of the infinite ensemble of infinitely wide `net`s trained by MSE
  gradient descent for time t (t=None: to convergence; Lee et al. 2019, eqs. 14-16), with
  `return_std` / `return_cov` from the ensemble's covariance (eq. 15).
* `NNGPRegressor`: the NNGP posterior (t=None, eq. 13), or training only the readout for time t.
* `NTKClassifier`: one-hot regression with the NTK ensemble mean, prediction by argmax.

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(), wn.sklearn.NTKRegressor(net, t=None))
    model.fit(X_train, y_train).score(X_test, y_test)

Kernels larger than memory: `fit(X, y, k_train=store)` takes the train-train kernel of X
precomputed (a `wn.tiles` store of any size, or a matrix); predictions then go through
`wn.predict.solve` (t=None) or Lanczos (finite t) and the estimator computes the test-train
kernels itself, a block of test rows at a time.

Constructors store their arguments verbatim (scikit-learn convention); `fit` checks them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .layers import Dense, Relu, serial
from .layers.base import Layer
from .predict._linalg import as_kernel_matrix, is_store
from .predict.ensemble import EnsemblePredictor
from .predict.gp import Gaussian, gp_inference
from .predict.likelihood import fit_hyperparameters as fit_kernel_hyperparameters
from .predict.mse import MSEPredictor

__all__ = ["NTKRegressor", "NNGPRegressor", "NTKClassifier", "default_net"]


def default_net() -> Layer:
    """The network used when `net=None`: Dense(w_std=1.5, b_std=0.05) → ReLU → Dense readout.

    Only the infinite-width kernels are used, so the width (512) does not matter.

    Example:
        >>> from widenets.sklearn import default_net
        >>> default_net()
        serial(Dense(out=512, ...), Relu(), Dense(out=1, ...))
    """
    return serial(Dense(512, w_std=1.5, b_std=0.05), Relu(), Dense(1, w_std=1.5, b_std=0.05))


class _WideNetEstimator(BaseEstimator):
    """Shared fit/predict of the estimators; `_kernel` is "ntk" or "nngp"."""

    _kernel = "ntk"

    def __init__(self, net=None, *, t=None, learning_rate=1.0, diag_reg=0.0,
                 diag_reg_absolute=False, fit_hyperparameters=False, fit_steps=30,
                 solve_options=None):
        self.net = net
        self.t = t
        self.learning_rate = learning_rate
        self.diag_reg = diag_reg
        self.diag_reg_absolute = diag_reg_absolute
        self.fit_hyperparameters = fit_hyperparameters
        self.fit_steps = fit_steps
        self.solve_options = solve_options

    def _resolved_net(self) -> Layer:
        net = default_net() if self.net is None else self.net
        if not isinstance(net, Layer):
            raise TypeError(f"{type(self).__name__}.fit: net must be a widenets network "
                            f"(e.g. wn.serial(...)) or None, got {type(net).__name__}")
        return net

    def _check_t(self):
        t = self.t
        if t is None:
            return None
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) \
                or not (t >= 0):
            raise ValueError(f"{type(self).__name__}.fit: t must be None (trained to "
                             f"convergence) or a number >= 0, got {t!r}")
        return float(t)

    def _fit_targets(self, X, targets: np.ndarray, k_train=None):
        self._t = self._check_t()
        net = self._resolved_net()
        x = torch.tensor(X, dtype=torch.float64)
        y = torch.tensor(targets, dtype=torch.float64)
        self.diag_reg_, self.diag_reg_absolute_ = self.diag_reg, self.diag_reg_absolute
        if k_train is not None:
            return self._fit_precomputed(net, x, y, k_train)
        self.k_train_ = None
        if self.fit_hyperparameters:
            # σw, σb (tied across layers) and the noise by marginal likelihood; the fitted
            # noise variance becomes the (absolute) diag_reg (docs/math.md §marginal-likelihood)
            fit = fit_kernel_hyperparameters(net, x, y, kernel=self._kernel, tied=True,
                                             steps=self.fit_steps)
            net, self.hyperparameters_, self.noise_ = fit.net, fit.hyperparameters, fit.noise
            self.diag_reg_, self.diag_reg_absolute_ = fit.noise, True
        self.net_ = net
        self.predictor_ = EnsemblePredictor(
            net, x, y, learning_rate=self.learning_rate, diag_reg=self.diag_reg_,
            diag_reg_absolute=self.diag_reg_absolute_)
        # Factorize now so that a kernel that is not positive definite fails in fit.
        eig = self.predictor_.eig(self._kernel)
        if self._t is None:
            eig.require_definite("t=None (trained to convergence)")
        return self

    # -------------------------------------------------------------- precomputed kernels
    def _fit_precomputed(self, net, x, y, k_train):
        """fit with the train-train kernel given: a tile store of any size, or a matrix."""
        name = f"{type(self).__name__}.fit"
        if self.fit_hyperparameters:
            raise ValueError(f"{name}: fit_hyperparameters=True changes the kernel, so it cannot "
                             f"be used with a precomputed k_train; pass k_train=None")
        if self.solve_options is not None and not isinstance(self.solve_options, dict):
            raise TypeError(f"{name}: solve_options must be a dict of wn.predict.solve keyword "
                            f"arguments or None, got {type(self.solve_options).__name__}")
        n = x.shape[0]
        store = is_store(k_train) or _is_store_operator(k_train)
        if store:
            _check_store_inputs(k_train, x, self._kernel, name)
        else:
            k_train = as_kernel_matrix(k_train, func=name, arg="k_train", which=self._kernel,
                                       shape=(n, n))
        _check_sampled_entries(k_train, net, x, self._kernel, name, store)
        self.net_, self.x_train_, self.k_train_ = net, x, k_train
        self._vector_targets = y.ndim == 1
        y = y[:, None] if y.ndim == 1 else y
        self._y = y
        self.predictor_ = MSEPredictor(
            k_train, y, learning_rate=self.learning_rate, diag_reg=self.diag_reg_,
            diag_reg_absolute=self.diag_reg_absolute_, solve_options=self.solve_options,
            kernel=self._kernel)
        if self._t is None and self.predictor_.eig is not None:
            self.predictor_.eig.require_definite("t=None (trained to convergence)")
        # f_t(x) = Θ(x, X) W_t (eq. 14, f_0 = 0): one solve / Lanczos run for every test point.
        self.weights_ = self.predictor_.gain_weights(self._t)
        return self

    def _precomputed_gaussian(self, X: torch.Tensor, compute_cov: bool):
        name = f"{type(self).__name__}.predict"
        if not compute_cov:
            m, n = X.shape[0], self.x_train_.shape[0]
            rows = max(1, _BLOCK_ENTRIES // max(n, 1))          # test rows per block
            out = [self._cross(X[s:s + rows], self._kernel) @ self.weights_
                   for s in range(0, m, rows)]
            mean = torch.cat(out) if out else torch.zeros(0, self.weights_.shape[1])
            return Gaussian(mean[:, 0] if self._y_vector else mean, None)
        if self._t is not None:
            raise ValueError(f"{name}: return_std / return_cov at a finite t is not available "
                             f"for an estimator fitted with a precomputed k_train (it needs "
                             f"the ensemble covariance of eq. 15 over the whole kernel); use "
                             f"t=None, or fit without k_train")
        # t = ∞: the GP posterior (NNGP) or the NTK-GP (eq. 16) through wn.predict.solve (one
        # solve with a right-hand side per test point: ask for it on a test subset).
        if self._kernel == "nngp":
            k_td = self._cross(X, "nngp")
        else:
            ntk, nngp = self._cross(X, ("ntk", "nngp"))
            k_td = _Pair(nngp, ntk)
        return gp_inference(self.k_train_, self._targets(), k_td,
                            self.net_.kernel(X, get="nngp"), kernel=self._kernel,
                            diag_reg=self.diag_reg_, diag_reg_absolute=self.diag_reg_absolute_,
                            solve_options=self.solve_options)

    def _cross(self, X, get):
        return self.net_.kernel(X, self.x_train_, get=get)

    @property
    def _y_vector(self) -> bool:
        return getattr(self, "_vector_targets", False)

    def _targets(self):
        return self._y[:, 0] if self._y_vector else self._y

    def _predict_gaussian(self, X, compute_cov: bool):
        check_is_fitted(self, "predictor_")
        X = torch.tensor(validate_data(self, X, reset=False, dtype=np.float64))
        if self.k_train_ is not None:
            return self._precomputed_gaussian(X, compute_cov)
        ens = self.predictor_
        if self._kernel == "nngp" and self._t is None:
            # The Bayesian posterior (eq. 13), diag_reg as observation noise.
            net = self.net_
            return gp_inference(ens.k_train, ens.targets, net.kernel(X, ens.x_train, get="nngp"),
                                net.kernel(X, get="nngp") if compute_cov else None,
                                kernel="nngp", diag_reg=self.diag_reg_,
                                diag_reg_absolute=self.diag_reg_absolute_)
        return ens(self._t, X, kernel=self._kernel, compute_cov=compute_cov)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


class _WideNetRegressor(RegressorMixin, _WideNetEstimator):

    def fit(self, X, y, k_train=None):
        """Compute the training kernels and their eigendecomposition (or take k_train).

        Args:
            X: (n, d) training inputs.
            y: (n,) or (n, k) targets.
            k_train: None (the kernels are computed here), or the precomputed (n, n)
                train-train kernel of X with this estimator's network: a `wn.tiles` store of
                any size (directory, `wn.tiles.open` array or `wn.tiles.StoreOperator`; it
                must hold this estimator's kernel, "ntk" or "nngp", and was computed from
                exactly X: checked against the store's fingerprint of its inputs), or a
                `wn.Kernel` / matrix. A few entries are recomputed from `net` and X and
                compared. Predictions then use `wn.predict.solve` (t=None) or Lanczos (finite
                t) through `solve_options`, and the test-train kernels are computed from X.

        Returns:
            self.
        """
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        return self._fit_targets(X, np.asarray(y, dtype=np.float64), k_train)

    def predict(self, X, return_std=False, return_cov=False):
        """Mean prediction, optionally with its standard deviation or covariance.

        Args:
            X: (m, d) inputs.
            return_std: also return the (m,) standard deviations ((m, k) for k targets, equal
                across targets).
            return_cov: also return the (m, m) covariance ((m, m, k) for k targets).

        Returns:
            mean (m,) or (m, k); with return_std or return_cov the tuple (mean, std or cov).
        """
        if return_std and return_cov:
            raise ValueError(f"{type(self).__name__}.predict: ask for at most one of "
                             f"return_std and return_cov")
        g = self._predict_gaussian(X, compute_cov=return_std or return_cov)
        mean = g.mean.numpy()
        if not (return_std or return_cov):
            return mean
        cov = g.covariance.numpy()
        if return_std:
            extra = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        else:
            extra = cov
        if mean.ndim == 2:
            extra = np.repeat(extra[..., None], mean.shape[1], axis=-1)
        return mean, extra

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class NTKRegressor(_WideNetRegressor):
    """The infinite ensemble of infinitely wide networks trained by MSE gradient descent.

    Args:
        net: a widenets network (None: `default_net()`). Only its analytic kernels are used.
        t: training time in steps of size `learning_rate` (gradient flow); None trains to
            convergence (eq. 16: the NTK-GP mean Θ(x, X) Θ⁻¹ Y).
        learning_rate: η (only t · η matters for gradient flow).
        diag_reg: ρ added to the diagonal of the train-train NTK, relative to its mean diagonal
            (0 by default, as everywhere in widenets: duplicated training points then make
            `fit` raise an error naming diag_reg; pass e.g. diag_reg=1e-6).
        diag_reg_absolute: True to add diag_reg itself.
        fit_hyperparameters: fit σw, σb (tied across layers) and the noise variance by
            maximizing the marginal likelihood of the GP with this estimator's kernel
            (`wn.predict.fit_hyperparameters`) before predicting; the fitted noise replaces
            diag_reg (absolute).
        fit_steps: L-BFGS steps of that fit.

    Attributes (after fit):
        predictor_: the `wn.predict.EnsemblePredictor`; n_features_in_; net_: the network
        used (fitted when fit_hyperparameters); hyperparameters_, noise_: the fitted values.

    Example:
        >>> x, y = np.random.default_rng(0).standard_normal((20, 3)), np.arange(20.0) % 2
        >>> from widenets.sklearn import NTKRegressor
        >>> reg = NTKRegressor(diag_reg=1e-6).fit(x, y)
        >>> mean, std = reg.predict(x[:4], return_std=True)
        >>> mean.shape, std.shape
        ((4,), (4,))
    """

    _kernel = "ntk"


class NNGPRegressor(_WideNetRegressor):
    """Bayesian inference with the NNGP kernel (t=None), or readout-only training for time t.

    Args:
        net: a widenets network (None: `default_net()`).
        t: None for the exact NNGP posterior (eq. 13); a number for the ensemble of networks
            whose readout layer alone was trained for t steps.
        learning_rate: η.
        diag_reg: ρ added to the diagonal of the train-train NNGP, relative to its mean
            diagonal: Gaussian observation noise of variance ρ in the posterior (0 by default;
            duplicated training points then need diag_reg > 0).
        diag_reg_absolute: True to add diag_reg itself.
        fit_hyperparameters, fit_steps: as `NTKRegressor` (with the NNGP's evidence).

    Example:
        >>> x, y = np.random.default_rng(0).standard_normal((20, 3)), np.arange(20.0) % 2
        >>> from widenets.sklearn import NNGPRegressor
        >>> NNGPRegressor(diag_reg=1e-6).fit(x, y).predict(x[:4]).shape
        (4,)
    """

    _kernel = "nngp"


class NTKClassifier(ClassifierMixin, _WideNetEstimator):
    """Classification by NTK regression on one-hot targets, prediction by argmax.

    Args: as `NTKRegressor`.

    Attributes (after fit):
        classes_: the class labels; predictor_; n_features_in_.

    Example:
        >>> x, y = np.random.default_rng(0).standard_normal((20, 3)), np.arange(20.0) % 2
        >>> from widenets.sklearn import NTKClassifier
        >>> clf = NTKClassifier(diag_reg=1e-6).fit(x, y.astype(int))
        >>> float((clf.predict(x) == y).mean())                # interpolates the training labels
        1.0
    """

    _kernel = "ntk"

    def fit(self, X, y, k_train=None):
        """Fit on (n, d) inputs X and (n,) class labels y; returns self.

        k_train: None, or the precomputed train-train NTK of X (a `wn.tiles` store of any size
        or a matrix), as in `NTKRegressor.fit`.
        """
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        codes = encoder.transform(y)
        onehot = np.zeros((len(codes), len(self.classes_)))
        onehot[np.arange(len(codes)), codes] = 1.0
        return self._fit_targets(X, onehot, k_train)

    def _outputs(self, X) -> np.ndarray:
        return self._predict_gaussian(X, compute_cov=False).mean.numpy()

    def decision_function(self, X):
        """(m, classes) regression outputs; (m,) output difference for two classes."""
        out = self._outputs(X)
        if len(self.classes_) == 2:
            return out[:, 1] - out[:, 0]
        return out

    def predict(self, X):
        """(m,) predicted labels: the class with the largest regression output."""
        check_is_fitted(self, "classes_")
        return self.classes_[np.argmax(self._outputs(X), axis=1)]


_BLOCK_ENTRIES = 1 << 24       # test-train kernel entries computed at a time (128 MB float64)


class _Pair:
    """The NNGP and NTK of one test-train block, as gp_inference reads a `wn.Kernel`."""

    def __init__(self, nngp, ntk):
        self.nngp, self.ntk = nngp, ntk


def _is_store_operator(k) -> bool:
    if not (hasattr(k, "matmul") and hasattr(k, "meta")):
        return False
    from .tiles import StoreOperator

    return isinstance(k, StoreOperator)


def _check_store_inputs(k_train, x: torch.Tensor, kernel: str, func: str) -> None:
    """The store holds `kernel` of exactly the inputs x (shape and SHA-256 of its inputs)."""
    from .tiles.store import fingerprint, read_metadata

    root = k_train.root if _is_store_operator(k_train) else (
        k_train.store if hasattr(k_train, "store") else k_train)
    _, meta = read_metadata(root, func=func)
    n = x.shape[0]
    if list(meta["shape"]) != [n, n] or not meta["symmetric"]:
        raise ValueError(f"{func}: k_train must be the symmetric ({n}, {n}) train-train kernel "
                         f"of X, but the store holds a {tuple(meta['shape'])} kernel"
                         f"{'' if meta['symmetric'] else ' of two input sets'}")
    if kernel not in meta["get"]:
        raise ValueError(f"{func}: k_train must hold the {kernel.upper()} (this estimator's "
                         f"kernel), but the store holds {' and '.join(meta['get'])}")
    want = meta.get("x1") or {}
    got = fingerprint(x.to(getattr(torch, meta["dtype"])))
    if want.get("sha256") is not None and want["sha256"] != got["sha256"]:
        raise ValueError(f"{func}: k_train was computed from other inputs than X (the SHA-256 "
                         f"of X in the store's dtype {meta['dtype']} differs from the store's "
                         f"record of its inputs); pass the X the store was computed from, "
                         f"after the same preprocessing")


def _check_sampled_entries(k_train, net, x, kernel: str, func: str, store: bool) -> None:
    """A few entries of k_train recomputed from net and X (catches another net or X; for a
    store, among the inputs of its first tile row: its fingerprint covers every input)."""
    n = x.shape[0]
    op = None
    if store:
        from .predict.solver import as_operator

        op, _ = as_operator(k_train, kernel=kernel, func=func, check=None)
        n = min(n, op.meta["tile"][0])     # inputs of the first tile: one tile is read
    idx = np.unique(np.linspace(0, n - 1, min(n, 6)).round().astype(np.int64))
    fresh = net.kernel(x[idx], get=kernel)
    if store:
        from .tiles.matvec import read_block

        tile = np.asarray(read_block(op.root, op.name, op.meta, 0, 0), dtype=np.float64)
        stored = torch.from_numpy(tile[np.ix_(idx, idx)])
        eps = float(np.finfo(op.dtype).eps)
    else:
        stored = k_train[idx][:, idx]
        eps = float(getattr(k_train, "widenets_source_eps", torch.finfo(torch.float64).eps))
    # arccos kernels carry ~sqrt(eps) relative error near c = 1 (docs/math.md §near-diagonal)
    tol = 10 * math.sqrt(eps)
    gap = float((stored - fresh).abs().max() / fresh.abs().max())
    if not gap <= tol:
        raise ValueError(f"{func}: k_train does not match the {kernel.upper()} of this "
                         f"estimator's net on X (largest relative difference {gap:.3g} over "
                         f"{len(idx)} sampled inputs, tolerance {tol:.1g}); compute k_train "
                         f"with the same net and inputs")
