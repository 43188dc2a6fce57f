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


def test_row_products_symmetric_half():
    """row_products(r, r) computes 3/4 of the products and mirrors the rest. Mutation caught:
    mirroring without the transpose, or leaving the last rows' block, is an O(1) error; odd
    n checks the uneven halves."""
    from widenets.empirical.factors import row_products

    torch.manual_seed(1)
    for n in (3, 128, 129):
        r = torch.randn(n, 50, dtype=DT)
        assert torch.allclose(row_products(r, r), r @ r.T, rtol=1e-13, atol=1e-13)
        r2 = torch.randn(4, 50, dtype=DT)
        assert torch.allclose(row_products(r, r2), r @ r2.T, rtol=1e-13, atol=1e-13)


def test_symmetric_trace_against_autograd(monkeypatch):
    """x2=None in trace mode with the split of `row_products` lowered to 8 rows (the default
    128 would need that many inputs; the zoo's 5 do not reach it): structured and jacobian
    against the per-input autograd reference, to 1e-10. Mutation caught: a wrong mirrored
    block in the symmetric contraction of the Jacobian rows (structured's Jacobian form and
    stored Jacobians, jacobian's contraction)."""
    import widenets as wn
    from widenets.empirical import factors

    monkeypatch.setattr(factors, "SYMMETRIC_SPLIT_MIN", 8)

    from .zoo import ZOO, reference_ntk

    for name in ("cnn_pool_stride", "token_transformer_encoder", "resnet_batchnorm_eval"):
        make, x1, x2, _ = ZOO[name]
        model, params = make()
        x = torch.cat([x1, x2])
        ref = reference_ntk(model, params, x, x).diagonal(dim1=2, dim2=3).mean(-1)
        for impl in ("structured", "jacobian"):
            out = wn.empirical_ntk(model, x, params=params, implementation=impl)
            assert float((out - ref).norm() / ref.norm()) < 1e-10, (name, impl)
