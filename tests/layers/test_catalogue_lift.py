"""wn.lift for the functional forms, nn.SiLU and nn.ConvTranspose1d/2d (issue 11): the lifted
graph's layers, its finite twin with the model's weights (same forward, exactly), the torch
init scales, and the refusals."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import widenets as wn
from widenets.lift import LiftError


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(5, 8), nn.Linear(8, 2)
        self.b = nn.ModuleList([nn.Linear(8, 8) for _ in range(6)])

    def forward(self, x):
        h = F.leaky_relu(self.a(x), 0.2)
        h = F.softplus(self.b[0](h), beta=2.0)
        h = F.gelu(self.b[1](h), approximate="tanh")
        h = F.silu(self.b[2](h))
        h = torch.relu(self.b[3](h))
        h = F.dropout(torch.tanh(self.b[4](h)), 0.3, training=False)
        return self.c(F.gelu(self.b[5](h)))


def test_lift_functional_forms():
    model = _Functional().double()
    lifted = wn.lift(model, (5,), w_std=1.2, b_std=0.1)
    names = [type(lay).__name__ for lay in lifted.layers]
    assert names == ["Dense", "LeakyRelu"] + ["Dense", "Elementwise"] * 3 + [
        "Dense", "Relu", "Dense", "Elementwise", "Dense", "Gelu", "Dense"]
    assert lifted.layers[1].alpha == 0.2
    x = _x(4, 5)
    torch.testing.assert_close(lifted.module_from(model)(x), model(x), rtol=1e-13, atol=1e-13)
    # the quadrature activations are the named torch functions (softplus with beta = 2)
    z = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for lay, ref in zip(lifted.layers[3:8:2], (F.softplus(z, beta=2.0),
                                             F.gelu(z, approximate="tanh"), F.silu(z))):
        torch.testing.assert_close(lay.forward(z), ref)
    assert torch.isfinite(lifted.kernel(x).ntk).all()


class _Pool(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(2, 4, 3, padding=1)
        self.up = nn.ConvTranspose1d(4, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3 * 3, 1)

    def forward(self, x):
        h = F.avg_pool1d(torch.relu(self.c(x)), 2)          # 6 -> 3
        h = torch.tanh(self.up(h))                           # 3 -> (3-1)·2 + 3 - 2 = 5
        h = F.avg_pool1d(h, 3, stride=1, padding=0)          # 5 -> 3
        return self.fc(torch.flatten(h, 1))


def test_lift_avg_pool_function_and_conv_transpose_1d():
    model = _Pool().double()
    lifted = wn.lift(model, (2, 6))
    names = [type(lay).__name__ for lay in lifted.layers]
    assert names == ["Conv", "Relu", "AvgPool", "ConvTranspose", "Elementwise", "AvgPool",
                     "Flatten", "Dense"]
    x = _x(3, 2, 6)
    torch.testing.assert_close(lifted.module_from(model)(x), model(x), rtol=1e-13, atol=1e-13)
    hand = wn.serial(wn.Conv(4, 3, padding=1, w_std=3 ** -0.5, b_std=(3 * 6) ** -0.5,
                             parameterization="standard"), wn.Relu(), wn.AvgPool(2),
                     wn.ConvTranspose(3, 3, stride=2, padding=1, w_std=(4 / 9) ** 0.5,
                                      b_std=(3 * 9) ** -0.5, parameterization="standard"),
                     wn.Elementwise(torch.tanh), wn.AvgPool(3, stride=1), wn.Flatten(),
                     wn.Dense(1, w_std=3 ** -0.5, b_std=(3 * 9) ** -0.5,
                              parameterization="standard"))
    torch.testing.assert_close(lifted.kernel(x).ntk, hand.kernel(x).ntk, rtol=1e-12, atol=0)


def test_lift_conv_transpose_2d_and_torch_init_scale():
    model = nn.Sequential(nn.ConvTranspose2d(48, 64, (3, 2), stride=(2, 1)), nn.SiLU(),
                          nn.Flatten(), nn.Linear(64 * 5 * 3, 1)).double()
    lifted = wn.lift(model, (48, 2, 2))
    up = lifted.layers[0]
    assert isinstance(up, wn.ConvTranspose) and isinstance(lifted.layers[1], wn.Elementwise)
    x = _x(2, 48, 2, 2)
    torch.testing.assert_close(lifted.module_from(model)(x), model(x), rtol=1e-12, atol=1e-12)
    # torch's init: Var W = 1/(3·out·|D|) (fan-in from the weight's axis 1); widenets' σw is
    # relative to in·|D|: the variance of 48·64·6 weights agrees within 5% (std error ~2%);
    # a σw computed with torch's fan-in convention would be off by a factor 48/64
    var = float(model[0].weight.detach().var())
    assert abs(var / (up.w_std ** 2 / (48 * 6)) - 1) < 0.05
    assert abs(up.b_std ** 2 * 3 * 64 * 6 - 1) < 1e-12


def test_lift_refusals():
    with pytest.raises(LiftError, match=r"^lift: ConvTranspose1d at '0' with groups=1, "
                                        r"dilation=\(1,\), output_padding=\(1,\)"):
        wn.lift(nn.Sequential(nn.ConvTranspose1d(2, 2, 3, stride=2, output_padding=1)), (2, 4))

    class Drop(nn.Module):
        def forward(self, x):
            return F.dropout(x, 0.5, training=True)
    with pytest.raises(LiftError, match=r"^lift: F.dropout in training mode"):
        wn.lift(nn.Sequential(nn.Linear(3, 3), Drop()), (3,))
    with pytest.raises(LiftError, match=r"^lift: the function avg_pool1d .* ceil_mode"):
        class P(nn.Module):
            def forward(self, x):
                return F.avg_pool1d(x, 2, ceil_mode=True)
        wn.lift(nn.Sequential(nn.Conv1d(1, 2, 1), P()), (1, 5))
    # eval-mode dropout is the identity
    lifted = wn.lift(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.4), nn.ReLU()).eval(), (3,))
    assert [type(lay).__name__ for lay in lifted.layers] == ["Dense", "Relu"]
    assert math.isfinite(float(lifted.kernel(_x(2, 3)).ntk.sum()))
