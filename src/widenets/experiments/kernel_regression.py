"""`kernel-regression`: NTK and NNGP kernel regression on digits against depth, with a
scikit-learn RBF kernel ridge baseline.

The infinitely wide net trained to convergence on MSE is kernel regression with its NTK
(Lee et al. 2019, eq. 16); Bayesian inference with the infinitely wide net is regression with its
NNGP (eq. 13). Both are compared, over depth, with an RBF kernel ridge regression whose γ and
ridge are chosen by 3-fold cross-validation on the training set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import predict
from ..data import load_digits
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
    """

    n_train: int = 1000
    n_test: int = 797
    depths: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # sorted, distinct
    activation: str = "relu"
    w_std: float = 2 ** 0.5
    b_std: float = 0.1
    diag_reg: float = 1e-4
    seed: int = 0

    def check(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(ACTIVATION_HELP.format(self.activation))
        if not self.depths or min(self.depths) < 1 or list(self.depths) != sorted(
                set(self.depths)):
            raise ValueError(f"depths must be increasing positive ints, got {self.depths}")
        if self.diag_reg < 0:
            raise ValueError(f"diag_reg must be >= 0, got {self.diag_reg}")


QUICK = dict(n_train=300, n_test=300, depths=(1, 2, 4, 8))


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
    best = {name: int(config.depths[int(np.argmax(acc[name]))]) for name in acc}
    metrics = {
        "rbf_test_accuracy": rbf_acc,
        "ntk_best_test_accuracy": max(acc["ntk"]), "ntk_best_depth": best["ntk"],
        "nngp_best_test_accuracy": max(acc["nngp"]), "nngp_best_depth": best["nngp"],
        "ntk_test_accuracy_by_depth": dict(zip(config.depths, acc["ntk"], strict=True)),
        "nngp_test_accuracy_by_depth": dict(zip(config.depths, acc["nngp"], strict=True)),
        "rbf_best_params": rbf_params,
    }
    caption = (f"Digits, {n} training and {ds.x_test.shape[0]} test images, centered one-hot "
               f"targets. Kernel regression with the analytic NTK (the infinitely wide "
               f"{config.activation} net trained to convergence, eq. 16) and the NNGP (Bayesian "
               f"posterior, eq. 13) at each depth, against RBF kernel ridge tuned by "
               f"cross-validation. Best: NTK {max(acc['ntk']):.3f}, NNGP "
               f"{max(acc['nngp']):.3f}, RBF {rbf_acc:.3f}.")
    data = {"depths": list(config.depths), "accuracy": acc, "loss": loss,
            "rbf": {"accuracy": rbf_acc, "loss": rbf_loss}}
    return Result(figure=ID, config=config, data=data, metrics=metrics, caption=caption,
                  timings={"kernels_and_solves_s": round(t_kernels, 3),
                           "rbf_cv_s": round(t_rbf, 3)})


def plot(result: Result, path) -> None:
    plt = pyplot()
    d = result.data
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4), layout="constrained")
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
    save(fig, path)
