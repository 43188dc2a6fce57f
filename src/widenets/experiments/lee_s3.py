"""`lee-s3`: a network and its linearization trained by SGD with momentum on the softmax
cross-entropy (Lee et al. 2019, seed 002, §3 and Figs. S3-S4).

The paper: full MNIST, cross-entropy, a momentum optimizer. The linearized model tracks the
network, but unlike MSE (where the outputs converge to the targets) some logits grow without
bound at late times, once the training set is fit: the logit norm keeps growing like log t, and
the distance between the two models' logits grows with it; it grows more where the two models
had already separated before that regime (narrower nets). Here: fully connected ReLU nets (NTK
parameterization) on scikit-learn's digits, minibatch SGD with heavy-ball momentum, the same
minibatches for both models, one run per width.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..data import load_digits
from .base import Result, progress
from .common import fc_net, log_steps
from .lee_fig4 import plot_pair_panels
from .pair_training import train_pair
from .plotting import pyplot, save

ID = "lee-s3"
TITLE = "Cross-entropy with momentum: network vs linearization, late-time logit growth " \
        "(seed 002 Figs. S3-S4)"
RUNTIME = "4 min"


@dataclass
class Config:
    """Options (`--set key=value`).

    Attributes:
        n_train, n_test: digits (10 classes).
        widths: hidden widths (one run each; the widest is drawn in the first panels).
        depth: hidden ReLU layers (σw² = 2, σb² = 0.1).
        learning_rate, momentum, batch_size, steps: SGD with heavy-ball momentum β.
        n_shown: train and test points whose logits are drawn; n_records: record steps.
        seed: data, initialization and minibatch seed.
    """

    n_train: int = 256
    n_test: int = 256
    widths: tuple[int, ...] = (128, 512, 1024)
    depth: int = 2
    learning_rate: float = 0.5
    momentum: float = 0.9
    batch_size: int = 32
    steps: int = 2000
    n_shown: int = 3
    n_records: int = 30
    seed: int = 0

    def check(self) -> None:
        if not self.widths or min(self.widths) < 1 or self.depth < 1 or self.steps < 10:
            raise ValueError("widths >= 1, depth >= 1, steps >= 10")
        if self.learning_rate <= 0 or not 0 <= self.momentum < 1 or self.batch_size < 1:
            raise ValueError("learning_rate > 0, momentum in [0, 1), batch_size >= 1")
        if self.n_train + self.n_test > 1797 or self.n_records < 4:
            raise ValueError("n_train + n_test <= 1797 and n_records >= 4")


QUICK = dict(n_train=32, n_test=64, widths=(64, 256), depth=1, steps=200, n_records=9)


def run(config: Config) -> Result:
    ds = load_digits(n_train=config.n_train, n_test=config.n_test, seed=config.seed)
    f32 = torch.float32     # float32: the logits stay O(10), the runs are long
    data = {"x_train": ds.x_train.to(f32), "y_train": ds.y_train.to(f32),
            "labels_train": ds.labels_train, "x_test": ds.x_test.to(f32),
            "y_test": ds.y_test.to(f32), "labels_test": ds.labels_test}
    record_at = log_steps(config.steps, config.n_records)
    t0 = time.perf_counter()
    recs, gap, logit_norm = {}, {}, {}
    for width in progress(config.widths, desc="widths", total=len(config.widths)):
        net = fc_net(width, config.depth, w_std=2 ** 0.5, b_std=0.1 ** 0.5, out=10)
        model = net.module((64,), seed=config.seed, dtype=torch.float32)
        rec = train_pair(model, data, loss="xent", learning_rate=config.learning_rate,
                         momentum=config.momentum, batch_size=config.batch_size,
                         steps=config.steps, record_at=record_at, seed=config.seed,
                         show_train=range(config.n_shown), show_test=range(config.n_shown),
                         keep_test=True, func=ID)
        out = rec.test_outputs
        recs[width] = rec
        # RMS distance of the test logits, and the RMS logit of the network
        gap[width] = (out["network"] - out["linearized"]).pow(2).mean((1, 2)).sqrt().numpy()
        logit_norm[width] = out["network"].pow(2).mean((1, 2)).sqrt().numpy()
    t_train = time.perf_counter() - t0
    steps = np.asarray(recs[config.widths[0]].steps, dtype=float)
    # "late times": the last third of the log-spaced records (after the training set is fit)
    late = int(len(steps) * 2 / 3)
    metrics = {}
    for w in config.widths:
        r = recs[w]
        metrics[f"width {w}: train loss final"] = float(r.train_loss["network"][-1])
        metrics[f"width {w}: test accuracy (network, linearized)"] = (
            float(r.test_acc["network"][-1]), float(r.test_acc["linearized"][-1]))
        metrics[f"width {w}: logit gap growth late"] = float(gap[w][-1] / gap[w][late])
        metrics[f"width {w}: logit rms growth late"] = float(logit_norm[w][-1]
                                                             / logit_norm[w][late])
        metrics[f"width {w}: logit gap final"] = float(gap[w][-1])
    metrics["late_from_step"] = int(steps[late])
    wide = config.widths[-1]
    caption = (f"{config.depth}-hidden-layer ReLU nets and their linearizations, trained side by "
               f"side by SGD with momentum β = {config.momentum:g} (η = "
               f"{config.learning_rate:g}, batch {config.batch_size}) on the cross-entropy of "
               f"{config.n_train} digits. After the training set is fit, the logits keep "
               f"growing (width {wide}: RMS logit ×"
               f"{metrics[f'width {wide}: logit rms growth late']:.2f} from step "
               f"{int(steps[late])} to {int(steps[-1])}) and so does the distance between the "
               f"two models (×{metrics[f'width {wide}: logit gap growth late']:.2f}); it is "
               f"larger for narrower nets, which separate earlier.")
    data = {"steps": steps, "widths": list(config.widths), "records": recs, "gap": gap,
            "logit_rms": logit_norm, "labels_train": ds.labels_train,
            "labels_test": ds.labels_test, "late": late}
    return Result(figure=ID, config=config, data=data, metrics=metrics, caption=caption,
                  timings={"train_s": round(t_train, 3)})


def plot(result: Result, path) -> None:
    plt = pyplot()
    d = result.data
    wide = d["widths"][-1]
    fig, axes = plt.subplots(1, 5, figsize=(21, 3.9), layout="constrained")
    plot_pair_panels(axes[:4], d["records"][wide], d["labels_train"], d["labels_test"],
                     loss_name="cross-entropy")
    s = np.maximum(np.asarray(d["steps"], dtype=float), 0.8)
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(d["widths"])))
    for w, c in zip(d["widths"], colors, strict=True):
        axes[4].plot(s[1:], d["gap"][w][1:], "-", color=c, label=f"width {w}: RMS(f − f_lin)")
        axes[4].plot(s[1:], d["logit_rms"][w][1:], ":", color=c, label=f"width {w}: RMS logit")
    axes[4].axvspan(s[d["late"]], s[-1], color="0.9")
    axes[4].set_xscale("log")
    axes[4].set_yscale("log")
    axes[4].set_xlabel("SGD step")
    axes[4].set_title("test logits: distance and size (late times shaded)")
    axes[4].legend(fontsize=7)
    fig.suptitle(f"Cross-entropy with momentum, width {wide} in the first four panels",
                 fontsize=10)
    save(fig, path)
