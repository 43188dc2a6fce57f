"""The models of the empirical-NTK benchmark, defined once: `benchmarks/empirical_ntk.py` times
them and `tests/empirical/zoo.py` (loaded by path) checks every implementation on them at tiny
sizes, so the benchmark times the kernels the tests prove exact.

* `mlp`: Linear-ReLU-Linear-ReLU-Linear (784-w-w-10).
* `TutorialCNN`: the CNN of the torch.func "Neural Tangent Kernels" tutorial.
* `TokenTransformer`: token embedding + learned positions (a bare nn.Parameter added in forward)
  + nn.TransformerEncoder + a linear head on the mean over positions.
* `ResNet` / `BasicBlock`: ResNet-style CNN (BatchNorm, strided 1x1 shortcuts, global average
  pool); `resnet18` is the CIFAR ResNet-18 (11.2 M parameters at width 64), written here
  without torchvision.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["mlp", "TutorialCNN", "TokenTransformer", "BasicBlock", "ResNet", "resnet18"]


def mlp(width: int, device="cpu", dtype=torch.float32, d_in: int = 784, out: int = 10
        ) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, out)).to(device, dtype)


class TutorialCNN(nn.Module):
    """The CNN of the torch.func "Neural Tangent Kernels" tutorial: 3 convs, then linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, (3, 3))
        self.conv2 = nn.Conv2d(32, 32, (3, 3))
        self.conv3 = nn.Conv2d(32, 32, (3, 3))
        self.fc = nn.Linear(21632, 10)

    def forward(self, x):
        x = self.conv1(x).relu()
        x = self.conv2(x).relu()
        x = self.conv3(x)
        return self.fc(x.flatten(1))


class TokenTransformer(nn.Module):
    """Token embedding + learned positions (an nn.Parameter added in forward, as in BERT/GPT)
    + nn.TransformerEncoder (batch-first, post-norm; call .eval()) + linear head on the mean
    over positions."""

    def __init__(self, vocab=1000, d=64, heads=4, ff=128, layers=2, length=24, out=10):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, ff, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, out)

    def forward(self, idx):
        return self.head(self.enc(self.emb(idx) + self.pos).mean(1))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut (a strided 1x1 conv + BN when the shape
    changes), then ReLU."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(h)) + self.short(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem conv + BN + ReLU (no max-pool), `depth` basic blocks per
    stage of the given widths (the first block of every stage but the first has stride 2),
    global average pool, linear head."""

    def __init__(self, widths=(64, 128, 256, 512), depth=2, in_channels=3, out=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(c, w, 1 if i == 0 else 2))
            blocks += [BasicBlock(w, w, 1) for _ in range(depth - 1)]
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, out)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def resnet18(width: int = 64, out: int = 10) -> ResNet:
    """ResNet-18 for 3x32x32 ([2, 2, 2, 2] basic blocks); width 64 is the standard 11.2 M
    parameter network."""
    return ResNet((width, 2 * width, 4 * width, 8 * width), 2, 3, out)
