"""Issue 17 item 7: random forwards and forwards that couple the batch must raise, not return a
random or zero empirical kernel. Each model below returned a wrong kernel without an error before
the check (dropout: a different kernel on every call; h - h.mean(0): zero per input, nonzero
batched; softmax over the batch: implementations disagree)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import widenets as wn

DT = torch.float64
IMPLS = ["auto", "jacobian", "ntvp", "structured"]


class FunctionalDropout(nn.Module):
    def __init__(self, p=0.3):
        super().__init__()
        self.l1 = nn.Linear(4, 16)
        self.l2 = nn.Linear(16, 2)
        self.p = p

    def forward(self, x):
        return self.l2(F.dropout(torch.tanh(self.l1(x)), self.p, training=True))


class OwnNoise(nn.Module):
    """Randomness from a private generator (no global RNG state consumed): caught by the
    repeated forward pass."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 3)
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x):
        noise = torch.randn(x.shape, generator=self.gen, dtype=x.dtype)
        return self.l1(x + noise)


class Coupled(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.l1 = nn.Linear(4, 5)
        self.l2 = nn.Linear(5, 2)
        self.how = how

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        h = h - h.mean(0) if self.how == "center" else torch.softmax(h, dim=0)
        return self.l2(h)


def model(cls, *args):
    torch.manual_seed(0)
    return cls(*args).to(DT)


X = torch.randn(5, 4, dtype=DT)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("make", [lambda: model(FunctionalDropout), lambda: model(OwnNoise)],
                         ids=["F.dropout", "private-generator"])
def test_random_forward_raises(make, impl):
    with pytest.raises(ValueError, match=r"empirical_ntk: the model is random"):
        wn.empirical_ntk(make(), X, implementation=impl)


def test_random_forward_raises_in_nngp():
    with pytest.raises(ValueError, match=r"empirical_nngp: the model is random"):
        wn.empirical_nngp(model(FunctionalDropout), X)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("how", ["center", "softmax"])
def test_batch_coupling_raises(how, impl):
    with pytest.raises(ValueError, match=r"empirical_ntk: the model's output for one input "
                                         r"depends on the other inputs of its batch"):
        wn.empirical_ntk(model(Coupled, how), X, implementation=impl)


@pytest.mark.parametrize("how", ["center", "softmax"])
def test_batch_coupling_detected_with_one_input(how):
    """n = 1 (x2 None): the second probe input is made by rolling the first one's entries."""
    with pytest.raises(ValueError, match=r"depends on the other inputs"):
        wn.empirical_ntk(model(Coupled, how), X[:1])
    with pytest.raises(ValueError, match=r"empirical_nngp: the model's output for one input"):
        wn.empirical_nngp(model(Coupled, how), X[:1])


def test_duplicated_first_rows_still_probe_a_different_input():
    x = torch.cat([X[:1], X[:1], X[1:]])
    with pytest.raises(ValueError, match=r"depends on the other inputs"):
        wn.empirical_ntk(model(Coupled, "center"), x)


def test_deterministic_models_pass():
    """No false alarm: dropout with p = 0 in train mode, and a float32 CNN (batched and single
    convolutions round differently), give the autograd kernel."""
    m = model(FunctionalDropout, 0.0)
    k = wn.empirical_ntk(m, X, implementation="structured")
    ref = wn.empirical_ntk(m, X, implementation="jacobian")
    assert float((k - ref).norm() / ref.norm()) < 1e-10     # a dropped unit would be O(1)
    torch.manual_seed(1)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 2))
    xs = torch.randn(4, 3, 8, 8)
    assert wn.empirical_ntk(cnn, xs).shape == (4, 4)
