"""Issue 17 item 9: a kernel that underflows raises, like one that overflows.

Rule (docs/math.md §underflow): FloatingPointError when an output variance K(x, x) is subnormal,
or exactly 0 for an input x that is not all zeros, unless the network has a weight layer with
w_std = 0 (whose output does not depend on the input). Before the fix ReLU with w_std = 1 at
depth 160 in float32 returned an all-zero kernel without a word.
"""

import pytest
import torch

import widenets as wn


def _relu_net(depth, w_std=1.0, b_std=0.0):
    layers = [m for _ in range(depth) for m in (wn.Dense(16, w_std=w_std, b_std=b_std),
                                                 wn.Relu())]
    return wn.serial(*layers, wn.Dense(1, w_std=w_std))


def test_deep_relu_underflow_raises_naming_function_layer_and_fix():
    x = torch.randn(3, 5)
    with pytest.raises(FloatingPointError,
                       match=r"Serial\.kernel: the kernel underflowed in torch\.float32.*"
                             r"from layer \d+ of 321.*dtype=torch\.float64"):
        _relu_net(160).kernel(x, dtype=torch.float32)


def test_same_network_in_float64_is_exact():
    """The reference: in float64 the variance halves per layer exactly (K' = K/2 for ReLU
    with w_std = 1, b_std = 0), so the output variance is |x|²/d · 2^-160."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64)
    k = _relu_net(160).kernel(x)
    want = (x * x).sum(1) / 5 * 2.0 ** -160
    torch.testing.assert_close(k.nngp.diagonal(), want, rtol=1e-12, atol=0)


def test_subnormal_output_raises():
    """Depth where the float32 variance is subnormal but not yet zero (2^-130)."""
    x = torch.ones(2, 4)
    with pytest.raises(FloatingPointError, match="underflowed.*subnormal"):
        _relu_net(130).kernel(x, dtype=torch.float32)


def test_legitimate_zeros_are_returned():
    """Zero inputs with b_std = 0 have kernel 0, and a w_std = 0 layer zeroes everything:
    exact zeros, not underflow."""
    zero = _relu_net(3).kernel(torch.zeros(2, 4))
    assert torch.equal(zero.nngp, torch.zeros(2, 2)) and torch.equal(zero.ntk,
                                                                     torch.zeros(2, 2))
    net = wn.serial(wn.Dense(4, w_std=0.0), wn.Relu(), wn.Dense(1))
    k = net.kernel(torch.randn(2, 3, dtype=torch.float64))
    assert torch.equal(k.nngp, torch.zeros(2, 2, dtype=torch.float64))
    # a zero input next to nonzero ones: its zero row is legitimate, the rest is finite
    x = torch.cat([torch.zeros(1, 4), torch.randn(2, 4)]).double()
    k = _relu_net(3).kernel(x)
    assert float(k.nngp[0, 0]) == 0.0 and bool((k.nngp.diagonal()[1:] > 0).all())
