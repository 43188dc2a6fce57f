"""`kernel-regression`: NTK and NNGP kernel regression on digits against depth, with a
scikit-learn RBF kernel ridge baseline, and hyperparameters fitted by marginal likelihood.

The infinitely wide net trained to convergence on MSE is kernel regression with its NTK
(Lee et al. 2019, eq. 16); Bayesian inference with the infinitely wide net is regression with its
NNGP (eq. 13). Both are compared, over depth, with an RBF kernel ridge regression whose γ and
ridge are chosen by 3-fold cross-validation on the training set.

The second part fits σw, σb (tied across layers) and the noise variance of the NNGP and NTK
GPs by maximizing their marginal likelihood (`wn.predict.fit_hyperparameters`), against the best
(σw, σb) of a grid chosen by 3-fold cross-validated accuracy, an RBF Gaussian process with its
length scale fitted by marginal likelihood (scikit-learn), and a random forest, on the small
data sets scikit-learn ships (the "small-data tasks" of Arora et al. 2020).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import predict
from ..data import load_digits
from ..data.dataset import Dataset, one_hot_targets
from ..layers.base import input_kernel
from .base import ACTIVATION_HELP, Result, progress
from .common import ACTIVATIONS, fc_net
from .plotting import pyplot, save

ID = "kernel-regression"
TITLE = "NTK / NNGP kernel regression on digits against depth vs an RBF baseline"
RUNTIME = "10 s"


@dataclass
class Config:
    """Options (`--set key=value`).

    Attributes:
        n_train, n_test: digits split (all 1797 images by default).
        depths: numbers of hidden layers of the fully connected net.
        activation: relu, erf, gelu, abs, identity; w_std, b_std: σw, σb.
        diag_reg: ridge on the train kernel, relative to its mean diagonal.
        seed: split seed.
        fit_datasets: data sets of the fitted-hyperparameter comparison (digits, iris, wine,
            breast_cancer; empty to skip it).
        fit_depth: hidden layers of the net whose σ's are fitted; fit_steps: L-BFGS steps.
    """

    n_train: int = 1000
    n_test: int = 797
    depths: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # sorted, distinct
    activation: str = "relu"
    w_std: float = 2 ** 0.5
    b_std: float = 0.1
    diag_reg: float = 1e-4
    seed: int = 0
    fit_datasets: tuple[str, ...] = ("digits", "iris", "wine", "breast_cancer")
    fit_depth: int = 3
    fit_steps: int = 30

    def check(self) -> None:
        bad = [d for d in self.fit_datasets if d not in SMALL_DATASETS]
        if bad:
            raise ValueError(f"fit_datasets must be among {', '.join(SMALL_DATASETS)}, got "
                             f"{', '.join(bad)}")
        if self.fit_depth < 1 or self.fit_steps < 1:
            raise ValueError(f"fit_depth and fit_steps must be >= 1, got {self.fit_depth}, "
                             f"{self.fit_steps}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(ACTIVATION_HELP.format(self.activation))
        if not self.depths or min(self.depths) < 1 or list(self.depths) != sorted(
                set(self.depths)):
            raise ValueError(f"depths must be increasing positive ints, got {self.depths}")
        if self.diag_reg < 0:
            raise ValueError(f"diag_reg must be >= 0, got {self.diag_reg}")


QUICK = dict(n_train=300, n_test=300, depths=(1, 2, 4, 8), fit_datasets=("iris", "wine"),
             fit_steps=15)

SMALL_DATASETS = ("digits", "iris", "wine", "breast_cancer")
#: the (σw, σb) grid the fitted hyperparameters are compared with
GRID_W = (1.0, 1.5, 2.0)
GRID_B = (0.0, 0.2, 0.5)


def rbf_baseline(ds, seed: int) -> tuple[float, float, dict]:
    """scikit-learn KernelRidge(kernel="rbf") with (alpha, gamma) by 3-fold CV on the training
    set; returns (test accuracy, test ½MSE, best parameters)."""
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.model_selection import GridSearchCV, KFold
    from threadpoolctl import threadpool_limits

    d = ds.x_train.shape[1]
    grid = {"alpha": [1e-3, 1e-2, 1e-1], "gamma": [g / d for g in (0.1, 0.3, 1.0, 3.0)]}
    search = GridSearchCV(KernelRidge(kernel="rbf"), grid,
                          cv=KFold(3, shuffle=True, random_state=seed),
                          scoring="neg_mean_squared_error")
    # one BLAS thread: these solves are small, and multi-threaded OpenBLAS on a busy 2-core
    # machine spends 100x longer waiting than computing
    with threadpool_limits(1, user_api="blas"):
        search.fit(ds.x_train.numpy(), ds.y_train.numpy())
        pred = torch.from_numpy(search.predict(ds.x_test.numpy()))
    loss = float(0.5 * ((pred - ds.y_test) ** 2).sum(1).mean())
    return ds.accuracy(pred), loss, search.best_params_


def kernels_by_depth(x: torch.Tensor, config: Config):
    """Yield (depth, Kernel of the net with that many hidden layers) for config.depths, in one
    pass: the depth-(L+1) recursion continues the depth-L one (docs/math.md §dense), so every hidden
    layer is applied once and each requested depth only adds its readout layer."""
    block = fc_net(1, 1, activation=config.activation, w_std=config.w_std, b_std=config.b_std)
    dense, act, readout = block.layers
    k = input_kernel(x, None, want_ntk=True)
    done = 0
    for depth in sorted(set(config.depths)):
        while done < depth:
            k = act.apply_kernel(dense.apply_kernel(k))
            done += 1
        yield depth, readout.apply_kernel(k)



def load_small(name: str, seed: int) -> Dataset:
    """A scikit-learn data set, standardized by the training statistics, stratified 2/3 : 1/3
    split (digits: 600 : 300, the fits' Cholesky stays small), centered one-hot targets."""
    import sklearn.datasets as skd
    from sklearn.model_selection import train_test_split

    if name == "digits":
        return load_digits(n_train=600, n_test=300, seed=seed)
    bunch = getattr(skd, f"load_{name}")()
    x_tr, x_te, l_tr, l_te = train_test_split(bunch.data, bunch.target, test_size=1 / 3,
                                              stratify=bunch.target, random_state=seed)
    x_tr, x_te = (torch.tensor(a, dtype=torch.float64) for a in (x_tr, x_te))
    mean, std = x_tr.mean(0), x_tr.std(0).clamp(min=1e-12)
    l_tr, l_te = (torch.tensor(a, dtype=torch.long) for a in (l_tr, l_te))
    k = int(bunch.target.max()) + 1
    return Dataset(name=name, x_train=(x_tr - mean) / std, y_train=one_hot_targets(l_tr, k),
                   x_test=(x_te - mean) / std, y_test=one_hot_targets(l_te, k),
                   labels_train=l_tr, labels_test=l_te)


def _gp_accuracy(net, ds: Dataset, kernel: str, diag_reg: float, absolute: bool) -> float:
    mean = predict.gp_inference(net.kernel(ds.x_train), ds.y_train,
                                net.kernel(ds.x_test, ds.x_train), kernel=kernel,
                                diag_reg=diag_reg, diag_reg_absolute=absolute).mean
    return ds.accuracy(mean)


def _grid_search(ds: Dataset, kernel: str, config: Config, seed: int) -> tuple[float, tuple]:
    """Test accuracy at the (σw, σb) of the grid with the best 3-fold CV accuracy."""
    from sklearn.model_selection import StratifiedKFold

    folds = list(StratifiedKFold(3, shuffle=True, random_state=seed).split(
        ds.x_train.numpy(), ds.labels_train.numpy()))
    best, best_cv = None, -1.0
    for w in GRID_W:
        for b in GRID_B:
            net = fc_net(1, config.fit_depth, activation=config.activation, w_std=w, b_std=b,
                         out=1)
            cv = 0.0
            for tr, va in folds:
                sub = Dataset(name=ds.name, x_train=ds.x_train[tr], y_train=ds.y_train[tr],
                              x_test=ds.x_train[va], y_test=ds.y_train[va],
                              labels_train=ds.labels_train[tr],
                              labels_test=ds.labels_train[va])
                cv += _gp_accuracy(net, sub, kernel, config.diag_reg, False) / len(folds)
            if cv > best_cv:
                best, best_cv = (w, b), cv
    net = fc_net(1, config.fit_depth, activation=config.activation, w_std=best[0],
                 b_std=best[1])
    return _gp_accuracy(net, ds, kernel, config.diag_reg, False), best


def fitted_comparison(config: Config) -> dict:
    """Per data set: test accuracies of NNGP/NTK with σ's fitted by marginal likelihood and
    grid-searched by CV, an RBF GP fitted by marginal likelihood, and a random forest."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    from threadpoolctl import threadpool_limits

    out = {}
    for name in config.fit_datasets:
        ds = load_small(name, config.seed)
        row = {"n_train": int(ds.x_train.shape[0]), "n_test": int(ds.x_test.shape[0])}
        start = fc_net(1, config.fit_depth, activation=config.activation, w_std=config.w_std,
                       b_std=config.b_std)
        for kernel in ("nngp", "ntk"):
            fit = predict.fit_hyperparameters(start, ds.x_train, ds.y_train, kernel=kernel,
                                              tied=True, noise=0.1, steps=config.fit_steps)
            row[f"{kernel}_fit"] = _gp_accuracy(fit.net, ds, kernel, fit.noise, True)
            row[f"{kernel}_fit_params"] = {"w_std": fit.hyperparameters["0.w_std"],
                                           "b_std": fit.hyperparameters["0.b_std"],
                                           "noise": fit.noise,
                                           "log_marginal_likelihood": fit.objective}
            row[f"{kernel}_grid"], params = _grid_search(ds, kernel, config, config.seed)
            row[f"{kernel}_grid_params"] = {"w_std": params[0], "b_std": params[1]}
        with threadpool_limits(1, user_api="blas"):
            gpr = GaussianProcessRegressor(
                ConstantKernel() * RBF(length_scale=float(ds.in_dim) ** 0.5) + WhiteKernel(0.1),
                random_state=config.seed).fit(ds.x_train.numpy(), ds.y_train.numpy())
            row["rbf_fit"] = ds.accuracy(torch.from_numpy(gpr.predict(ds.x_test.numpy())))
            row["rbf_fit_params"] = {"kernel": str(gpr.kernel_)}
            forest = RandomForestClassifier(n_estimators=200, random_state=config.seed,
                                            n_jobs=1).fit(ds.x_train.numpy(),
                                                          ds.labels_train.numpy())
            row["random_forest"] = float((torch.from_numpy(forest.predict(ds.x_test.numpy()))
                                          == ds.labels_test).double().mean())
        out[name] = row
    return out


def run(config: Config) -> Result:
    ds = load_digits(n_train=config.n_train, n_test=config.n_test, seed=config.seed)
    n = ds.x_train.shape[0]
    x_all = torch.cat([ds.x_train, ds.x_test])
    acc = {"ntk": [], "nngp": []}
    loss = {"ntk": [], "nngp": []}
    t0 = time.perf_counter()
    for depth, k in progress(kernels_by_depth(x_all, config), desc="depths",
                             total=len(config.depths)):
        del depth
        for name, mat in (("ntk", k.ntk), ("nngp", k.nngp)):
            # Lee et al. 2019: eq. 16 (NTK-GP at t = ∞) and eq. 13 (NNGP posterior mean)
            mean = predict.gp_inference(mat[:n, :n], ds.y_train, mat[n:, :n], kernel=name,
                                        diag_reg=config.diag_reg).mean
            acc[name].append(ds.accuracy(mean))
            loss[name].append(float(0.5 * ((mean - ds.y_test) ** 2).sum(1).mean()))
    t_kernels = time.perf_counter() - t0
    t0 = time.perf_counter()
    rbf_acc, rbf_loss, rbf_params = rbf_baseline(ds, config.seed)
    t_rbf = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted = fitted_comparison(config)
    t_fit = time.perf_counter() - t0
    best = {name: int(config.depths[int(np.argmax(acc[name]))]) for name in acc}
    metrics = {
        "rbf_test_accuracy": rbf_acc,
        "ntk_best_test_accuracy": max(acc["ntk"]), "ntk_best_depth": best["ntk"],
        "nngp_best_test_accuracy": max(acc["nngp"]), "nngp_best_depth": best["nngp"],
        "ntk_test_accuracy_by_depth": dict(zip(config.depths, acc["ntk"], strict=True)),
        "nngp_test_accuracy_by_depth": dict(zip(config.depths, acc["nngp"], strict=True)),
        "rbf_best_params": rbf_params,
        "fitted": fitted,
    }
    caption = (f"Digits, {n} training and {ds.x_test.shape[0]} test images, centered one-hot "
               f"targets. Kernel regression with the analytic NTK (the infinitely wide "
               f"{config.activation} net trained to convergence, eq. 16) and the NNGP (Bayesian "
               f"posterior, eq. 13) at each depth, against RBF kernel ridge tuned by "
               f"cross-validation. Best: NTK {max(acc['ntk']):.3f}, NNGP "
               f"{max(acc['nngp']):.3f}, RBF {rbf_acc:.3f}.")
    if fitted:
        caption += (f" Right: depth-{config.fit_depth} {config.activation} NNGP/NTK with σw, σb "
                    f"(tied) and the noise fitted by marginal likelihood, against the best "
                    f"grid point by 3-fold CV accuracy, an RBF GP with its length scale fitted "
                    f"by marginal likelihood, and a random forest.")
    data = {"depths": list(config.depths), "accuracy": acc, "loss": loss,
            "rbf": {"accuracy": rbf_acc, "loss": rbf_loss}, "fitted": fitted}
    return Result(figure=ID, config=config, data=data, metrics=metrics, caption=caption,
                  timings={"kernels_and_solves_s": round(t_kernels, 3),
                           "rbf_cv_s": round(t_rbf, 3), "fitted_comparison_s": round(t_fit, 3)})


def plot(result: Result, path) -> None:
    plt = pyplot()
    d = result.data
    fitted = d.get("fitted") or {}
    fig, axes = plt.subplots(1, 3 if fitted else 2, figsize=(16 if fitted else 10.5, 4),
                             layout="constrained")
    for ax, what, label in ((axes[0], "accuracy", "test accuracy"),
                            (axes[1], "loss", "test loss (½ MSE)")):
        ax.plot(d["depths"], d[what]["ntk"], "o-", color="k", label="NTK regression (eq. 16)")
        ax.plot(d["depths"], d[what]["nngp"], "s--", color="tab:red",
                label="NNGP posterior (eq. 13)")
        ax.axhline(d["rbf"][what], color="tab:blue", ls=":", lw=1.5,
                   label="RBF kernel ridge (CV)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(d["depths"], [str(v) for v in d["depths"]])
        ax.minorticks_off()
        ax.set_xlabel("depth (hidden layers)")
        ax.set_ylabel(label)
        ax.legend()
    axes[0].set_title("digits: accuracy against depth")
    axes[1].set_title("digits: loss against depth")
    if fitted:
        ax = axes[2]
        methods = [("nngp_fit", "NNGP, σ fitted (ML)"), ("nngp_grid", "NNGP, σ grid (CV)"),
                   ("ntk_fit", "NTK, σ fitted (ML)"), ("ntk_grid", "NTK, σ grid (CV)"),
                   ("rbf_fit", "RBF GP, fitted (ML)"), ("random_forest", "random forest")]
        names = list(fitted)
        width = 0.8 / len(methods)
        for j, (key, label) in enumerate(methods):
            ax.bar([i + (j - len(methods) / 2 + 0.5) * width for i in range(len(names))],
                   [fitted[n][key] for n in names], width, label=label)
        ax.set_xticks(range(len(names)), names)
        lo = min(fitted[n][k] for n in names for k, _ in methods)
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
        ax.set_ylabel("test accuracy")
        ax.set_title("fitted hyperparameters vs grid and baselines")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    save(fig, path)
