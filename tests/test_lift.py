"""wn.lift: torch modules -> widenets layer graphs."""

import math

import pytest
import torch
from torch import nn

import widenets as wn
from widenets.empirical import empirical_ntk
from widenets.lift import LiftError


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _seq():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GELU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 2 * 2, 4), nn.Tanh(), nn.Linear(4, 1)).double()


@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_lift_sequential_equals_hand_built(param):
    kw = dict(w_std=1.3, b_std=0.2, parameterization=param)
    lifted = wn.lift(_seq(), (1, 7, 7), **kw)
    hand = wn.serial(wn.Conv(8, 3, padding=1, **kw), wn.Relu(),
                     wn.Conv(8, 3, stride=2, padding=1, **kw), wn.Gelu(), wn.AvgPool(2),
                     wn.Flatten(), wn.Dense(4, **kw), wn.Elementwise(torch.tanh),
                     wn.Dense(1, **kw))
    x, y = _x(3, 1, 7, 7), _x(2, 1, 7, 7, seed=1)
    for a, b in ((lifted.kernel(x), hand.kernel(x)), (lifted.kernel(x, y), hand.kernel(x, y))):
        torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-12, atol=1e-14)


class _Res(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.c0 = nn.Conv2d(2, c, 3, padding=1)
        self.c1 = nn.Conv2d(c, c, 3, padding="same")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        h = self.c0(x)
        h = h + self.c1(torch.relu(h))
        return self.fc(torch.flatten(self.pool(torch.tanh(h)), 1))


def _seq1d():
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1, padding_mode="circular"),
                         nn.LeakyReLU(0.1), nn.AvgPool1d(3, stride=1, padding=1),
                         nn.Conv1d(4, 4, 2, stride=2), nn.Softplus(), nn.AdaptiveAvgPool1d(1),
                         nn.Flatten(), nn.Linear(4, 2)).double()


@pytest.mark.parametrize("param", ["standard", "ntk"])
@pytest.mark.parametrize("make,shape", [(_seq, (1, 7, 7)), (lambda: _Res().double(), (2, 3, 3)),
                                        (_seq1d, (2, 6))])
def test_lifted_finite_forward_equals_original(make, shape, param):
    model = make()
    lifted = wn.lift(model, shape, parameterization=param)
    twin = lifted.module_from(model)
    x = _x(4, *shape)
    torch.testing.assert_close(twin(x), model(x), rtol=1e-12, atol=1e-12)
    k = lifted.kernel(x)                     # and the lifted graph has a finite kernel
    assert k.ntk.shape == (4, 4) and torch.isfinite(k.ntk).all()


@pytest.mark.slow
def test_torch_default_init_kernel_matches_random_torch_models():
    """init='torch' reads torch's default init (σw = 1/√3, σb = 1/√(3n)); compare the lifted
    kernel with the output second moments and empirical NTKs of freshly initialized torch
    models. Tolerance 0.12: Monte Carlo noise is ~5% here; reading U(±1/√n) as N(0, 1/n)
    (σw = 1 instead of 1/√3) changes the kernel by a factor 3."""
    x = _x(4, 2, 6)

    def model(out):
        return nn.Sequential(nn.Conv1d(2, 256, 3, padding=1), nn.ReLU(),
                             nn.Conv1d(256, 256, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(256, out)).double()

    k = wn.lift(model(1), (2, 6)).kernel(x)
    nngp, ntk = 0.0, 0.0
    for s in range(12):
        torch.manual_seed(s)
        with torch.no_grad():
            f = model(256)(x)
        nngp = nngp + f @ f.T / f.shape[1] / 12
    for s in range(3):
        torch.manual_seed(100 + s)
        ntk = ntk + empirical_ntk(model(1), x, implementation="jacobian") / 3
    rel = lambda a, b: float(torch.linalg.norm(a - b) / torch.linalg.norm(b))  # noqa: E731
    assert rel(nngp, k.nngp) < 0.12
    assert rel(ntk, k.ntk) < 0.12


def test_init_from_weights_and_overrides():
    model = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 1))
    with torch.no_grad():
        model[0].weight.normal_(0, 2.0 / math.sqrt(400))
        model[0].bias.normal_(0, 0.5)
    dense = wn.lift(model, (400,), init="weights").layers[0]
    assert abs(dense.w_std - 2.0) < 0.05 and abs(dense.b_std - 0.5) < 0.1
    default = wn.lift(model, (400,)).layers[0]
    assert math.isclose(default.w_std, 1 / math.sqrt(3))
    assert math.isclose(default.b_std, 1 / math.sqrt(3 * 400))
    fixed = wn.lift(model, (400,), w_std=1.5, b_std=0.0).layers[0]
    assert fixed.w_std == 1.5 and fixed.b_std == 0.0


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


@pytest.mark.parametrize("model,shape,match", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2)), (1, 6, 6), "MaxPool2d.*AvgPool2d"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), (1, 6, 6), "BatchNorm2d"),
    (nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)), (3,), "Dropout.*model.eval"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.LayerNorm(4)), (1, 6, 6), "LayerNorm"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, dilation=2)), (1, 6, 6), "dilation"),
    (_Branchy(), (3,), "torch.fx cannot trace"),
])
def test_lift_errors_name_the_module(model, shape, match):
    with pytest.raises(LiftError, match=match) as info:
        wn.lift(model, shape)
    assert "monte_carlo_kernel" in str(info.value)


def test_lift_layer_norm_and_eval_dropout():
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(7, 2)).double().eval()
    lifted = wn.lift(model, (5,))
    assert [type(l).__name__ for l in lifted.layers] == ["Dense", "LayerNorm", "Relu", "Dense"]
    x = _x(3, 5)
    torch.testing.assert_close(lifted.module_from(model)(x), model(x), rtol=1e-12, atol=1e-12)
