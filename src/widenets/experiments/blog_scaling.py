"""`blog-scaling`: why wide nets are lazy (seed 001). For a one-hidden-layer tanh net with LeCun
initialization, the Jacobian norm ‖∇f‖ grows like √m, the Hessian norm ‖∇²f‖ stays O(1), so the
inverse relative scale κ = ‖f(w₀) − ȳ‖ ‖∇²f‖ / ‖∇f‖² falls like 1/m (docs/math.md §laziness).
Operator norms are computed from Hessian-vector products (wn.finite_width.kappa)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import finite_width as fw
from .. import layers as L
from .base import Result, progress
from .plotting import pyplot, save

ID = "blog-scaling"
TITLE = "Jacobian norm, Hessian norm and κ against width (seed 001)"
RUNTIME = "40 s"

QUANTITIES = {"jacobian_norm": ("‖∇f‖ (Jacobian)", 0.5), "hessian_norm": ("‖∇²f‖ (Hessian)", 0.0),
              "kappa": ("κ (inverse relative scale)", -1.0)}


@dataclass
class Config:
    """Options (`--set key=value`).

    Attributes:
        widths: hidden widths m; seeds: initializations per width.
        n_points: inputs, evenly spaced in [-1.5, 1.5] (the blog's 1-d regression).
        seed: offset of the initialization seeds.
    """

    widths: tuple[int, ...] = (32, 128, 512, 2048, 8192)
    seeds: tuple[int, ...] = (0, 1, 2)
    n_points: int = 4
    seed: int = 0

    def check(self) -> None:
        if len(self.widths) < 2 or min(self.widths) < 1 or not self.seeds or self.n_points < 1:
            raise ValueError("need two or more positive widths, a seed and n_points >= 1")


QUICK = dict(widths=(64, 256, 1024), seeds=(0, 1))


def lecun_tanh(width: int):
    """f(x) = Σ_i b_i tanh(a_i x): no biases, standard parameterization with LeCun init
    (a ~ N(0, 1/d), b ~ N(0, 1/m)), the model of seed 001."""
    return L.serial(L.Dense(width, w_std=1.0, b_std=None, parameterization="standard"),
                    L.Elementwise(torch.tanh),
                    L.Dense(1, w_std=1.0, b_std=None, parameterization="standard"))


def run(config: Config) -> Result:
    x = torch.linspace(-1.5, 1.5, config.n_points, dtype=torch.float64)[:, None]
    y = 2.0 + torch.sin(2 * x[:, 0])            # the targets ȳ; ||f(w0) - ȳ|| = O(1)
    bar = iter(progress(range(len(config.widths) * len(config.seeds)), desc="widths x seeds",
                        total=len(config.widths) * len(config.seeds)))

    def build(width, seed):
        return lecun_tanh(width).module((1,), seed=config.seed * 1000 + seed,
                                        dtype=torch.float64)

    def measure(model):
        res = fw.kappa(model, x, y, tol=1e-6)
        next(bar, None)
        return res

    t0 = time.perf_counter()
    sweep = fw.width_sweep(build, config.widths, measure=measure, seeds=config.seeds)
    t_sweep = time.perf_counter() - t0
    metrics = {}
    for q, (_, expected) in QUANTITIES.items():
        metrics[f"slope {q}"] = sweep.slope[q]
        metrics[f"slope {q} 95% CI"] = tuple(float(c) for c in sweep.ci[q])
        metrics[f"expected slope {q}"] = expected
    caption = (f"One-hidden-layer tanh net, LeCun init, {config.n_points} inputs in 1-d, "
               f"{len(config.seeds)} seeds per width. Fitted log-log slopes: ‖∇f‖ "
               f"{sweep.slope['jacobian_norm']:.2f} (theory 0.5), ‖∇²f‖ "
               f"{sweep.slope['hessian_norm']:.2f} (0), κ {sweep.slope['kappa']:.2f} (−1): "
               f"wider nets are closer to their linearization.")
    data = {"widths": list(config.widths),
            "values": {q: sweep.values[q] for q in QUANTITIES},
            "slope": {q: sweep.slope[q] for q in QUANTITIES}}
    return Result(figure=ID, config=config, data=data, metrics=metrics, caption=caption,
                  timings={"sweep_s": round(t_sweep, 3)})


def plot(result: Result, path) -> None:
    plt = pyplot()
    d = result.data
    w = np.asarray(d["widths"], dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9), layout="constrained")
    for ax, (q, (label, expected)) in zip(axes, QUANTITIES.items(), strict=True):
        vals = np.asarray(d["values"][q], dtype=float)                # (S, W)
        for row in vals:
            ax.loglog(w, row, ".", color="tab:blue", alpha=0.4)
        mean = np.exp(np.log(vals).mean(0))
        ax.loglog(w, mean, "o-", color="tab:blue", label=f"measured (slope {d['slope'][q]:.2f})")
        ax.loglog(w, mean[0] * (w / w[0]) ** expected, "k--", lw=1,
                  label=f"theory ∝ m^{expected:g}")
        if expected == 0.0:   # a flat line should look flat: show a factor 10 around it
            ax.set_ylim(mean.mean() / np.sqrt(10), mean.mean() * np.sqrt(10))
        ax.set_xlabel("width m")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.legend(fontsize=8)
    save(fig, path)
