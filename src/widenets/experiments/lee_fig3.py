"""`lee-fig3`: a finite network under full-batch gradient descent against its linearization:
outputs, individual weights, losses, and the distance between the two (Lee et al. 2019, seed 002,
Fig. 3; eqs. 8-11).

The paper: binary CIFAR, 5 hidden ReLU layers of width 2048, |D| = 256, σw² = 2, σb² = 0.1.
Here: a binary digits task (digit < 5 against >= 5, targets ±1), 3 hidden ReLU layers of width
512, |D| = 128. Three predictions of the trained net: the linearized model trained by the same
GD (wn.linearize), its closed form with the empirical NTK Θ̂₀ (eqs. 9-11, wn.predict), and the
closed form with the analytic, infinite-width NTK Θ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import predict
from ..data import load_digits
from ..empirical import empirical_ntk, linearize
from .base import ACTIVATION_HELP, Result, progress
from .common import ACTIVATIONS, fc_net, log_steps
from .plotting import pyplot, save

ID = "lee-fig3"
TITLE = "A finite net under gradient descent vs its linearization (seed 002 Fig. 3)"
RUNTIME = "40 s"


@dataclass
class Config:
    """Options (`--set key=value`).

    Attributes:
        n_train, n_test: digits used (binary task: digit < 5 vs >= 5, targets ±1).
        depth, width, activation, w_std, b_std: the network.
        steps: full-batch GD steps; lr_factor: η as a fraction of 2/λmax(Θ̂₀/n).
        n_shown: outputs and weights drawn in the first two panels.
        seed: data and initialization seed.
    """

    n_train: int = 128
    n_test: int = 128
    depth: int = 3
    width: int = 512
    activation: str = "relu"
    w_std: float = 2 ** 0.5
    b_std: float = 0.1 ** 0.5
    steps: int = 500
    lr_factor: float = 0.5
    n_shown: int = 4
    seed: int = 0

    def check(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(ACTIVATION_HELP.format(self.activation))
        if not 0 < self.lr_factor < 1 or self.steps < 1 or self.width < 1 or self.depth < 1:
            raise ValueError("lr_factor in (0, 1); steps, width, depth >= 1")


QUICK = dict(n_train=48, n_test=48, depth=2, width=256, steps=150)


def _binary_digits(config: Config):
    ds = load_digits(n_train=config.n_train, n_test=config.n_test, seed=config.seed)
    to_pm = lambda lab: (2.0 * (lab >= 5).double() - 1.0)[:, None]  # noqa: E731
    return ds.x_train, to_pm(ds.labels_train), ds.x_test, to_pm(ds.labels_test)


def _gd(model, x, y, x_test, *, eta, steps, record_at, pick):
    """Full-batch GD on (1/2n) Σ (f - y)²; records outputs and the picked weight entries."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=eta)
    want = set(record_at)
    rec = {"train": [], "test": [], "weights": []}
    for step in range(steps + 1):
        if step in want:
            with torch.no_grad():
                rec["train"].append(model(x).detach().clone())
                rec["test"].append(model(x_test).detach().clone())
                rec["weights"].append(pick(model).detach().clone())
            if not torch.isfinite(rec["train"][-1]).all():
                raise FloatingPointError(f"lee-fig3: training diverged at step {step}; lower "
                                         f"lr_factor")
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((model(x) - y) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
    return {k: torch.stack(v) for k, v in rec.items()}


def run(config: Config) -> Result:
    x, y, x_test, y_test = _binary_digits(config)
    n = x.shape[0]
    net = fc_net(config.width, config.depth, activation=config.activation, w_std=config.w_std,
                 b_std=config.b_std, out=1)
    model = net.module((x.shape[1],), seed=config.seed, dtype=torch.float64)
    lin = linearize(model)
    t0 = time.perf_counter()
    theta_hat = empirical_ntk(model, x).detach()
    theta_hat_test = empirical_ntk(model, x_test, x).detach()
    k_inf = net.kernel(torch.cat([x, x_test]), get="ntk")
    t_ntk = time.perf_counter() - t0
    eta = config.lr_factor * n * predict.max_learning_rate(theta_hat)   # loss (1/2n) Σ r²
    steps = log_steps(config.steps, 40)

    # the same randomly chosen entries of the (hidden, if any) weight matrix in both models
    names = [k for k, _ in model.named_parameters() if k.endswith("weight")]
    wname = names[1] if len(names) > 2 else names[0]
    shape = dict(model.named_parameters())[wname].shape
    g = torch.Generator().manual_seed(config.seed)
    flat_idx = torch.randperm(int(np.prod(shape)), generator=g)[:config.n_shown]
    lin_index = lin.names.index(wname)

    def pick_model(m):
        return dict(m.named_parameters())[wname].reshape(-1)[flat_idx]

    def pick_lin(m):
        return m.params[lin_index].reshape(-1)[flat_idx]

    with torch.no_grad():
        f0, f0_test = model(x).detach(), model(x_test).detach()
    t0 = time.perf_counter()
    runs = {}
    for name, m, pick in progress((("network", model, pick_model),
                                   ("linearized", lin, pick_lin)), desc="training", total=2):
        runs[name] = _gd(m, x, y, x_test, eta=eta, steps=config.steps, record_at=steps,
                         pick=pick)
    t_train = time.perf_counter() - t0
    t_all = torch.tensor(steps, dtype=torch.float64)
    # Lee et al. 2019, eqs. 9-11 in discrete time; the rate is η/n for wn.predict's ½ Σ loss.
    closed = {}
    for name, (k_tt, k_st) in (("empirical Θ̂₀", (theta_hat, theta_hat_test)),
                               ("analytic Θ", (k_inf[:n, :n], k_inf[n:, :n]))):
        gd = predict.gradient_descent_mse(k_tt, y, learning_rate=eta / n, discrete=True)
        tr, te = gd(t_all, f0, f0_test, k_st)
        closed[name] = {"train": tr, "test": te}

    def loss(f, target):
        return (0.5 * ((f - target) ** 2).sum(-1).mean(-1)).numpy()

    def rmse(a, b):
        return ((a - b) ** 2).mean((-1, -2)).sqrt().numpy()

    net_test = runs["network"]["test"]
    scale = float(net_test[-1].pow(2).mean().sqrt())
    rmse_curves = {"linearized (trained)": rmse(runs["linearized"]["test"], net_test),
                   **{f"closed form, {k}": rmse(v["test"], net_test) for k, v in closed.items()}}
    metrics = {
        "learning_rate": eta,
        "test_output_rms_final": scale,
        "rmse_network_vs_linearized_max": float(rmse_curves["linearized (trained)"].max()),
        "rmse_network_vs_empirical_closed_form_max": float(
            rmse_curves["closed form, empirical Θ̂₀"].max()),
        "rmse_network_vs_analytic_closed_form_max": float(
            rmse_curves["closed form, analytic Θ"].max()),
        "rmse_linearized_trained_vs_closed_form_max": float(
            rmse(runs["linearized"]["test"], closed["empirical Θ̂₀"]["test"]).max()),
        "train_loss_final_network": float(loss(runs["network"]["train"][-1], y)),
        "train_loss_final_linearized": float(loss(runs["linearized"]["train"][-1], y)),
        "test_loss_final_network": float(loss(net_test[-1], y_test)),
        "test_loss_final_linearized": float(loss(runs["linearized"]["test"][-1], y_test)),
        "weight_rms_gap_over_rms_change": float(
            (runs["network"]["weights"] - runs["linearized"]["weights"]).pow(2).mean().sqrt()
            / (runs["network"]["weights"] - runs["network"]["weights"][0]).pow(2).mean()
            .sqrt().clamp_min(1e-30)),
    }
    caption = (f"One {config.depth}-hidden-layer {config.activation} net of width "
               f"{config.width} trained by full-batch GD (η={eta:.3g}) on {n} digits (binary: "
               f"digit < 5 vs >= 5), and its linearization trained the same way. Outputs, "
               f"individual weights and losses agree; the closed form with the empirical NTK Θ̂₀ "
               f"tracks the network better than the one with the analytic Θ.")
    data = {"steps": steps, "runs": runs, "closed": closed, "rmse": rmse_curves,
            "y": y, "y_test": y_test, "losses": {
                name: {"train": loss(r["train"], y), "test": loss(r["test"], y_test)}
                for name, r in runs.items()}, "weight_name": wname}
    return Result(figure=ID, config=config, data=data, metrics=metrics, caption=caption,
                  timings={"ntk_s": round(t_ntk, 3), "train_s": round(t_train, 3)})


def plot(result: Result, path) -> None:
    plt = pyplot()
    d = result.data
    s = np.maximum(np.asarray(d["steps"], dtype=float), 0.8)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.9), layout="constrained")
    colors = plt.cm.tab10(np.arange(10))
    k = d["runs"]["network"]["weights"].shape[1]
    for i in range(k):
        axes[0].plot(s, d["runs"]["network"]["test"][:, i, 0], "-", color=colors[i], lw=1.6)
        axes[0].plot(s, d["runs"]["linearized"]["test"][:, i, 0], "--", color="k", lw=1.0)
        w_net, w_lin = d["runs"]["network"]["weights"], d["runs"]["linearized"]["weights"]
        axes[1].plot(s, w_net[:, i] - w_net[0, i], "-", color=colors[i], lw=1.6)
        axes[1].plot(s, w_lin[:, i] - w_lin[0, i], "--", color="k", lw=1.0)
    for ax in axes[:2]:
        ax.plot([], [], "-", color="gray", label="network")
        ax.plot([], [], "--", color="k", label="linearized")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("output f(x) on test inputs")
    axes[0].set_title("outputs")
    axes[1].set_ylabel(f"change of entries of {d['weight_name']}, w_t - w_0")
    axes[1].set_title("individual weights")
    for name, style in (("network", "-"), ("linearized", "--")):
        axes[2].plot(s, d["losses"][name]["train"], style, color="tab:blue", label=f"{name}, train")
        axes[2].plot(s, d["losses"][name]["test"], style, color="tab:orange", label=f"{name}, test")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("loss (½ MSE)")
    axes[2].set_title("loss")
    axes[2].legend(fontsize=8)
    styles = (("k", "-", 2.5), ("tab:green", "--", 1.5), ("tab:red", "-", 1.5))
    for (name, curve), (c, ls, lw) in zip(d["rmse"].items(), styles, strict=True):
        axes[3].plot(s[1:], curve[1:], color=c, ls=ls, lw=lw, label=name)  # step 0: all equal
    axes[3].set_yscale("log")
    axes[3].set_ylabel("RMSE vs network, test outputs")
    axes[3].set_title("distance from the trained network")
    axes[3].legend(fontsize=8)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("gradient-descent step")
    save(fig, path)
