"""The catalogue layers from the `widenets kernel --net` grammar, inside FanOut/parallel, in
both spatial layouts, and through wn.tiles (the tiled kernel equals the direct one)."""

import numpy as np
import pytest
import torch

import widenets as wn
from widenets.tiles.cli import main
from widenets.tiles.spec import parse_spec


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


FLAT = ("dense(16, w_std=1.2, b_std=0.1) cos(1.1, b=0.9) dense(16) rbf(gamma=0.5) dense(16) "
        "gabor dense(16) exp(0.5, 0.4) dense(16) gaussian(b=-0.5) dense(16) sign dense(16) "
        "sigmoid_like dense(16) monomial(2) dense(16) rectified_monomial(3) dense(16) "
        "exp_normalized(gamma=0.7) dropout(0.2) dense(1)")


def test_flat_spec_builds_the_catalogue():
    net = parse_spec(FLAT)
    names = [type(lay).__name__ for lay in net.layers]
    assert [n for n in names if n != "Dense"] == ["Cos", "Rbf", "Gabor", "Exp", "Gaussian", "Sign", "SigmoidLike",
                                "Monomial", "RectifiedMonomial", "ExpNormalized", "Dropout"]
    hand = wn.serial(
        wn.Dense(16, w_std=1.2, b_std=0.1), wn.Cos(1.1, b=0.9), wn.Dense(16), wn.Rbf(gamma=0.5),
        wn.Dense(16), wn.Gabor(), wn.Dense(16), wn.Exp(0.5, 0.4), wn.Dense(16),
        wn.Gaussian(b=-0.5), wn.Dense(16), wn.Sign(), wn.Dense(16), wn.SigmoidLike(),
        wn.Dense(16), wn.Monomial(2), wn.Dense(16), wn.RectifiedMonomial(3), wn.Dense(16),
        wn.ExpNormalized(gamma=0.7), wn.Dropout(0.2), wn.Dense(1))
    x = _x(5, 4)
    assert torch.equal(net.kernel(x, get="ntk"), hand.kernel(x, get="ntk"))
    # Polynomial takes a list: the JSON form
    poly = parse_spec('[{"layer": "dense", "args": [4]}, {"layer": "polynomial", '
                      '"args": [[0.5, 1.0, -0.2]]}, "hermite(1)"]')
    assert isinstance(poly.layers[1], wn.Polynomial) and poly.layers[1].coef == (0.5, 1.0, -0.2)
    with pytest.raises(ValueError, match="unknown layer 'faninprod'"):
        parse_spec("dense(3) faninprod")


SPATIAL = ("conv(6, 3, w_std=1.3, b_std=0.1) relu conv_transpose(6, 3, stride=2, "
           "padding=SAME, w_std=1.2) erf conv_local(6, 3, padding=SAME) relu "
           "sum_pool(2, stride=1, padding=SAME) conv(4, 2) relu global_sum_pool dense(1)")


def test_spatial_spec_and_tiles_command(tmp_path, capsys):
    net = parse_spec(SPATIAL)
    assert [type(lay).__name__ for lay in net.layers] == [
        "Conv", "Relu", "ConvTranspose", "Erf", "ConvLocal", "Relu", "SumPool", "Conv", "Relu",
        "GlobalSumPool", "Dense"]
    x = _x(7, 2, 5)
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "k.zarr"
    assert main(["--net", SPATIAL, "--data", str(tmp_path / "x.npy"), "--out", str(out),
                 "--tile", "3", "--get", "both", "--no-progress"]) == 0
    got = wn.tiles.load_kernel(out)
    ref = net.kernel(x, get=("nngp", "ntk"))
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-13, atol=1e-14)


def test_dropout_through_tiles_keeps_the_diagonal_convention(tmp_path):
    net = parse_spec("dense(8, b_std=0.2) relu dropout(0.5) dense(1)")
    x = _x(9, 3)
    run = wn.tiles.compute(net, x, store=tmp_path / "d.zarr", batch_size=4, get="nngp")
    del run
    got = wn.tiles.load_kernel(tmp_path / "d.zarr")
    torch.testing.assert_close(got, net.kernel(x, get="nngp"), rtol=1e-14, atol=0)


@pytest.mark.parametrize("layout", ["diagonal", "full"])
def test_catalogue_layers_inside_fanout_and_both_layouts(layout):
    """Branches with the new layers; the diagonal layout equals the diagonal of the full one
    (Flatten readout), exactly as for the other spatial layers."""
    branch_a = wn.serial(wn.ConvTranspose(4, 2, padding="SAME", w_std=1.2), wn.Gabor(),
                         wn.ConvLocal(4, 3, padding="SAME"))
    branch_b = wn.serial(wn.Conv(4, 3, w_std=1.1, b_std=0.2), wn.Rbf(0.3),
                         wn.Conv(4, 1))
    net = wn.serial(wn.Conv(4, 3, w_std=1.4, b_std=0.1), wn.FanOut(2),
                    wn.parallel(branch_a, branch_b), wn.FanInProd(), wn.Dropout(0.25),
                    wn.Flatten(), wn.Dense(1))
    x = _x(4, 2, 5)
    k = net.kernel(x, layout=layout)
    kf = net.kernel(x, layout="full")
    torch.testing.assert_close(k.ntk, kf.ntk, rtol=1e-13, atol=0)
    assert torch.equal(k.ntk, k.ntk.T)
    assert torch.linalg.eigvalsh(k.ntk).min() > -1e-10 * k.ntk.diagonal().max()
