"""Issue 17 item 6: identical inputs computed as a pair must equal the exact diagonal.

arccos at c = K12/√(K11K22) ≈ 1 turns a rounding error ε in c into an error √(2ε) in θ: at
depth 20 the NTK of two identical inputs was 2e-8 (float64) and 4.5e-3 (float32) away from the
exact self-pair value, so a training set with duplicates gave gp_inference garbage. Identical
inputs are now detected once (Kernel.same_input) and every activation writes the exact diagonal
values on those pairs (docs/math.md §near-diagonal). These tests fail on the old code.
"""

import pytest
import torch

import widenets as wn

TOL = {torch.float64: 1e-13, torch.float32: 2e-6}


def _deep(act, depth=20):
    layers = [m for _ in range(depth) for m in (wn.Dense(64, w_std=1.4, b_std=0.1), act)]
    return wn.serial(*layers, wn.Dense(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("act", [wn.Relu(), wn.LeakyRelu(0.1), wn.Abs(), wn.Erf(), wn.Gelu()],
                         ids=repr)
def test_duplicated_rows_equal_the_exact_diagonal(act, dtype):
    """x1 holds rows 0 and 2 twice: K(x1)[i, dup(i)] must equal K(x1)[i, i] (the exact
    diagonal) to rounding: 1e-13 relative in float64, 2e-6 in float32 (the old error was
    2e-8 and 4.5e-3 for ReLU)."""
    torch.manual_seed(0)
    base = torch.randn(4, 7, dtype=torch.float64)
    x = torch.cat([base, base[[0, 2]]])
    k = _deep(act).kernel(x, dtype=dtype)
    for t in (k.nngp, k.ntk):
        for i, j in ((0, 4), (2, 5)):
            assert abs(float(t[i, j] - t[i, i])) <= TOL[dtype] * abs(float(t[i, i])), (i, j)
            assert abs(float(t[j, i] - t[j, j])) <= TOL[dtype] * abs(float(t[j, j]))
    # distinct pairs are untouched: the same numbers as without the duplicates
    k0 = _deep(act).kernel(base, dtype=dtype)
    torch.testing.assert_close(k.ntk[:4, :4], k0.ntk, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_shared_rows_between_x1_and_x2(dtype):
    """K(x1, x2) where x2 repeats rows of x1: those entries equal K(x1)'s exact diagonal."""
    torch.manual_seed(1)
    x1 = torch.randn(5, 6, dtype=torch.float64)
    x2 = torch.cat([torch.randn(2, 6, dtype=torch.float64), x1[[3, 1]]])
    net = _deep(wn.Relu())
    cross = net.kernel(x1, x2, dtype=dtype)
    diag = net.kernel(x1, dtype=dtype)
    for t, d in ((cross.nngp, diag.nngp), (cross.ntk, diag.ntk)):
        for i, j in ((3, 2), (1, 3)):
            assert abs(float(t[i, j] - d[i, i])) <= TOL[dtype] * abs(float(d[i, i]))


def test_duplicates_in_spatial_inputs():
    """The same for a convolutional network (full layout, through pooling)."""
    torch.manual_seed(2)
    base = torch.randn(3, 2, 5, dtype=torch.float64)
    x = torch.cat([base, base[:1]])
    net = wn.serial(wn.Conv(8, 3, padding="SAME"), wn.Relu(), wn.Conv(8, 3, padding="SAME"),
                    wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    k = net.kernel(x, dtype=torch.float32)
    for t in (k.nngp, k.ntk):
        assert abs(float(t[0, 3] - t[0, 0])) <= 2e-6 * abs(float(t[0, 0]))
