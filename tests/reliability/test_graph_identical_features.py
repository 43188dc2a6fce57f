"""Inputs with identical node features but different graphs (or masks) are different inputs.

Found when merging issues 12 and 17: the identical-input record (made from the features alone)
made activations write self-pair values onto pairs whose graphs differ, giving an indefinite
graph NTK. Reference: the same kernel with the features perturbed by a negligible amount
(no identical rows, so no record), which must agree to rounding."""

import torch

import widenets as wn


def _net():
    return wn.serial(wn.Dense(16, w_std=1.5, b_std=0.1), wn.Relu(), wn.Aggregate(),
                     wn.Dense(16, w_std=1.5), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))


def test_identical_features_different_graphs():
    g = torch.Generator().manual_seed(0)
    n, p = 4, 5
    x = torch.ones(n, 3, p, dtype=torch.float64)            # every graph: the same features
    adj = (torch.rand(n, p, p, generator=g) < 0.5).to(torch.float64)
    k = _net().kernel(x, pattern=adj)
    ref = _net().kernel(x + 1e-12 * torch.randn(n, 3, p, generator=g, dtype=torch.float64),
                        pattern=adj)
    # a self-pair value written on (i, j) with different graphs is off by O(1), not 1e-10
    torch.testing.assert_close(k.ntk, ref.ntk, rtol=1e-8, atol=1e-10)
    assert torch.linalg.eigvalsh(k.ntk).min() > -1e-10 * k.ntk.diagonal().max()


def test_identical_features_different_masks():
    x = torch.randn(1, 2, 6, dtype=torch.float64).expand(3, 2, 6).contiguous()   # 3 equal
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]],
                        dtype=torch.bool)
    net = wn.serial(wn.Dense(8), wn.Erf(), wn.GlobalAvgPool(), wn.Dense(8), wn.Erf(), wn.Dense(1))
    k = net.kernel(x, mask=mask)
    ref = net.kernel(x + 1e-12 * torch.randn(3, 2, 6, dtype=torch.float64), mask=mask)
    torch.testing.assert_close(k.ntk, ref.ntk, rtol=1e-8, atol=1e-10)
