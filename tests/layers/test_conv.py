"""Conv: analytic kernel vs Monte Carlo, exact special cases, geometry of the finite module."""

import math

import pytest
import torch
import torch.nn.functional as F

import widenets as wn


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.slow
def test_conv2d_same_then_valid_stride2_gap_ntk_param(mc_check):
    x = _x(4, 2, 4, 4)

    def make(c, o):
        return wn.serial(wn.Conv(c, 3, w_std=1.5, b_std=0.1), wn.Relu(),
                         wn.Conv(c, 3, stride=2, padding="VALID", w_std=1.3, b_std=0.2),
                         wn.Relu(), wn.GlobalAvgPool(), wn.Dense(o, w_std=1.2, b_std=0.1))
    mc_check(make, x, (2, 4, 4))


@pytest.mark.slow
def test_conv1d_circular_standard_param_flatten(mc_check):
    x = _x(4, 3, 6)

    def make(c, o):
        return wn.serial(
            wn.Conv(c, 3, padding="CIRCULAR", w_std=1.4, b_std=0.3, parameterization="standard"),
            wn.Erf(),
            wn.Conv(c, 2, stride=2, padding="SAME", w_std=1.1, b_std=0.1,
                    parameterization="standard"),
            wn.Relu(), wn.Flatten(), wn.Dense(o, w_std=1.0, parameterization="standard"))
    mc_check(make, x, (3, 6))


@pytest.mark.slow
def test_conv1d_same_stride2_and_explicit_padding_gap(mc_check):
    x = _x(4, 2, 7)

    def make(c, o):
        return wn.serial(wn.Conv(c, 4, stride=2, padding="SAME", w_std=1.5, b_std=0.2),
                         wn.Gelu(), wn.Conv(c, 3, padding=2, w_std=1.2, b_std=None),
                         wn.Relu(), wn.GlobalAvgPool(), wn.Dense(o))
    mc_check(make, x, (2, 7))


@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_1x1_conv_on_1x1_images_equals_dense(param):
    x = _x(5, 7, 1, 1)
    conv = wn.serial(wn.Conv(9, 1, w_std=1.3, b_std=0.2, parameterization=param), wn.Relu(),
                     wn.Conv(4, 1, w_std=0.9, b_std=0.1, parameterization=param),
                     wn.GlobalAvgPool())
    dense = wn.serial(wn.Dense(9, w_std=1.3, b_std=0.2, parameterization=param), wn.Relu(),
                      wn.Dense(4, w_std=0.9, b_std=0.1, parameterization=param))
    kc, kd = conv.kernel(x), dense.kernel(x.reshape(5, 7))
    torch.testing.assert_close(kc.nngp, kd.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kc.ntk, kd.ntk, rtol=1e-12, atol=1e-14)
    kc2 = conv.kernel(x[:2], x[2:])
    torch.testing.assert_close(kc2.ntk, kd.ntk[:2, 2:], rtol=1e-12, atol=1e-14)


def _cnn(padding):
    return wn.serial(wn.Conv(8, 3, padding=padding, w_std=1.4, b_std=0.1), wn.Relu(),
                     wn.Conv(8, 3, padding=padding, w_std=1.4, b_std=0.1), wn.Relu(),
                     wn.GlobalAvgPool(), wn.Dense(1))


def test_circular_padding_with_gap_is_shift_invariant():
    x, y = _x(3, 2, 5, 5), _x(2, 2, 5, 5, seed=1)
    shifted = torch.roll(x, shifts=(2, -1), dims=(2, 3))
    k, ks = _cnn("CIRCULAR").kernel(x, y), _cnn("CIRCULAR").kernel(shifted, y)
    torch.testing.assert_close(ks.nngp, k.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ks.ntk, k.ntk, rtol=1e-12, atol=1e-14)
    # the check can fail: zero padding sees the shift
    kz, kzs = _cnn("SAME").kernel(x, y), _cnn("SAME").kernel(shifted, y)
    assert (kz.ntk - kzs.ntk).abs().max() > 1e-3


@pytest.mark.parametrize("padding,torch_kw", [
    ("SAME", dict(padding="same")), ("VALID", dict(padding=0)), (1, dict(padding=1)),
    ("CIRCULAR", dict(padding=1, padding_mode="circular"))])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_module_matches_torch_conv(padding, torch_kw, stride):
    """The finite module (standard parameterization) is torch's convolution with the same
    weights. With stride 2, SAME and CIRCULAR follow the TensorFlow padding rule instead (see
    test_same_stride2_output_shape_and_padding_rule)."""
    if stride == 2 and padding in ("SAME", "CIRCULAR"):
        pytest.skip("torch has no padding='same' with strides")
    x = _x(2, 3, 6, 5).float()
    mod = wn.Conv(4, 3, stride=stride, padding=padding, parameterization="standard",
                  b_std=0.5).module((3, 6, 5), seed=0)
    ref = torch.nn.Conv2d(3, 4, 3, stride=stride, **torch_kw)
    with torch.no_grad():
        ref.weight.copy_(mod.weight)
        ref.bias.copy_(mod.bias)
    torch.testing.assert_close(mod(x), ref(x))


def test_same_stride2_output_shape_and_padding_rule():
    mod = wn.Conv(2, 4, stride=2, padding="SAME").module((1, 7), seed=0)
    x = _x(1, 1, 7).float()
    out = mod(x)
    assert out.shape == (1, 2, 4)                       # ceil(7 / 2)
    # total padding (4 - 1) * 2 + 4 - 7 = 3: 1 left, 2 right
    ref = F.conv1d(F.pad(x, (1, 2)), mod.weight) [..., ::2] * mod.w_scale
    torch.testing.assert_close(out, ref)


def test_conv_init_statistics_standard_param():
    mod = wn.Conv(64, 3, w_std=2.0, b_std=0.5, parameterization="standard").module((32, 4, 4),
                                                                                   seed=0)
    fan_in = 32 * 9
    assert abs(mod.weight.std().item() * math.sqrt(fan_in) - 2.0) < 0.05
    assert abs(mod.bias.std().item() - 0.5) < 0.15


def test_conv_errors():
    with pytest.raises(ValueError, match="Conv.kernel: input must be channels-first"):
        wn.Conv(3, 3).kernel(_x(4, 5))
    with pytest.raises(ValueError, match="kernel_size has 2 entries but the input has 1"):
        wn.Conv(3, (3, 3)).kernel(_x(4, 2, 5))
    with pytest.raises(ValueError, match="padding must be one of"):
        wn.Conv(3, 3, padding="same-ish")
    with pytest.raises(ValueError, match="smaller than the window"):
        wn.Conv(3, 5, padding="VALID").kernel(_x(2, 1, 3, 3))
    with pytest.raises(ValueError, match="layout must be one of"):
        wn.Conv(3, 3).kernel(_x(2, 1, 3, 3), layout="diag")
