"""`lee-fig1`: relative change of weights, of the empirical NTK Θ and of the NNGP K during
training, against width (Lee et al. 2019, seed 002, Fig. 1; docs/math.md §laziness).

The paper: 3 hidden-layer ReLU nets, η = 1.0, |D| = 128 MNIST images, T = 2¹⁷ steps; input and
output weights move like 1/√n, intermediate weights like 1/n, Θ and K between 1/√n and 1/n
(closer to 1/n). Here: 128 scikit-learn digits, η at half the largest stable rate of the
analytic NTK, a few hundred full-batch steps, slopes with 95% intervals from several seeds.

Paper scale (`--set steps=131072`): full-batch GD on 128 points converges geometrically (the
slowest NTK mode contracts by 1 − λ_min/λ_max ≈ 1 − 1/240 per step at this η), so long before
2¹⁷ steps the weights stop moving. Training runs in chunks of `chunk` steps; after each chunk
the movement m_j = ‖θ_j − θ_{j−1}‖ of every weight tensor and its contraction ρ = m_j / m_{j−1}
bound everything the remaining steps can add: Σ_{i>j} m_i ≤ m_j ρ / (1 − ρ). Once that bound is
below `tol` times the tensor's total change ‖W_T − W_0‖ (for every tensor, with ρ < 1 over two
consecutive chunks), the remaining steps are skipped: the reported changes are those of
`steps` steps within a relative `tol`. `tol=0` runs every step. Measured at 2¹⁷ steps: widths
128-1024 contract geometrically (width 128 stops after 15,600-23,000 steps); at width 64
the movement decays like a power law and every step runs. All seeds of a width train at once
(`StackedMLP`); a step costs its float64 matrix products, about 2x their bare time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import finite_width as fw
from .. import predict
from ..data import load_digits
from ..empirical import empirical_ntk
from .base import ACTIVATION_HELP, Result, progress
from .common import ACTIVATIONS, fc_net
from .plotting import pyplot, save
from .stacked_mlp import StackedMLP

ID = "lee-fig1"
TITLE = "Relative change of weights, NTK and NNGP during training against width (seed 002 Fig. 1)"
RUNTIME = "2 min"

_log = logging.getLogger(__name__)

QUANTITIES = ("input weights", "hidden weights", "output weights", "NTK Θ", "NNGP K")


@dataclass
class Config:
    """Options (`--set key=value`).

    Attributes:
        n_train: digits used for training (the paper: 128).
        depth, activation, w_std, b_std: the network (3 hidden ReLU layers, σw² = 2, σb² = 0.1
            is close to the paper's).
        widths: widths of the sweep; seeds: initializations per width (slope intervals).
        steps: full-batch GD steps; lr_factor: η as a fraction of 2/λmax(Θ/n).
        chunk, tol: convergence stop (module docstring): check every `chunk` steps, stop when
            the remaining steps can change any weight tensor by less than `tol` of its change.
        seed: data split seed.
    """

    n_train: int = 128
    depth: int = 3
    activation: str = "relu"
    w_std: float = 2 ** 0.5
    b_std: float = 0.1 ** 0.5
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300
    lr_factor: float = 0.5
    chunk: int = 256
    tol: float = 1e-4
    seed: int = 0

    def check(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(ACTIVATION_HELP.format(self.activation))
        if len(self.widths) < 2 or min(self.widths) < 2:
            raise ValueError(f"widths needs at least two widths >= 2, got {self.widths}")
        if self.depth < 2:
            raise ValueError("depth must be >= 2 (hidden weights need a hidden-to-hidden layer)")
        if not 0 < self.lr_factor < 1 or self.steps < 1 or not self.seeds:
            raise ValueError("lr_factor in (0, 1), steps >= 1 and at least one seed")
        if self.chunk < 1 or not 0 <= self.tol < 1:
            raise ValueError("chunk >= 1 and tol in [0, 1)")


QUICK = dict(depth=2, widths=(32, 64, 128, 256), seeds=(0, 1), steps=40, n_train=32)


def run(config: Config) -> Result:
    ds = load_digits(n_train=config.n_train, n_test=10, seed=config.seed)
    x, y = ds.x_train, ds.y_train
    n, k_out = x.shape[0], y.shape[1]

    def build(width: int, seed: int):
        net = fc_net(width, config.depth, activation=config.activation, w_std=config.w_std,
                     b_std=config.b_std, out=k_out)
        return net.module((ds.in_dim,), seed=seed, dtype=torch.float64)

    theta = fc_net(1, config.depth, activation=config.activation, w_std=config.w_std,
                   b_std=config.b_std).kernel(x, get="ntk")
    eta = config.lr_factor * n * predict.max_learning_rate(theta)   # loss (1/2n) Σ ||r||²
    names = [k for k, _ in build(2, 0).named_parameters() if k.endswith("weight")]
    bar = iter(progress(range(len(config.widths)), desc="widths", total=len(config.widths)))

    def kernels(model):
        # Θ by wn.empirical_ntk ("auto": layer-wise Gram products, no Jacobian in memory)
        return (empirical_ntk(model, x).detach(),
                fw.train(model, x, y, learning_rate=eta, steps=0, record=("nngp",)).nngp[0])

    table = {}
    t0 = time.perf_counter()
    for width in config.widths:
        # every seed of one width trained at once: one stacked GD (docs of StackedMLP)
        models = [build(width, s) for s in config.seeds]
        before = [kernels(m) for m in models]
        t_w = time.perf_counter()
        w0, wt, losses, stopped = _train_to(StackedMLP(models), x, y, eta, config)
        t_w = time.perf_counter() - t_w
        for i, (seed, model) in enumerate(zip(config.seeds, models, strict=True)):
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(wt[i][name])
            (theta0, k0), (theta_t, k_t) = before[i], kernels(model)
            rel = {k: float((wt[i][k] - w0[i][k]).norm() / w0[i][k].norm()) for k in names}
            table[width, seed] = {
                "input weights": rel[names[0]],
                "hidden weights": float(np.mean([rel[k] for k in names[1:-1]])),
                "output weights": rel[names[-1]],
                "NTK Θ": float((theta_t - theta0).norm() / theta0.norm()),
                "NNGP K": float((k_t - k0).norm() / k0.norm()),
                "final loss": losses[i], "steps run": float(stopped[i])}
        _log.info("lee-fig1: width %d trained in %.1f s (steps run %s): %s", width, t_w,
                  stopped, {q: [round(table[width, s][q], 5) for s in config.seeds]
                            for q in QUANTITIES})
        next(bar, None)
    t_sweep = time.perf_counter() - t0
    # the measurements are taken above; width_sweep only collects them and fits the slopes
    sweep = fw.width_sweep(lambda w, s: table[w, s], config.widths, measure=lambda row: row,
                           seeds=config.seeds)
    metrics = {"learning_rate": eta}
    for q in QUANTITIES:
        metrics[f"slope {q}"] = sweep.slope[q]
        metrics[f"slope {q} 95% CI"] = tuple(float(c) for c in sweep.ci[q])
    metrics["final loss (widest)"] = float(sweep.values["final loss"][:, -1].mean())
    run_steps = sweep.values["steps run"]
    metrics["steps run (min, max)"] = (int(run_steps.min()), int(run_steps.max()))
    caption = (f"{config.depth}-hidden-layer {config.activation} nets trained by full-batch GD "
               f"(η={eta:.3g}, {config.steps} steps) on {n} digits. Relative Frobenius change "
               f"‖W_T − W_0‖/‖W_0‖ and ‖Θ_T − Θ_0‖/‖Θ_0‖ against width, mean over "
               f"{len(config.seeds)} seeds, with fitted log-log slopes. The paper: input/output "
               f"weights ~ n^-1/2, hidden weights ~ n^-1, Θ and K in between, closer to n^-1.")
    data = {"widths": list(config.widths),
            "values": {q: sweep.values[q] for q in (*QUANTITIES, "final loss", "steps run")},
            "slope": {q: sweep.slope[q] for q in QUANTITIES}}
    return Result(figure=ID, config=config, data=data, metrics=metrics, caption=caption,
                  timings={"sweep_s": round(t_sweep, 3)})


def _train_to(stack: StackedMLP, x, y, eta: float, config: Config):
    """Full-batch GD of every member of `stack` for config.steps steps, in chunks, each member
    stopped once converged (module docstring); converged members leave the stack.

    Returns (initial parameters, final parameters, final losses, steps run), one entry per
    member in the stack's order; parameters as {name: tensor} dicts named as in the modules.
    """
    members = stack.members
    w0 = [{k: v.clone() for k, v in stack.parameters(e).items()} for e in range(members)]
    prev = [dict(w) for w in w0]
    last_move: list = [None] * members
    final: list = [None] * members
    losses, stopped = [float("nan")] * members, [0] * members
    active = list(range(members))           # original index of each member still in the stack
    done = 0
    while active:
        k = min(config.chunk, config.steps - done)
        for _ in range(k):
            stack.step(x, y, learning_rate=eta)
        done += k
        with torch.no_grad():
            loss = (0.5 * ((stack.forward(x) - y) ** 2).sum(-1).mean(-1)).tolist()
        keep = []
        for pos, e in enumerate(active):
            if not np.isfinite(loss[pos]):
                raise FloatingPointError(f"lee-fig1: GD diverged by step {done}; "
                                         "lower lr_factor")
            now = {name: v.clone() for name, v in stack.parameters(pos).items()}
            move = {name: float((now[name] - prev[e][name]).norm()) for name in now}
            converged = done >= config.steps
            if config.tol > 0 and last_move[e] is not None and not converged:
                converged = True
                for name in now:
                    rho = move[name] / last_move[e][name] if last_move[e][name] > 0 else 0.0
                    total = float((now[name] - w0[e][name]).norm())
                    tail = move[name] * rho / (1 - rho) if rho < 1 else float("inf")
                    converged &= tail <= config.tol * total
            if converged:
                final[e], losses[e], stopped[e] = now, loss[pos], done
            else:
                keep.append(pos)
                prev[e], last_move[e] = now, move
        if len(keep) < len(active):
            active = [active[pos] for pos in keep]
            if keep:
                stack.select(keep)
    return w0, final, losses, stopped


def plot(result: Result, path) -> None:
    plt = pyplot()
    d = result.data
    w = np.asarray(d["widths"], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    styles = {"input weights": ("tab:blue", "o"), "hidden weights": ("tab:green", "s"),
              "output weights": ("tab:orange", "^"), "NTK Θ": ("k", "D"),
              "NNGP K": ("tab:red", "v")}
    for ax, group in ((axes[0], QUANTITIES[:3]), (axes[1], QUANTITIES[3:])):
        for q in group:
            vals = np.asarray(d["values"][q], dtype=float)          # (S, W)
            mean = vals.mean(0)
            color, marker = styles[q]
            ax.loglog(w, mean, marker=marker, color=color, lw=1.5,
                      label=f"{q} (slope {d['slope'][q]:.2f})")
            if vals.shape[0] > 1:
                ax.fill_between(w, vals.min(0), vals.max(0), color=color, alpha=0.15)
        top = max(np.asarray(d["values"][q], dtype=float).mean(0)[0] for q in group)
        ax.loglog(w, top * (w / w[0]) ** -0.5, "k--", lw=0.9, label="∝ n^(-1/2)")
        ax.loglog(w, top * (w / w[0]) ** -1.0, "k:", lw=1.1, label="∝ n^(-1)")
        ax.set_xlabel("width n")
        ax.legend(fontsize=8)
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xticks(w, [str(int(v)) for v in w])
    axes[0].set_ylabel("‖W_T − W_0‖_F / ‖W_0‖_F")
    axes[0].set_title("weights")
    axes[1].set_ylabel("relative Frobenius change")
    axes[1].set_title("empirical kernels")
    save(fig, path)
