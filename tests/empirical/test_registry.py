"""register_structured_layer: a new layer type joins the structured path; a wrong description
is caught by the probe's check against autograd and falls back instead of giving a wrong NTK."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import widenets as wn
from widenets.empirical import structure
from widenets.empirical._target import resolve_target
from widenets.empirical.structured import make_plan

DT = torch.float64


class ScaledConv(nn.Module):
    """y = c · conv1d(x, W, stride 2) + d · b: like a future widenets ConvModule."""

    def __init__(self, c, d):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3, 2, 3, generator=g, dtype=DT))
        self.bias = nn.Parameter(torch.randn(3, generator=g, dtype=DT))
        self.c, self.d = c, d

    def forward(self, x):
        return F.conv1d(x, self.weight, stride=2) * self.c + (self.bias * self.d)[:, None]


def model():
    return nn.Sequential(ScaledConv(0.7, 1.3), nn.Tanh(), nn.Flatten(), nn.Linear(9, 2)).to(DT)


X1 = torch.randn(4, 2, 7, dtype=DT, generator=torch.Generator().manual_seed(1))
X2 = torch.randn(3, 2, 7, dtype=DT, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(structure, "_REGISTRY", dict(structure._REGISTRY))


@pytest.mark.parametrize("scale, accelerated", [(0.7, True), (0.5, False)])
def test_registered_layer(registry, scale, accelerated):
    wn.register_structured_layer(ScaledConv, lambda m: wn.LayerStructure(
        "conv", stride=(2,), padding=(0,), dilation=(1,), weight_scale=scale,
        bias_scale=m.d))
    m = model()
    plan = make_plan(resolve_target(m, None, func="test"), X1[:2])
    known = {p for layer in plan.known for p in layer.roles.values()}
    # with the wrong weight_scale only the bias description survives the check
    want = {"0.weight", "0.bias"} if accelerated else {"0.bias"}
    assert known == want | {"3.weight", "3.bias"}
    ref = wn.empirical_ntk(m, X1, X2, implementation="jacobian", mode="full")
    out = wn.empirical_ntk(m, X1, X2, implementation="structured", mode="full")
    assert float((out - ref).norm() / ref.norm()) < 1e-10


def test_unregistered_layer_uses_autograd():
    m = model()
    plan = make_plan(resolve_target(m, None, func="test"), X1[:2])
    assert set(plan.fallback) == {"0.weight", "0.bias"}


def test_register_checks_arguments():
    with pytest.raises(TypeError, match=r"register_structured_layer: module_type must be an "
                                        r"nn.Module subclass"):
        wn.register_structured_layer(int, lambda m: None)
    with pytest.raises(TypeError, match=r"describe must be callable"):
        wn.register_structured_layer(ScaledConv, "conv")
    with pytest.raises(ValueError, match=r"LayerStructure: kind must be one of"):
        wn.LayerStructure("attention")
