"""GlobalSelfAttention: finite attention layers converge to the infinite-width kernel.

Monte Carlo per position pair (tests/layers/position_mc.py): NNGP from a 512-channel readout,
NTK from autograd over all parameters, each averaged over freshly seeded networks with 8 heads,
1024 key channels and 512 value channels. Inputs share a component across inputs and flip its
sign across positions, so every entry of the kernel is of the same order (the relative
Frobenius error is not dominated by near-zero entries) and logits take both signs (abs and relu
differ from identity).

Tolerance 0.12 relative Frobenius (measured 0.02-0.08 at these sizes); each test also asserts
that the mutations it must catch move the kernel by more than 1.5x the tolerance: dropping
σ_Qσ_K from the logits (-> 0.22-0.56), σ_Oσ_V (0.30), the factor 2 of the NTK (0.50), the
positional embeddings (checked per case).
"""

import pytest
import torch

import widenets as wn

from .position_mc import mc_kernels, rel_error

TOL = 0.12
HEADS, KEY, VALUE = 8, 8 * 128, 8 * 64


def _inputs(n=3, c=128, length=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    signs = torch.tensor([1.0, -1.0] * (length // 2), dtype=torch.float64)
    shared = torch.randn(1, c, 1, generator=g, dtype=torch.float64) * signs
    return shared + 0.8 * torch.randn(n, c, length, generator=g, dtype=torch.float64)


def _attention(out, **kw):
    base = dict(w_query_std=1.5, w_value_std=1.2, b_std=0.2)
    return wn.GlobalSelfAttention(out, KEY, VALUE, HEADS, **{**base, **kw})


def _check(make, x, *, n_seeds=4, mask=None, mutations=()):
    k = make(1).kernel(x, mask=mask)
    nngp, _ = mc_kernels(make(512), x, n_seeds=n_seeds, mask=mask, want_ntk=False)
    _, ntk = mc_kernels(make(1), x, n_seeds=n_seeds, mask=mask)
    err_nngp, err_ntk = rel_error(nngp, k.nngp), rel_error(ntk, k.ntk)
    assert err_nngp < TOL, f"NNGP relative error {err_nngp:.3f} >= {TOL}"
    assert err_ntk < TOL, f"NTK relative error {err_ntk:.3f} >= {TOL}"
    for name, wrong in mutations:      # the test must be able to see these mistakes
        kw = wrong()
        moved = max(rel_error(kw.nngp, k.nngp), rel_error(kw.ntk, k.ntk))
        assert moved > 1.5 * TOL, f"mutation {name} moves the kernel by only {moved:.3f}"
    return k


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["softmax", "identity", "abs", "relu"])
def test_attention_converges(mechanism):
    x = _inputs()
    make = lambda o, **kw: _attention(o, mechanism=mechanism, **kw)  # noqa: E731
    k = _check(make, x, mutations=[
        ("no σQσK", lambda: make(1, w_query_std=1.0).kernel(x)),
        ("no σOσV", lambda: make(1, w_value_std=1.0).kernel(x)),
    ])
    # the factor 2 of Θ' (value and output weights both trained): halving it is caught
    half = (k.ntk - 0.04) / 2 + 0.04
    assert rel_error(half, k.ntk) > 2 * TOL


@pytest.mark.slow
@pytest.mark.parametrize("pos_emb, value_pos_emb", [("sum", True), ("concat", False)])
def test_attention_with_positional_embeddings_converges(pos_emb, value_pos_emb):
    # small inputs so that the embeddings (variance 1) weigh in; 512 channels because the
    # embedding is shared by all heads: its channel average converges in C only
    x = 0.3 * _inputs(c=512)
    decay = (lambda d: torch.exp(-d)) if pos_emb == "sum" else None
    make = lambda o, **kw: _attention(  # noqa: E731
        o, **{**dict(pos_emb=pos_emb, pos_emb_decay=decay, value_pos_emb=value_pos_emb), **kw})
    _check(make, x, mutations=[
        ("no positional embedding", lambda: _attention(1).kernel(x)),
        ("independent positions", lambda: make(1, pos_emb_decay=None).kernel(x))
        if decay is not None else
        ("embedding in values", lambda: make(1, value_pos_emb=True).kernel(x)),
    ])


@pytest.mark.slow
def test_attention_after_dense_with_mask_converges():
    # Θ of the Dense before attention enters as G1 Θ G2ᵀ; padded keys are excluded
    x = _inputs(c=16, length=4)
    mask = torch.tensor([[True] * 4, [True, False, True, False], [False, True, False, False]])
    make = lambda o, **kw: wn.serial(  # noqa: E731
        wn.Dense(256, w_std=1.2), _attention(o, mechanism="relu", **kw))
    _check(make, x, mask=mask, mutations=[
        ("mask ignored", lambda: make(1).kernel(x)),
    ])


# ------------------------------------------------------------------ standard parameterization
# Θ' = σO²σV² G1 Θ_v G2ᵀ + (C_v σO² + V σV²) G1 K_v G2ᵀ + 1 (docs/math.md §attention-standard):
# the empirical NTK of the finite standard layers (weights N(0, σ²/fan-in)), averaged over
# seeds. The σ's are chosen unequal so that the fan-in factors are visible: each test asserts
# the mutation it must catch moves the kernel by more than 1.5x the tolerance.

def _standard(out, **kw):
    base = dict(w_query_std=1.5, w_value_std=1.2, w_out_std=0.8, b_std=0.2,
                parameterization="standard")
    return wn.GlobalSelfAttention(out, KEY, VALUE, HEADS, **{**base, **kw})


def _own_term_removed(k, c, w_value_std, b_std=0.2):
    """k.ntk less c σO² G K_v Gᵀ, with G K_v Gᵀ read off the NNGP = σO²σV² G K_v Gᵀ + σb²."""
    return k.ntk - c * (k.nngp - b_std ** 2) / w_value_std ** 2


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["softmax", "relu"])
def test_standard_attention_converges(mechanism):
    # measured 0.015 (softmax), 0.03 (relu); swapping the fan-ins C = 128 and V = 512 moves
    # the kernel by 0.37, the NTK parameterization's kernel is off by 1.0
    x = _inputs()
    make = lambda o, **kw: _standard(o, mechanism=mechanism, **kw)  # noqa: E731
    _check(make, x, mutations=[
        ("fan-ins swapped", lambda: make(1, w_value_std=0.8, w_out_std=1.2).kernel(x)),
        ("NTK parameterization", lambda: make(1, parameterization="ntk").kernel(x)),
    ])


@pytest.mark.slow
def test_standard_attention_concat_embedding_in_values_converges():
    # value_pos_emb with "concat": the values read C_v = 2C channels (inputs and embedding),
    # so the value weights contribute 2C σO² G K_v Gᵀ. σO = 2, σV = 0.5 make that term
    # dominate: using C instead of 2C moves the kernel by 0.44 (measured error 0.04)
    x = 0.3 * _inputs()
    c = x.shape[1]
    make = lambda o, **kw: _standard(  # noqa: E731
        o, **{**dict(pos_emb="concat", value_pos_emb=True, w_value_std=0.5, w_out_std=2.0),
              **kw})
    k = _check(make, x, mutations=[
        ("embedding left out of the values", lambda: make(1, value_pos_emb=False).kernel(x)),
    ])
    wrong = _own_term_removed(k, c, 0.5)
    assert rel_error(wrong, k.ntk) > 1.5 * TOL


@pytest.mark.slow
def test_standard_attention_after_dense_converges_with_width():
    # a standard Dense of width n feeds the attention (C_v = n, Θ of the Dense through
    # G1 Θ G2ᵀ), with a mask; the error falls with the width (measured 0.26 at n = 64,
    # 0.04 at n = 256: finite-width corrections of the Dense layer); σO = 2, σV = 0.5 make
    # the value weights' n σO² term dominate, so dropping it (or the mask) is caught
    x = _inputs(c=16, length=4)
    mask = torch.tensor([[True] * 4, [True, False, True, False], [False, True, False, False]])
    errors = []
    for n in (64, 256):
        make = lambda o, n=n, **kw: wn.serial(  # noqa: E731
            wn.Dense(n, w_std=1.2, b_std=0.1, parameterization="standard"),
            _standard(o, mechanism="relu", w_value_std=0.5, w_out_std=2.0, **kw))
        k = make(1).kernel(x, mask=mask)
        _, ntk = mc_kernels(make(1), x, n_seeds=4, mask=mask)
        errors.append(rel_error(ntk, k.ntk))
    assert errors[1] < TOL, f"NTK relative error {errors[1]:.3f} >= {TOL} at width 256"
    assert errors[1] < errors[0], f"no convergence with width: {errors}"
    assert rel_error(make(1).kernel(x).ntk, k.ntk) > 1.5 * TOL          # mask ignored
    assert rel_error(_own_term_removed(k, 256, 0.5), k.ntk) > 1.5 * TOL  # C_v = n dropped
