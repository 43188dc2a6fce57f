"""`lee-fig4`: a wide residual network and its linearization, both trained by minibatch SGD with
momentum on MSE, follow each other (Lee et al. 2019, seed 002, Fig. 4).

The paper: a WRN (Table S1 of seed 002, after Zagoruyko & Komodakis) with N = 1 block per group,
a constant 1024 channels, σw² = 1, σb² = 0, η = 1, β = 0.9, batch size 8, full CIFAR-10. Here:
the same block structure on scikit-learn's digits (8x8, 10 classes, centered one-hot targets):

    stem conv 3x3 -> 3 groups of N pre-activation blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3,
    identity shortcut; the first block of groups 2 and 3 has stride 2 and a 1x1 strided conv
    shortcut) -> BN-ReLU -> global average pooling -> Dense(10),

every conv with `channels` output channels, NTK parameterization (σw = 1, no biases).

BatchNorm and the linearization: the linearization f_lin(θ) = f(θ0) + J(θ0)(θ − θ0) needs f to
be a function of one input at a time. Every BatchNorm therefore runs in eval mode with its
statistics frozen: they are set once, at initialization, to the mean and variance of the whole
training set (one train-mode pass without gradients), then used unchanged by BOTH models. The
BatchNorm scale and shift stay trainable parameters (of the network, and of its linearization
around their initial values 1 and 0). Train-mode batch statistics would make each output depend
on the other inputs of its minibatch, a different function for each minibatch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import layers as L
from ..data import load_digits
from .base import Result
from .common import log_steps
from .pair_training import train_pair
from .plotting import pyplot, save

ID = "lee-fig4"
TITLE = "A residual network (BatchNorm, shortcuts, pooling) vs its linearization under SGD " \
        "with momentum (seed 002 Fig. 4)"
RUNTIME = "5 min"


class _Block(nn.Module):
    """Pre-activation basic block of a WRN (Table S1 of seed 002)."""

    def __init__(self, channels: int, spatial: tuple[int, int], stride: int, seed: int, dtype):
        super().__init__()
        shape = (channels, *spatial)
        out_spatial = tuple(-(-s // stride) for s in spatial)

        def conv(k, st, sd, in_shape):
            return L.Conv(channels, k, stride=st, padding="SAME", w_std=1.0, b_std=None) \
                .module(in_shape, seed=sd, dtype=dtype)

        self.bn1 = nn.BatchNorm2d(channels, momentum=None, dtype=dtype)
        self.conv1 = conv(3, stride, seed, shape)
        self.bn2 = nn.BatchNorm2d(channels, momentum=None, dtype=dtype)
        self.conv2 = conv(3, 1, seed + 1, (channels, *out_spatial))
        self.shortcut = None if stride == 1 else conv(1, stride, seed + 2, shape)
        self.out_spatial = out_spatial

    def forward(self, x):
        o = torch.relu(self.bn1(x))
        h = self.conv2(torch.relu(self.bn2(self.conv1(o))))
        return h + (x if self.shortcut is None else self.shortcut(o))


class ResNet(nn.Module):
    """The residual network of the module docstring (channels first, (N, 1, 8, 8) inputs).

    Args:
        channels: the constant channel count; blocks: blocks per group (N of Table S1).
        n_out: outputs; seed: initialization seed; in_shape: (C, H, W); dtype: parameters.

    Example:
        >>> import torch
        >>> net = ResNet(8, 1, 10, seed=0)
        >>> freeze_batchnorm_statistics(net, torch.randn(16, 1, 8, 8))
        >>> net(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """

    def __init__(self, channels: int, blocks: int, n_out: int, *, seed: int,
                 in_shape=(1, 8, 8), dtype=torch.float32):
        super().__init__()
        self.stem = L.Conv(channels, 3, padding="SAME", w_std=1.0, b_std=None).module(
            in_shape, seed=seed * 1000, dtype=dtype)
        spatial = tuple(in_shape[1:])
        mods = []
        for gi, stride in enumerate((1, 2, 2)):
            for bi in range(blocks):
                blk = _Block(channels, spatial, stride if bi == 0 else 1,
                             seed * 1000 + 10 * (gi * blocks + bi) + 1, dtype)
                spatial = blk.out_spatial
                mods.append(blk)
        self.blocks = nn.Sequential(*mods)
        self.bn = nn.BatchNorm2d(channels, momentum=None, dtype=dtype)
        self.readout = L.Dense(n_out, w_std=1.0, b_std=None).module(
            (channels,), seed=seed * 1000 + 999, dtype=dtype)

    def forward(self, x):
        h = torch.relu(self.bn(self.blocks(self.stem(x))))
        return self.readout(h.mean(dim=(2, 3)))


def freeze_batchnorm_statistics(model: nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of `x` (one train-mode pass with the
    cumulative average, momentum=None) and switch the model to eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def digits_images(n_train: int, n_test: int, seed: int, dtype=torch.float32) -> dict:
    """Digits as (n, 1, 8, 8) images, centered one-hot targets and labels."""
    ds = load_digits(n_train=n_train, n_test=n_test, seed=seed)
    return {"x_train": ds.x_train.reshape(-1, 1, 8, 8).to(dtype),
            "y_train": ds.y_train.to(dtype), "labels_train": ds.labels_train,
            "x_test": ds.x_test.reshape(-1, 1, 8, 8).to(dtype),
            "y_test": ds.y_test.to(dtype), "labels_test": ds.labels_test}


@dataclass
class Config:
    """Options (`--set key=value`).

    Attributes:
        n_train, n_test: digits used (10 classes, centered one-hot targets).
        channels: the constant channel count (the width); blocks: blocks per group (N).
        learning_rate, momentum: SGD (heavy-ball momentum β, torch's convention).
        batch_size: minibatch size; steps: SGD steps (the same minibatches for both models).
        n_shown: train and test points whose outputs are drawn.
        n_records: about this many record steps (log-spaced).
        seed: data, initialization and minibatch seed.
    """

    n_train: int = 128
    n_test: int = 128
    channels: int = 128
    blocks: int = 1
    learning_rate: float = 0.1
    momentum: float = 0.9
    batch_size: int = 16
    steps: int = 150
    n_shown: int = 3
    n_records: int = 10
    seed: int = 0

    def check(self) -> None:
        if min(self.n_train, self.n_test, self.channels, self.blocks, self.batch_size,
               self.steps, self.n_shown) < 1:
            raise ValueError("n_train, n_test, channels, blocks, batch_size, steps, n_shown "
                             "must be >= 1")
        if self.learning_rate <= 0 or not 0 <= self.momentum < 1:
            raise ValueError("learning_rate > 0 and momentum in [0, 1)")
        if self.n_train + self.n_test > 1797:
            raise ValueError("n_train + n_test must be at most 1797 (the digits)")


QUICK = dict(n_train=64, n_test=64, channels=32, steps=60, n_records=6)


def run(config: Config) -> Result:
    data = digits_images(config.n_train, config.n_test, config.seed)
    model = ResNet(config.channels, config.blocks, 10, seed=config.seed)
    freeze_batchnorm_statistics(model, data["x_train"])
    record_at = log_steps(config.steps, config.n_records)
    t0 = time.perf_counter()
    rec = train_pair(model, data, loss="mse", learning_rate=config.learning_rate,
                     momentum=config.momentum, batch_size=config.batch_size,
                     steps=config.steps, record_at=record_at, seed=config.seed,
                     show_train=range(config.n_shown), show_test=range(config.n_shown),
                     func=ID)
    t_train = time.perf_counter() - t0
    acc = {k: float(v[-1]) for k, v in rec.test_acc.items()}
    fin = rec.test_logits_final
    scale = float(fin["network"].pow(2).mean().sqrt())
    rmse = float((fin["network"] - fin["linearized"]).pow(2).mean().sqrt())
    agree = float((fin["network"].argmax(1) == fin["linearized"].argmax(1)).double().mean())
    metrics = {
        "test_accuracy_network": acc["network"],
        "test_accuracy_linearized": acc["linearized"],
        "test_accuracy_gap": abs(acc["network"] - acc["linearized"]),
        "prediction_agreement": agree,
        "test_output_rmse_over_rms": rmse / scale,
        "train_loss_initial": float(rec.train_loss["network"][0]),
        "train_loss_final_network": float(rec.train_loss["network"][-1]),
        "train_loss_final_linearized": float(rec.train_loss["linearized"][-1]),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    caption = (f"A residual network (3 groups of {config.blocks} pre-activation block(s), "
               f"{config.channels} channels, BatchNorm with statistics frozen at "
               f"initialization, shortcuts, global average pooling) and its linearization, "
               f"trained side by side by SGD with momentum β = {config.momentum:g} (η = "
               f"{config.learning_rate:g}, batch {config.batch_size}, the same minibatches) on "
               f"MSE, {config.n_train} digits. Final test accuracy: network "
               f"{acc['network']:.3f}, linearized {acc['linearized']:.3f}; the two agree on "
               f"{agree:.1%} of the test predictions.")
    return Result(figure=ID, config=config, data={"record": rec,
                                                  "labels_train": data["labels_train"],
                                                  "labels_test": data["labels_test"]},
                  metrics=metrics, caption=caption, timings={"train_s": round(t_train, 3)})


def plot_pair_panels(axes, rec, labels_train, labels_test, *, loss_name: str) -> None:
    """Outputs of the shown train and test points (network solid, linearized dashed), train
    loss and test accuracy over steps; shared with `lee-s3`."""
    s = np.maximum(np.asarray(rec.steps, dtype=float), 0.8)
    colors = pyplot().cm.tab10(np.arange(10))
    for ax, split, labels in ((axes[0], "train", labels_train), (axes[1], "test", labels_test)):
        net, lin = rec.outputs["network"][split], rec.outputs["linearized"][split]
        for i in range(net.shape[1]):
            c = int(labels[i])      # the output of the point's true class
            ax.plot(s, net[:, i, c].numpy(), "-", color=colors[i], lw=1.8)
            ax.plot(s, lin[:, i, c].numpy(), "--", color="k", lw=1.0)
        ax.plot([], [], "-", color="gray", label="network")
        ax.plot([], [], "--", color="k", label="linearized")
        ax.set_ylabel("output of the true class f_y(x)")
        ax.set_title(f"{split} points")
        ax.legend(fontsize=8)
    for name, style in (("network", "-"), ("linearized", "--")):
        axes[2].plot(s, rec.train_loss[name].numpy(), style, label=name)
        axes[3].plot(s, rec.test_acc[name].numpy(), style, label=name)
    axes[2].set_yscale("log")
    axes[2].set_ylabel(f"train loss ({loss_name})")
    axes[2].set_title("training loss")
    axes[3].set_ylabel("test accuracy")
    axes[3].set_title("test accuracy")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("SGD step")
        ax.legend(fontsize=8)


def plot(result: Result, path) -> None:
    plt = pyplot()
    d = result.data
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.9), layout="constrained")
    plot_pair_panels(axes, d["record"], d["labels_train"], d["labels_test"],
                     loss_name="½ MSE")
    fig.suptitle(f"ResNet with {result.config.channels} channels and its linearization, "
                 f"SGD + momentum on digits", fontsize=10)
    save(fig, path)
