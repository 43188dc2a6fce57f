"""LayerNorm over channels: kernel rule vs Monte Carlo, finite module, errors."""

import pytest
import torch

import widenets as wn


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize("affine", [False, True])
def test_layernorm_over_channels_mc(mc_check, affine):
    """eps = 0.5 is comparable to the variances, so dropping or misplacing it fails, and the
    affine γ, β terms (+K' + 1) are ~50% of the NTK here."""
    x = _x(4, 2, 5)

    def make(c, o):
        return wn.serial(wn.Conv(c, 3, w_std=1.5, b_std=0.3), wn.LayerNorm(eps=0.5,
                                                                           affine=affine),
                         wn.Relu(), wn.Conv(c, 2, stride=2), wn.LayerNorm(eps=0.5, affine=affine),
                         wn.Erf(), wn.GlobalAvgPool(), wn.Dense(o, w_std=1.2))
    mc_check(make, x, (2, 5))


def test_layernorm_module_matches_torch_on_flat_inputs():
    x = _x(3, 6).float()
    mod = wn.LayerNorm(eps=1e-3).module((6,))
    ref = torch.nn.LayerNorm(6, eps=1e-3, elementwise_affine=False)
    torch.testing.assert_close(mod(x), ref(x))
    img = _x(2, 5, 3, 3).float()          # over channels at every position
    ref2 = torch.nn.functional.layer_norm(img.permute(0, 2, 3, 1), (5,), eps=1e-5)
    torch.testing.assert_close(wn.LayerNorm().module((5, 3, 3))(img), ref2.permute(0, 3, 1, 2))


def test_layernorm_kernel_is_normalized_correlation():
    """With eps = 0 the output variances are exactly 1 at every position."""
    x = _x(3, 2, 4, 4)
    k = wn.serial(wn.Conv(4, 3, w_std=2.0, b_std=0.5), wn.LayerNorm(eps=0.0)).kernel(
        x, layout="full")
    diag = k.nngp.diagonal(dim1=0, dim2=1).diagonal(dim1=0, dim2=2).diagonal(dim1=0, dim2=1)
    torch.testing.assert_close(diag, torch.ones_like(diag), rtol=1e-14, atol=1e-14)
    assert (k.nngp.abs() <= 1 + 1e-12).all()


def test_layernorm_refuses_non_gaussian_inputs():
    with pytest.raises(ValueError, match="LayerNorm.kernel: input must be a zero-mean"):
        wn.serial(wn.Dense(4), wn.Relu(), wn.LayerNorm()).kernel(_x(3, 5))
