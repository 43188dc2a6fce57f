"""`blog-alpha`: lazy training by output scaling (seed 001, after Chizat & Bach). The model
α (f(x; w) − f(x; w₀)) trained on the loss divided by α² moves its weights and its NTK less and
less as α grows (both ~ 1/α), while the function-space time scale stays the same. For two data
points the NTK is a 2x2 matrix, drawn as the ellipse uᵀ H u = c around the targets, with the
trajectory of the outputs: it turns and stretches for small α and stays put for large α.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import finite_width as fw
from ..empirical import empirical_ntk
from .base import Result, fit_slope, progress
from .blog_scaling import lecun_tanh
from .plotting import pyplot, save

ID = "blog-alpha"
TITLE = "Output scale α: weight and NTK change against α, 2-point NTK ellipses (seed 001)"
RUNTIME = "15 s"


@dataclass
class Config:
    """Options (`--set key=value`).

    Attributes:
        width: hidden width of the one-hidden-layer tanh net (small, so small α is rich).
        alphas: output scales; the ellipse grid shows the smallest, a middle and the largest.
        x1, x2, y1, y2: the two data points (1-d inputs) and targets.
        steps: GD steps; lr_factor: η as a fraction of 2/λmax(Θ₀/n) (the same for every α:
            dividing the loss by α² keeps the function-space time scale).
        frames: snapshots in the ellipse grid.
        seed: initialization seed (the same w₀ for every α).
    """

    width: int = 20
    alphas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    x1: float = 0.5
    x2: float = 2.0
    y1: float = 1.0
    y2: float = -0.5
    steps: int = 400
    lr_factor: float = 0.45
    frames: int = 4
    seed: int = 0

    def check(self) -> None:
        if len(self.alphas) < 2 or min(self.alphas) <= 0:
            raise ValueError(f"alphas needs two or more positive values, got {self.alphas}")
        if not 0 < self.lr_factor < 1 or self.steps < 1 or self.frames < 2 or self.width < 1:
            raise ValueError("lr_factor in (0, 1), steps and width >= 1, frames >= 2")
        if self.x1 == self.x2:
            raise ValueError("x1 and x2 must differ")


QUICK = dict(alphas=(0.3, 1.0, 10.0, 100.0), steps=200)


def run(config: Config) -> Result:
    x = torch.tensor([[config.x1], [config.x2]], dtype=torch.float64)
    y = torch.tensor([[config.y1], [config.y2]], dtype=torch.float64)
    n = 2
    base0 = lecun_tanh(config.width).module((1,), seed=config.seed, dtype=torch.float64)
    theta0 = empirical_ntk(base0, x).detach()
    eta = config.lr_factor * 2 * n / float(torch.linalg.eigvalsh(theta0)[-1])
    every = max(1, config.steps // 50)
    runs = {}
    t0 = time.perf_counter()
    for alpha in progress(config.alphas, desc="alphas", total=len(config.alphas)):
        base = lecun_tanh(config.width).module((1,), seed=config.seed, dtype=torch.float64)
        model = fw.scaled(base, alpha)
        rec = fw.train(model, x, y, learning_rate=eta, steps=config.steps, record_every=every,
                       record=("loss", "outputs", "ntk", "weights"), convention="mean")
        rc = fw.relative_change(rec)
        wnorm0 = sum(float(v[0]) ** 2 for v in rec.weight_norms.values()) ** 0.5
        wchange = torch.stack([v for v in rec.weight_changes.values()]).pow(2).sum(0).sqrt()
        runs[alpha] = {"times": rec.times, "outputs": rec.outputs[..., 0],
                       "ntk": rec.ntk / alpha ** 2,   # normalized: the α² of α f cancels
                       "loss": rec.loss / rec.loss_scale,  # the unscaled loss (1/2n) Σ r²
                       "weight_change": wchange / wnorm0, "ntk_change": rc.ntk}
    t_train = time.perf_counter() - t0
    alphas = list(config.alphas)
    wc = [float(runs[a]["weight_change"][-1]) for a in alphas]
    kc = [float(runs[a]["ntk_change"][-1]) for a in alphas]
    big = [a for a in alphas if a >= 3]   # the lazy end, where the 1/α law holds
    metrics = {
        "learning_rate": eta,
        "slope weight change vs alpha (alpha >= 3)": fit_slope(big, [wc[alphas.index(a)]
                                                                     for a in big])
        if len(big) > 1 else None,
        "slope ntk change vs alpha (alpha >= 3)": fit_slope(big, [kc[alphas.index(a)]
                                                                  for a in big])
        if len(big) > 1 else None,
        "weight change by alpha": dict(zip(alphas, wc, strict=True)),
        "ntk change by alpha": dict(zip(alphas, kc, strict=True)),
        "final loss by alpha": {a: float(runs[a]["loss"][-1]) for a in alphas},
        "initial loss": float(runs[alphas[0]]["loss"][0]),
    }
    caption = (f"One-hidden-layer tanh net of width {config.width} (LeCun init) on two points, "
               f"scaled to α (f − f₀) and trained by GD on the loss / α² (η={eta:.3g}, "
               f"{config.steps} steps). Relative weight and NTK change fall like 1/α (the lazy "
               f"regime); the ellipses (NTK / α² around the targets, output trajectory in red) "
               f"move for small α and freeze for large α. All α reach low training loss.")
    return Result(figure=ID, config=config, data={"runs": runs, "alphas": alphas, "y": y[:, 0]},
                  metrics=metrics, caption=caption, timings={"train_s": round(t_train, 3)})


def _ellipse(h: np.ndarray, c: float, center: np.ndarray) -> np.ndarray:
    """Points u + center with uᵀ h u = c (h 2x2 positive definite)."""
    lam, v = np.linalg.eigh(h)
    th = np.linspace(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(th), np.sin(th)])
    return (v @ (np.sqrt(c / np.maximum(lam, 1e-300))[:, None] * circle)).T + center


def plot(result: Result, path) -> None:
    plt = pyplot()
    d, cfg = result.data, result.config
    alphas = d["alphas"]
    shown = [alphas[0], alphas[len(alphas) // 2], alphas[-1]]
    frames = cfg.frames
    fig, axes = plt.subplots(3, frames + 1, figsize=(3.3 * (frames + 1), 9.6),
                             layout="constrained")
    a = np.asarray(alphas)
    for row, (key, label) in enumerate((("weight_change", "‖w_T − w₀‖ / ‖w₀‖"),
                                        ("ntk_change", "‖Θ_T − Θ₀‖ / ‖Θ₀‖"))):
        ax = axes[row, 0]
        vals = np.array([float(d["runs"][al][key][-1]) for al in alphas])
        ax.loglog(a, vals, "o-", color="tab:blue", label="measured")
        ax.loglog(a, vals[-1] * (a / a[-1]) ** -1.0, "k--", lw=1, label="∝ 1/α")
        ax.set_xlabel("output scale α")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    ax = axes[2, 0]
    colors = plt.cm.plasma(np.linspace(0.05, 0.85, len(alphas)))
    for al, c in zip(alphas, colors, strict=True):
        t = np.maximum(d["runs"][al]["times"].numpy(), 0.8)
        ax.loglog(t, d["runs"][al]["loss"].numpy(), color=c, label=f"α = {al:g}")
    ax.set_xlabel("GD step")
    ax.set_ylabel("training loss (unscaled)")
    ax.legend(fontsize=7)
    y = d["y"].numpy()
    for row, al in enumerate(shown):
        run = d["runs"][al]
        times = run["times"].numpy()
        idx = np.unique(np.round(np.linspace(0, len(times) - 1, frames)).astype(int))
        out = run["outputs"].numpy()
        h0 = run["ntk"][0].numpy()
        u0 = out[0] - y
        c = float(u0 @ h0 @ u0)
        for col, i in enumerate(idx, start=1):
            ax = axes[row, col]
            e0 = _ellipse(h0, c, y)
            et = _ellipse(run["ntk"][i].numpy(), c, y)
            ax.plot(e0[:, 0], e0[:, 1], color="0.6", lw=1, ls="--", label="NTK at t = 0")
            ax.plot(et[:, 0], et[:, 1], color="tab:blue", lw=1.6, label="NTK at t")
            ax.plot(out[:i + 1, 0], out[:i + 1, 1], "-", color="tab:red", lw=1.2,
                    label="outputs y(w(s)), s ≤ t")
            ax.plot(*y, "k*", ms=9, label="targets ȳ")
            ax.set_aspect("equal", adjustable="datalim")
            ax.set_title(f"α = {al:g}, step {int(times[i])}", fontsize=9)
            ax.set_xlabel("f(x₁)")
            ax.set_ylabel("f(x₂)")
            if row == 0 and col == frames:
                ax.legend(fontsize=7, loc="lower right")
    save(fig, path)
