"""trace_rows orders each input's Jacobian entries the same way whatever the memory layout of
the cotangent (a convolution's positions-fast view, a linear layer's features-fast tensor, a
merged block's contiguous copy), so two sides of a contraction built from differently laid out
factors still pair entry with entry."""

import torch

from widenets.empirical.factors import Factor, jacobian_contract, jacobian_form, trace_rows

DT = torch.float64


def test_trace_rows_independent_of_cotangent_layout():
    """Mutation caught: choosing the product's orientation by the strides and letting the entry
    order follow it (entries (d_in, O, d_out) for one layout, (O, d_out, d_in) for the other)
    makes the cross term Σ_p rows1[p] rows2[p] pair different parameters: off by O(1)."""
    torch.manual_seed(0)
    o, n, g, t, d, k = 3, 4, 2, 5, 6, 7
    a = torch.randn(n, g, k, t, dtype=DT).transpose(2, 3)            # (n, G, T, k), T fast
    c_t_fast = torch.randn(o, n, g, d, t, dtype=DT).transpose(3, 4)   # (O, n, G, T, d), T fast
    c_d_fast = c_t_fast.contiguous()                                  # same values, d fast
    assert c_t_fast.stride(3) < c_t_fast.stride(4) and c_d_fast.stride(4) < c_d_fast.stride(3)
    f1 = Factor("dense", a, c_t_fast, 0.5, k)
    f2 = Factor("dense", a.contiguous(), c_d_fast, 0.5, k)
    r1, r2 = trace_rows(f1), trace_rows(f2)
    assert r1.shape == r2.shape == (n, o * g * d * k)
    assert torch.allclose(r1, r2, rtol=1e-12, atol=1e-12)
    # against the Jacobian in the parameter's own layout (eq. 1), contracted over outputs
    j = jacobian_form(f1)
    want = jacobian_contract(j, j, "trace")
    assert torch.allclose(r1 @ r2.T, want, rtol=1e-12, atol=1e-12)
