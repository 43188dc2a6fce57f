"""`lee-fig2`: an ensemble of trained finite networks against the NTK-GP and the NNGP along the
line between two training points (Lee et al. 2019, seed 002, Fig. 2; eqs. 14-15, S22-S23).

The paper trains 100 nets (3 hidden tanh layers of width 8192, σw² = 1.5, no bias, η = 0.5,
|D| = 128). The default here is the same architecture at a size this machine trains in about a
minute: erf (tanh-shaped, with a closed-form kernel), 3 hidden layers of width 256, 64 nets,
|D| = 32 points on the sphere in 8 dimensions with a smooth teacher target.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .. import predict
from ..data import interpolate, teacher_regression
from .base import ACTIVATION_HELP, Result, progress
from .common import ACTIVATIONS, fc_net, log_steps, train_ensemble
from .plotting import pyplot, save

ID = "lee-fig2"
TITLE = "Ensemble of trained nets vs NTK-GP vs NNGP between two training points (seed 002 Fig. 2)"
RUNTIME = "30 s"


@dataclass
class Config:
    """Options (`--set key=value`).

    Attributes:
        n_train, d: training set size and input dimension (teacher task on the sphere).
        depth, width, activation, w_std: the network (no bias, as in the paper).
        ensemble: number of independently initialized nets.
        steps: gradient-descent steps; lr_factor: η as a fraction of 2/λmax(Θ/n).
        n_line: points on the line x(α) = α x1 + (1 - α) x2.
        panels: number of training times shown (log-spaced, the last is `steps`).
        seed: data and initialization seed.
    """

    n_train: int = 32
    d: int = 8
    depth: int = 3
    width: int = 256
    activation: str = "erf"
    w_std: float = 1.5 ** 0.5
    ensemble: int = 64
    steps: int = 300
    lr_factor: float = 0.5
    n_line: int = 41
    panels: int = 4
    seed: int = 0

    def check(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(ACTIVATION_HELP.format(self.activation))
        if self.ensemble < 2 or self.n_train < 2 or self.steps < 1 or self.panels < 1:
            raise ValueError("ensemble and n_train must be >= 2, steps and panels >= 1")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor}")


QUICK = dict(depth=2, width=128, ensemble=32, steps=100, n_line=21, n_train=16)


def run(config: Config) -> Result:
    ds = teacher_regression(n_train=config.n_train, n_test=1, d=config.d, seed=config.seed)
    x, y = ds.x_train, ds.y_train
    n = x.shape[0]
    alphas, x_line = interpolate(x[0], x[1], config.n_line)
    net = fc_net(config.width, config.depth, activation=config.activation, w_std=config.w_std,
                 b_std=None, out=1)
    eta = config.lr_factor * n * predict.max_learning_rate(net.kernel(x, get="ntk"))
    steps = log_steps(config.steps, 50)
    shown = sorted({0, *[int(round(config.steps ** (i / max(1, config.panels - 1))))
                         for i in range(1, config.panels)], config.steps})[-config.panels:]
    steps = sorted(set(steps) | set(shown))

    t0 = time.perf_counter()
    models = [net.module((config.d,), seed=config.seed * 100_003 + e)
              for e in range(config.ensemble)]
    bar = progress(range(config.steps), desc="training ensemble", total=config.steps)
    it = iter(bar)
    outs = train_ensemble(models, x.float(), y.float(), learning_rate=eta, steps=config.steps,
                          record_at=steps, x_eval=x_line.float(), on_step=lambda s: next(it, None))
    t_train = time.perf_counter() - t0
    outs = outs[..., 0].double()                                   # (T, E, m)
    ens_mean = outs.mean(1)
    ens_std = outs.std(1)

    t0 = time.perf_counter()
    # Lee et al. 2019: eqs. 14-15 (all layers trained, "ntk") and S22-S23 (readout, "nngp");
    # our loss is (1/2n) Σ, wn.predict's ½ Σ, so the rate there is η/n.
    ens = predict.gradient_descent_mse_ensemble(net, x, y, learning_rate=eta / n,
                                                discrete=True)
    t_all = torch.tensor(steps, dtype=torch.float64)
    gp = {}
    for kernel in ("ntk", "nngp"):
        g = ens(t_all, x_line, kernel=kernel, compute_cov=True)
        var = g.covariance.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)
        gp[kernel] = {"mean": g.mean.reshape(len(steps), -1), "std": var.sqrt()}
    t_pred = time.perf_counter() - t0

    # Discrepancies of the trained ensemble from each GP, averaged over α and over the recorded
    # times after step 0 (where all three are the same prior), in units of the NTK-GP's σ.
    later = slice(1, None)
    sig = gp["ntk"]["std"][later].mean(-1, keepdim=True)             # (T-1, 1)
    metrics = {"learning_rate": eta}
    for kernel in ("ntk", "nngp"):
        mean_err = ((ens_mean[later] - gp[kernel]["mean"][later]).abs() / sig).mean()
        std_err = ((ens_std[later] - gp[kernel]["std"][later]).abs() / sig).mean()
        metrics[f"mean_error_vs_{kernel}"] = float(mean_err)
        metrics[f"std_error_vs_{kernel}"] = float(std_err)
    # sampling error of the ensemble: σ/√E for the mean, about σ/√(2E) for the std
    metrics["ensemble_sampling_error"] = 1 / math.sqrt(config.ensemble)
    metrics["std_ratio_final_ensemble_to_ntk_gp"] = float(
        ens_std[-1].mean() / gp["ntk"]["std"][-1].mean())
    caption = (f"{config.ensemble} nets ({config.depth} hidden {config.activation} layers of "
               f"width {config.width}, σw²={config.w_std ** 2:.3g}, no bias) trained by "
               f"full-batch GD (η={eta:.3g}) on {n} points; outputs on the line "
               f"x(α) = α x1 + (1-α) x2 between two training points. Black: ensemble mean and "
               f"±2σ; blue: NTK-GP (eqs. 14-15); red: NNGP / readout-only training. The "
               f"ensemble follows the NTK-GP, not the NNGP.")
    data = {"alphas": alphas, "steps": steps, "shown": shown, "ens_mean": ens_mean,
            "ens_std": ens_std, "gp": gp, "y_ends": (float(y[0, 0]), float(y[1, 0]))}
    return Result(figure=ID, config=config, data=data, metrics=metrics, caption=caption,
                  timings={"train_s": round(t_train, 3), "predict_s": round(t_pred, 3)})


def plot(result: Result, path) -> None:
    plt = pyplot()
    d = result.data
    a = d["alphas"].numpy()
    shown = d["shown"]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.6), sharey=True,
                             layout="constrained", squeeze=False)
    for ax, step in zip(axes[0], shown, strict=True):
        i = d["steps"].index(step)
        for kernel, color, label in (("nngp", "tab:red", "NNGP (readout only)"),
                                     ("ntk", "tab:blue", "NTK-GP (eqs. 14-15)")):
            mu = d["gp"][kernel]["mean"][i].numpy()
            sd = d["gp"][kernel]["std"][i].numpy()
            ax.fill_between(a, mu - 2 * sd, mu + 2 * sd, color=color, alpha=0.22)
            ax.plot(a, mu, color=color, lw=1.5, label=f"{label} mean ± 2σ")
        mu, sd = d["ens_mean"][i].numpy(), d["ens_std"][i].numpy()
        ax.plot(a, mu, "k-", lw=1.5, label="trained ensemble mean")
        ax.plot(a, mu + 2 * sd, "k:", lw=1.2, label="trained ensemble ± 2σ")
        ax.plot(a, mu - 2 * sd, "k:", lw=1.2)
        ax.plot([1.0, 0.0], d["y_ends"], "ko", ms=6, label="training points")
        ax.set_title(f"after {step} steps")
        ax.set_xlabel("α  (x = α x₁ + (1 - α) x₂)")
    axes[0][0].set_ylabel("network output f(x(α))")
    axes[0][-1].legend(loc="best", fontsize=7)
    save(fig, path)
