"""`lee-s5`: the test RMSE between a trained network and its trained linearization decreases with
the width and grows with the size of the training set (Lee et al. 2019, seed 002, §3 "Effects of
dataset size" and Fig. S5).

Fully connected ReLU nets (NTK parameterization) on scikit-learn's digits (10 classes, centered
one-hot targets), trained side by side with their `wn.linearize` twin by the same full-batch
gradient descent (optionally with momentum) on ½ mean ||f - y||², for a fixed number of steps at
a learning rate set once from the analytic NTK of the largest training set. The table is the
RMSE of the test outputs of the two models at the end of training, averaged geometrically over
seeds; the trends are least-squares fits of log RMSE on log width and on log |D| (one slope per
row/column, then their mean, and the interval over seeds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import predict
from ..data import load_digits
from .base import Result, fit_slope, progress
from .common import fc_net
from .pair_training import train_pair
from .plotting import pyplot, save

ID = "lee-s5"
TITLE = "RMSE between network and linearization over widths and training-set sizes (seed 002 " \
        "Fig. S5)"
RUNTIME = "4 min"


@dataclass
class Config:
    """Options (`--set key=value`).

    Attributes:
        widths: hidden widths; n_trains: training-set sizes |D|; n_test: test digits.
        depth: hidden layers (ReLU, σw² = 2, σb² = 0.1).
        steps: full-batch GD steps; lr_factor: η as a fraction of 2/λmax(Θ/|D|) of the analytic
            NTK on the largest training set; momentum: heavy-ball β (0: plain GD).
        seeds: initializations (each with its own data split).
    """

    widths: tuple[int, ...] = (64, 128, 256, 512)
    n_trains: tuple[int, ...] = (32, 64, 128, 256)
    n_test: int = 128
    depth: int = 2
    steps: int = 150
    lr_factor: float = 0.5
    momentum: float = 0.0
    seeds: tuple[int, ...] = (0, 1)
    seed: int = 0

    def check(self) -> None:
        if len(self.widths) < 2 or len(self.n_trains) < 2 or not self.seeds:
            raise ValueError("need two or more widths and training-set sizes and one seed")
        if min(self.widths) < 1 or min(self.n_trains) < 2 or self.steps < 1 or self.depth < 1:
            raise ValueError("widths >= 1, n_trains >= 2, steps >= 1, depth >= 1")
        if not 0 < self.lr_factor < 1 or not 0 <= self.momentum < 1:
            raise ValueError("lr_factor in (0, 1) and momentum in [0, 1)")
        if max(self.n_trains) + self.n_test > 1797:
            raise ValueError("max(n_trains) + n_test must be at most 1797 (the digits)")


QUICK = dict(widths=(64, 256), n_trains=(16, 64), n_test=64, depth=1, steps=40,
             seeds=(0, 1))


def run(config: Config) -> Result:
    nw, nn_ = len(config.widths), len(config.n_trains)
    rmse = np.zeros((len(config.seeds), nw, nn_))
    t0 = time.perf_counter()
    n_max = max(config.n_trains)
    probe = load_digits(n_train=n_max, n_test=config.n_test, seed=config.seed)
    arch = fc_net(64, config.depth, w_std=2 ** 0.5, b_std=0.1 ** 0.5, out=10)
    theta = arch.kernel(probe.x_train, get="ntk")
    # loss ½ mean ||f - y||²: the linearized dynamics has rate η/|D| Θ (seed 002 eq. 9)
    eta = config.lr_factor * n_max * predict.max_learning_rate(theta, momentum=config.momentum)
    jobs = [(s, i, j) for s in range(len(config.seeds)) for i in range(nw) for j in range(nn_)]
    for s, i, j in progress(jobs, desc="seeds x widths x sizes", total=len(jobs)):
        seed, width, n = config.seeds[s], config.widths[i], config.n_trains[j]
        ds = load_digits(n_train=n, n_test=config.n_test, seed=seed)
        data = {"x_train": ds.x_train, "y_train": ds.y_train, "labels_train": ds.labels_train,
                "x_test": ds.x_test, "y_test": ds.y_test, "labels_test": ds.labels_test}
        net = fc_net(width, config.depth, w_std=2 ** 0.5, b_std=0.1 ** 0.5, out=10)
        model = net.module((64,), seed=1000 * seed + i, dtype=torch.float64)
        rec = train_pair(model, data, loss="mse", learning_rate=eta,
                         momentum=config.momentum, batch_size=n, steps=config.steps,
                         record_at=[config.steps], seed=seed, func=ID)
        fin = rec.test_logits_final
        rmse[s, i, j] = float((fin["network"] - fin["linearized"]).pow(2).mean().sqrt())
    t_all = time.perf_counter() - t0
    mean = np.exp(np.log(rmse).mean(0))
    w, n = np.asarray(config.widths, float), np.asarray(config.n_trains, float)

    def slopes(table):
        sw = [fit_slope(w, table[:, j]) for j in range(nn_)]     # per training-set size
        sn = [fit_slope(n, table[i, :]) for i in range(nw)]      # per width
        return float(np.mean(sw)), float(np.mean(sn))

    per_seed = np.array([slopes(rmse[s]) for s in range(len(config.seeds))])
    sw, sn = slopes(mean)
    metrics = {
        "slope_rmse_vs_width": sw,
        "slope_rmse_vs_n_train": sn,
        "slope_rmse_vs_width_per_seed": [float(v) for v in per_seed[:, 0]],
        "slope_rmse_vs_n_train_per_seed": [float(v) for v in per_seed[:, 1]],
        "rmse_narrowest_largest": float(mean[0, -1]),
        "rmse_widest_smallest": float(mean[-1, 0]),
        "learning_rate": eta,
    }
    caption = (f"Test RMSE between {config.depth}-hidden-layer ReLU nets and their "
               f"linearizations after {config.steps} steps of full-batch GD (η = {eta:.3g}, "
               f"β = {config.momentum:g}) on digits, geometric mean over "
               f"{len(config.seeds)} seeds. Fitted trends: RMSE ∝ width^{sw:.2f} and "
               f"∝ |D|^{sn:.2f}; the paper: the error decreases with width and grows with the "
               f"size of the dataset.")
    data = {"widths": list(config.widths), "n_trains": list(config.n_trains), "rmse": rmse}
    return Result(figure=ID, config=config, data=data, metrics=metrics, caption=caption,
                  timings={"train_s": round(t_all, 3)})


def plot(result: Result, path) -> None:
    plt = pyplot()
    d = result.data
    rmse = np.asarray(d["rmse"], dtype=float)
    mean = np.exp(np.log(rmse).mean(0))
    w, n = d["widths"], d["n_trains"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    im = axes[0].imshow(np.log10(mean), origin="lower", cmap="viridis", aspect="auto")
    for i in range(len(w)):
        for j in range(len(n)):
            bright = np.log10(mean[i, j]) > np.log10(mean).mean()
            axes[0].text(j, i, f"{mean[i, j]:.2g}", ha="center", va="center", fontsize=8,
                         color="k" if bright else "w")
    axes[0].set_xticks(range(len(n)), [str(v) for v in n])
    axes[0].set_yticks(range(len(w)), [str(v) for v in w])
    axes[0].set_xlabel("training-set size |D|")
    axes[0].set_ylabel("width")
    axes[0].set_title("test RMSE(network, linearized)")
    axes[0].grid(False)
    fig.colorbar(im, ax=axes[0], label="log10 RMSE")
    cw = plt.cm.viridis(np.linspace(0, 0.9, len(n)))
    for j, c in enumerate(cw):
        axes[1].loglog(w, mean[:, j], "o-", color=c, label=f"|D| = {n[j]}")
    axes[1].set_xlabel("width")
    axes[1].set_title(f"against width (mean slope {result.metrics['slope_rmse_vs_width']:.2f})")
    cn = plt.cm.plasma(np.linspace(0, 0.9, len(w)))
    for i, c in enumerate(cn):
        axes[2].loglog(n, mean[i, :], "o-", color=c, label=f"width {w[i]}")
    axes[2].set_xlabel("training-set size |D|")
    axes[2].set_title(f"against |D| (mean slope "
                      f"{result.metrics['slope_rmse_vs_n_train']:.2f})")
    for ax in axes[1:]:
        ax.set_ylabel("test RMSE(network, linearized)")
        ax.legend(fontsize=8)
    save(fig, path)
