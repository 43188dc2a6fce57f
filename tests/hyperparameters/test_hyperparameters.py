"""wn.hyperparameters / with_hyperparameters, and gradients of kernels with respect to them.

Gradients are checked against central finite differences of the kernel itself (float64): an
independent evaluation that needs no autograd.
"""

import pytest
import torch

import widenets as wn
from tests.gradients import assert_grad_matches_central_differences


def _net(act=wn.Erf):
    return wn.serial(wn.Dense(64, w_std=1.3, b_std=0.2), act(),
                     wn.Dense(64, w_std=1.1, b_std=0.3), act(),
                     wn.Dense(1, w_std=0.9, b_std=0.1))


def test_names_values_and_domains():
    net = wn.serial(wn.Dense(8, w_std=1.5, b_std=None), wn.Relu(),
                    wn.serial(wn.Dense(4, w_std=2.0), wn.LeakyRelu(0.2)), wn.Dense(1))
    hp = wn.hyperparameters(net)
    # b_std=None (no bias) is not a hyperparameter; nested serial gives "2.0.w_std"
    assert list(hp)[:2] == ["0.w_std", "2.0.w_std"]
    assert hp["0.w_std"] == 1.5 and hp["2.0.w_std"] == 2.0 and hp["3.w_std"] == 1.0
    assert wn.hyperparameter_domains(net)["0.w_std"] == "positive"


def test_with_hyperparameters_copies_and_ties():
    net = _net()
    new = net.with_hyperparameters({"*.w_std": 2.0, "4.b_std": 0.7})
    hp_new, hp_old = wn.hyperparameters(new), wn.hyperparameters(net)
    assert all(hp_new[k] == 2.0 for k in hp_new if k.endswith("w_std"))
    assert hp_new["4.b_std"] == 0.7 and hp_new["0.b_std"] == 0.2
    assert hp_old["0.w_std"] == 1.3                      # the original is unchanged
    # the copy computes the kernel of the new values: same as building it directly
    direct = wn.serial(wn.Dense(64, w_std=2.0, b_std=0.2), wn.Erf(),
                       wn.Dense(64, w_std=2.0, b_std=0.3), wn.Erf(),
                       wn.Dense(1, w_std=2.0, b_std=0.7))
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(new.kernel(x).ntk, direct.kernel(x).ntk, rtol=0, atol=0)


@pytest.mark.parametrize("values, match", [
    ({"9.w_std": 1.0}, "matches no hyperparameter"),
    ({"0.w_std": -1.0}, "w_std must be a finite number >= 0"),
    ({"0.w_std": torch.ones(2)}, "0-d floating tensor"),
    ({"0.w_std": float("nan")}, "finite"),
])
def test_with_hyperparameters_errors(values, match):
    with pytest.raises(ValueError, match=match):
        _net().with_hyperparameters(values)


def test_tensor_hyperparameters_build_float_modules():
    s = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    net = wn.serial(wn.Dense(16, w_std=s), wn.Relu(), wn.Dense(1, w_std=s))
    model = net.module((3,), seed=0)
    assert model(torch.randn(2, 3)).shape == (2, 1)     # σ entered as a number


def _flat_params(net):
    names = list(wn.hyperparameters(net))
    vals = torch.tensor([float(v) for v in wn.hyperparameters(net).values()],
                        dtype=torch.float64)
    return names, vals


def _kernel_functional(net, names, x, get):
    # a fixed random contraction of the kernel matrix: every entry's gradient matters
    weights = torch.randn(x.shape[0], x.shape[0], generator=torch.Generator().manual_seed(3),
                          dtype=torch.float64)

    def f(vals):
        new = net.with_hyperparameters(dict(zip(names, vals.unbind())))
        return (new.kernel(x, get=get) * weights).sum()
    return f


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_gradients_match_central_differences(get):
    net = _net(wn.Erf)
    names, vals = _flat_params(net)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = _kernel_functional(net, names, x, get)
    v = vals.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(v), v)
    h = 1e-5
    fd = torch.stack([(f(vals + h * e) - f(vals - h * e)) / (2 * h)
                      for e in torch.eye(len(vals), dtype=torch.float64)])
    # a gradient off by any factor (e.g. σ instead of σ², a missing chain-rule term through
    # the bias) misses this by far more than the O(h²) difference error
    torch.testing.assert_close(grad, fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("build, names", [
    (lambda: wn.serial(wn.Conv(4, 3, padding="SAME"), wn.Relu(), wn.AvgPool(2), wn.Flatten(),
                       wn.Dense(1)), ["0.w_std", "0.b_std"]),
    (lambda: wn.serial(wn.ConvTranspose(4, 3, stride=2), wn.Relu(), wn.Flatten(), wn.Dense(1)),
     ["0.w_std", "0.b_std"]),
    (lambda: wn.serial(wn.ConvLocal(4, 3), wn.Relu(), wn.Flatten(), wn.Dense(1)),
     ["0.w_std", "0.b_std"]),
    (lambda: wn.serial(wn.GlobalSelfAttention(8, 8, 8, 2, b_std=0.1), wn.Relu(),
                       wn.GlobalAvgPool(), wn.Dense(1)),
     ["0.w_key_std", "0.w_value_std", "0.w_query_std", "0.w_out_std", "0.b_std"]),
])
def test_spatial_layer_gradients_match_central_differences(build, names):
    """σ's of convolutions (window sums with a tensor scale), transposed and local
    convolutions and attention, through the full spatial layout, against differences."""
    x = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    start = torch.tensor([0.9, 0.3, 1.1, 0.8, 0.2][:len(names)], dtype=torch.float64)
    assert set(names) <= set(wn.hyperparameters(build()))

    def f(v):
        k = build().with_hyperparameters(dict(zip(names, v.unbind()))).kernel(x)
        return k.nngp.sum() + k.ntk.sum()

    assert_grad_matches_central_differences(f, start)
