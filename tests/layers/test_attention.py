"""GlobalSelfAttention and position-wise Dense: exact identities, masks, blocks, errors."""

import pytest
import torch

import widenets as wn
from tests.gradients import assert_grad_matches_central_differences


def _x(n=4, c=3, length=6, seed=0):
    return torch.randn(n, c, length, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _close(a, b, rtol=1e-12, atol=1e-14):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ position-wise Dense
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_dense_on_positions_is_a_1x1_convolution(parameterization):
    x = _x(3, c=3, length=5)
    x2 = torch.randn(2, 3, 5, dtype=torch.float64)
    kw = dict(b_std=0.2, parameterization=parameterization)
    dense = wn.serial(wn.Dense(6, w_std=1.3, **kw), wn.Relu(), wn.Dense(4, **kw),
                      wn.GlobalAvgPool(), wn.Dense(1, **kw))
    conv = wn.serial(wn.Conv(6, 1, w_std=1.3, **kw), wn.Relu(), wn.Conv(4, 1, **kw),
                     wn.GlobalAvgPool(), wn.Dense(1, **kw))
    for a, b in ((dense.kernel(x, x2), conv.kernel(x, x2)), (dense.kernel(x), conv.kernel(x))):
        _close(a.nngp, b.nngp)
        _close(a.ntk, b.ntk)
    # the finite layer is nn.Linear on the channels of every position
    mod = wn.Dense(4, b_std=0.5, parameterization=parameterization).module((3, 5), seed=0,
                                                                           dtype=torch.float64)
    w = mod.weight.reshape(4, 3) * mod.w_scale
    b = mod.bias * mod.b_scale
    _close(mod(x), (x.transpose(1, 2) @ w.T + b).transpose(1, 2))


# ------------------------------------------------------------------ exact identities
def test_equal_logits_softmax_is_average_pooling():
    # σ_Q = 0: every logit is 0, softmax gives 1/L (1/|valid| with a mask) to every key, so the
    # layer is global average pooling followed by a Dense(σ_O σ_V) at every position:
    # K'(p, p') = σ² mean K + σb² and Θ' = σ² (mean Θ + 2 mean K) + σb²
    x = _x()
    head = wn.serial(wn.Dense(8, b_std=0.3), wn.Relu(), wn.Dense(8))
    att = wn.GlobalSelfAttention(5, 8, 8, 2, w_query_std=0.0, w_value_std=1.5, w_out_std=0.8,
                                 b_std=0.2)
    for mask in (None, torch.arange(6) < torch.tensor([[6], [2], [5], [1]])):
        k = wn.serial(head, att).kernel(x, mask=mask)
        pooled = wn.serial(head, wn.GlobalAvgPool()).kernel(x, mask=mask)
        s2, b2 = (1.5 * 0.8) ** 2, 0.04
        want_nngp = s2 * pooled.nngp + b2
        want_ntk = s2 * (pooled.ntk + 2 * pooled.nngp) + b2
        for p in range(6):
            for q in range(6):
                _close(k.nngp[:, :, p, q], want_nngp)
                _close(k.ntk[:, :, p, q], want_ntk)


def test_standard_equal_logits_softmax_is_pooling_then_two_dense_layers():
    # standard parameterization, σ_Q = 0: f = (x̄ W_V) W_O + b at every position (x̄ the mean
    # over the valid keys), i.e. GlobalAvgPool, Dense(V, σ_V, no bias) and Dense(O, σ_O, σ_b),
    # both standard: Θ' = σO²σV² Θ̄ + (C σO² + V σV²) K̄ + 1 (docs/math.md §attention-standard).
    # Exact to rounding, so any wrong factor fails: C and V swapped (C = 8, V = 6), the NTK
    # parameterization's 2σO²σV², a missing +1 of the bias or a missing σO²σV² on Θ.
    x = _x()
    std = dict(parameterization="standard")
    head = wn.serial(wn.Dense(8, b_std=0.3, **std), wn.Relu(), wn.Dense(8, **std))
    att = wn.GlobalSelfAttention(5, 8, 6, 2, w_query_std=0.0, w_value_std=1.5, w_out_std=0.8,
                                 b_std=0.2, **std)
    dense = wn.serial(wn.GlobalAvgPool(), wn.Dense(6, w_std=1.5, b_std=None, **std),
                      wn.Dense(5, w_std=0.8, b_std=0.2, **std))
    for mask in (None, torch.arange(6) < torch.tensor([[6], [2], [5], [1]])):
        k = wn.serial(head, att).kernel(x, mask=mask)
        want = wn.serial(head, dense).kernel(x, mask=mask)
        for p in range(6):
            for q in range(6):
                _close(k.nngp[:, :, p, q], want.nngp)
                _close(k.ntk[:, :, p, q], want.ntk)
    # the NNGP is that of the NTK parameterization (the same function at initialization)
    ntk_par = wn.GlobalSelfAttention(5, 8, 6, 2, w_value_std=1.5, w_out_std=0.8, b_std=0.2)
    std_par = wn.GlobalSelfAttention(5, 8, 6, 2, w_value_std=1.5, w_out_std=0.8, b_std=0.2,
                                     **std)
    _close(wn.serial(head, std_par).kernel(x).nngp, wn.serial(head, ntk_par).kernel(x).nngp)


def test_standard_module_equal_logits_gradients():
    # the finite standard layer with σ_Q = 0 (tied W_QK = 0: logits and their gradient vanish)
    # is f(x) = (x̄ W_V) W_O + b: its empirical NTK
    # (autograd over all parameters, output channel 0) is, exactly,
    #     Σ_v W_O[v, 0]² x̄·x̄' + Σ_v (x̄ W_V)_v (x̄' W_V)_v + 1,
    # and the weights have the standard variances σV²/C, σO²/V (checked on their sample
    # variances: 4096 draws each, within 10%; a missing 1/fan-in is off by 8x or more)
    c, v = 8, 64
    att = wn.GlobalSelfAttention(3, 64, v, 4, w_query_std=0.0, w_value_std=1.5, w_out_std=0.8,
                                 b_std=0.2, parameterization="standard")
    mod = att.module((c, 6), seed=0, dtype=torch.float64)
    x = _x(3, c=c)
    out = mod(x)
    xbar = x.mean(-1)                                                 # (n, C)
    w_v = mod.w_value.permute(1, 0, 2).reshape(c, v)                  # heads side by side
    _close(out, (xbar @ w_v @ mod.w_out + mod.bias)[..., None].expand_as(out))
    params = list(mod.parameters())
    jac = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        out[i, 0, 0], params, retain_graph=True, allow_unused=True) if g is not None])
        for i in range(3)])
    feats = xbar @ w_v
    want = (mod.w_out[:, 0] ** 2).sum() * xbar @ xbar.T + feats @ feats.T + 1
    _close(jac @ jac.T, want)
    assert abs(float(mod.w_value.detach().var()) / (1.5 ** 2 / c) - 1) < 0.1
    assert abs(float(mod.w_out.detach().var()) / (0.8 ** 2 / v) - 1) < 0.15
    assert float(mod.bias.detach().abs().max()) < 1.0          # N(0, 0.2²), not N(0, 1)
    # tied W_QK ~ N(0, σQσK/C); untied (1/√d logits) W_K ~ N(0, σK²/C), W_Q ~ N(0, σQ²/C)
    kw = dict(w_query_std=1.5, w_key_std=0.6, parameterization="standard")
    tied = wn.GlobalSelfAttention(3, 512, 8, 4, **kw).module((c, 6), seed=1)
    untied = wn.GlobalSelfAttention(3, 512, 8, 4, linear_scaling=False, **kw).module((c, 6),
                                                                                    seed=1)
    for w, var in ((tied.w_key, 1.5 * 0.6 / c), (untied.w_key, 0.6 ** 2 / c),
                   (untied.w_query, 1.5 ** 2 / c)):
        assert abs(float(w.detach().var()) / var - 1) < 0.1


def test_identity_attention_with_equal_logits_is_average_pooling():
    # inputs constant over positions with |x|²/C = 1 and σ_Q σ_K = 1/L: identity attention
    # weighs every key by exactly 1/L, i.e. global average pooling (then σ_O σ_V)
    c, length = 4, 5
    x = torch.randn(3, c, 1, dtype=torch.float64)
    x = (x / x.norm(dim=1, keepdim=True) * c ** 0.5).expand(3, c, length).contiguous()
    att = wn.GlobalSelfAttention(2, 4, 4, 1, w_query_std=1.0 / length, mechanism="identity")
    net = wn.serial(att, wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    pool = wn.serial(wn.GlobalAvgPool(), wn.Dense(2), wn.Relu(), wn.Dense(1))
    _close(net.kernel(x).nngp, pool.kernel(x).nngp)
    # and the finite module: identity weights 1/L up to the key-weight fluctuation O(1/√d)
    wide = wn.GlobalSelfAttention(1, 4096, 4, 1, w_query_std=1.0 / length, mechanism="identity")
    mod = wide.module((c, length), seed=0, dtype=torch.float64)
    f = mod(x)
    assert torch.allclose(f, f[..., :1].expand_as(f), atol=1e-12)   # same at every position


def test_mask_all_true_is_no_mask_and_padding_does_not_matter():
    decay = lambda d: 0.5 ** d  # noqa: E731
    net = wn.serial(
        wn.GlobalSelfAttention(8, 8, 8, 2, b_std=0.1, pos_emb="sum", pos_emb_decay=decay,
                               value_pos_emb=True), wn.Relu(),
        wn.GlobalSelfAttention(8, 8, 8, 2, mechanism="relu", pos_emb="concat"), wn.Gelu(),
        wn.GlobalAvgPool(), wn.Dense(1))
    x = _x()
    k = net.kernel(x)
    full = net.kernel(x, mask=torch.ones(4, 6, dtype=torch.bool))
    _close(full.nngp, k.nngp, rtol=1e-14, atol=0)      # the same sums in another order
    _close(full.ntk, k.ntk, rtol=1e-14, atol=0)
    # a sequence padded to length 6 with a mask = the short sequence (the embedding covariance
    # of the first positions does not depend on the length)
    lengths = (6, 4, 2, 5)
    mask = torch.arange(6) < torch.tensor(lengths)[:, None]
    padded = net.kernel(x, mask=mask)
    garbage = x.clone()
    for i, n in enumerate(lengths):
        garbage[i, :, n:] = 7.0
    _close(net.kernel(garbage, mask=mask).ntk, padded.ntk)
    for i, n in enumerate(lengths):
        short = net.kernel(x[i:i + 1, :, :n])
        _close(padded.nngp[i, i], short.nngp[0, 0])
        _close(padded.ntk[i, i], short.ntk[0, 0])
    # cross pairs of different lengths (x2 with its own mask): padding to 6 or to 4 agrees
    cross = net.kernel(x[:2], x[2:], mask=(mask[:2], mask[2:]))
    short = net.kernel(x[1:2, :, :4], x[2:3, :, :4], mask=(mask[1:2, :4], mask[2:3, :4]))
    _close(cross.ntk[1, 0], short.ntk[0, 0])


def test_module_mask_equals_short_sequence():
    # without positional embeddings the parameters do not depend on the length
    net = wn.serial(wn.GlobalSelfAttention(8, 8, 8, 2, b_std=0.1), wn.Relu(),
                    wn.GlobalSelfAttention(4, 8, 8, 2, mechanism="abs"), wn.GlobalAvgPool())
    x = _x()
    mask = torch.arange(6) < torch.tensor([[6], [3], [1], [4]])
    mod = net.module((3, 6), seed=0, dtype=torch.float64)
    out = mod(x, mask=mask)
    for i, n in enumerate((6, 3, 1, 4)):
        _close(out[i], mod(x[i:i + 1, :, :n])[0])


def test_blocks_and_images():
    net = wn.serial(wn.Dense(8), wn.Relu(), wn.GlobalSelfAttention(8, 8, 8, 2), wn.Relu(),
                    wn.GlobalAvgPool(), wn.Dense(1))
    x = _x(5)
    mask = torch.arange(6) < torch.tensor([[6], [3], [1], [4], [2]])
    whole = net.kernel(x, mask=mask)
    blocks = net.kernel(x, mask=mask, batch_size=2)
    _close(blocks.nngp, whole.nngp)
    _close(blocks.ntk, whole.ntk)
    # images: without positional embeddings only the set of positions matters
    img = x.reshape(5, 3, 2, 3)
    _close(net.kernel(img, mask=mask.reshape(5, 2, 3)).ntk, whole.ntk)
    assert net.module((3, 2, 3), seed=0)(img.float()).shape == (5, 1)


def test_positional_embedding_covariance_of_the_module():
    # the embedding e = z Lᵀ has covariance R(p, q) = decay(|p - q|): check L Lᵀ = R
    att = wn.GlobalSelfAttention(2, 4, 4, 1, pos_emb="sum", pos_emb_decay=lambda d: 0.6 ** d)
    mod = att.module((2, 3, 4), seed=0, dtype=torch.float64)
    coords = torch.tensor([[i, j] for i in range(3) for j in range(4)], dtype=torch.float64)
    r = 0.6 ** torch.cdist(coords, coords)
    _close(mod.pos_root @ mod.pos_root.T, r)


def test_linear_scaling_false_builds_a_module_and_refuses_the_kernel():
    att = wn.GlobalSelfAttention(4, 8, 8, 2, linear_scaling=False)
    net = wn.serial(att, wn.GlobalAvgPool(), wn.Dense(1))
    x = _x()
    with pytest.raises(ValueError, match=r"GlobalSelfAttention.kernel: linear_scaling=False "
                                         r".*no closed-form kernel.*wn.monte_carlo_kernel"):
        net.kernel(x)
    mod = net.module((3, 6), seed=0, dtype=torch.float64)
    assert mod[0].w_query is not None and mod[0].w_query.shape == mod[0].w_key.shape
    est = wn.monte_carlo_kernel(net, x, n_samples=1, get="ntk")
    assert est.shape == (4, 4) and torch.isfinite(est).all()


def test_attention_errors():
    with pytest.raises(ValueError, match=r"GlobalSelfAttention: heads=3 must divide "
                                         r"key_channels=8"):
        wn.GlobalSelfAttention(4, 8, 9, 3)
    with pytest.raises(ValueError, match=r"heads=2 must divide value_channels=5"):
        wn.GlobalSelfAttention(4, 8, 5, 2)
    with pytest.raises(ValueError, match=r"mechanism must be one of .*got 'tanh'"):
        wn.GlobalSelfAttention(4, 8, 8, 2, mechanism="tanh")
    with pytest.raises(ValueError, match=r"pos_emb must be one of .*got 'rope'"):
        wn.GlobalSelfAttention(4, 8, 8, 2, pos_emb="rope")
    with pytest.raises(ValueError, match=r"GlobalSelfAttention: parameterization must be one "
                                         r"of \('ntk', 'standard'\), got 'mup'"):
        wn.GlobalSelfAttention(4, 8, 8, 2, parameterization="mup")
    with pytest.raises(ValueError, match=r"w_key_std must be a finite number >= 0"):
        wn.GlobalSelfAttention(4, 8, 8, 2, w_key_std=-1.0)
    x = _x()
    bad_decay = wn.GlobalSelfAttention(4, 8, 8, 2, pos_emb="sum",
                                       pos_emb_decay=lambda d: torch.where(d == 0, 1.0, -0.9))
    with pytest.raises(ValueError, match=r"pos_emb_decay must give a positive semidefinite"):
        bad_decay.kernel(x)
    with pytest.raises(ValueError, match=r"GlobalSelfAttention.kernel: inputs must be "
                                         r"channels-first"):
        wn.GlobalSelfAttention(4, 8, 8, 2).kernel(torch.randn(3, 5, dtype=torch.float64))
    net = wn.serial(wn.GlobalSelfAttention(4, 8, 8, 2), wn.GlobalAvgPool())
    with pytest.raises(ValueError, match=r"mask must have shape \(n, P\) = \(4, 6\).*\(4, 5\)"):
        net.kernel(x, mask=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"mask must be a boolean torch.Tensor"):
        net.kernel(x, mask=torch.ones(4, 6))
    with pytest.raises(ValueError, match=r"mask has no valid position for input\(s\) \[2\]"):
        m = torch.ones(4, 6, dtype=torch.bool)
        m[2] = False
        net.kernel(x, mask=m)
    with pytest.raises(ValueError, match=r"mask\[1\] must have shape"):
        net.kernel(x, x, mask=(torch.ones(4, 6, dtype=torch.bool),
                               torch.ones(3, 6, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"mask= is not supported by Conv"):
        wn.serial(wn.Conv(4, 3), wn.GlobalAvgPool()).kernel(
            x, mask=torch.ones(4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"GlobalSelfAttention.module: mask must have shape"):
        net.module((3, 6))(x.float(), mask=torch.ones(4, 5, dtype=torch.bool))


def test_lift_multihead_attention_names_the_difference():
    from torch import nn

    from widenets.lift import LiftError

    class Block(nn.Module):
        def __init__(self, **kw):
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, **kw)

        def forward(self, x):
            return self.att(x, x, x)[0]

    with pytest.raises(LiftError, match=r"lift: MultiheadAttention at 'att' \(it scales the "
                                        r"logits by 1/√head_dim.*linear_scaling=True\).*"
                                        r"GlobalSelfAttention\(\.\.\., linear_scaling=False\)"):
        wn.lift(Block(batch_first=True, bias=False), (5, 8))
    with pytest.raises(LiftError, match=r"batch_first=False.*biases on the query/key/value"):
        wn.lift(Block(), (5, 8))


def test_standard_hyperparameter_gradients_match_central_differences():
    # tensor σ's in the standard parameterization: autograd through C_v σO² + V σV² and the
    # logits against central differences (a σ instead of σ² in the fan-in terms would fail)
    names = ["0.w_key_std", "0.w_value_std", "0.w_query_std", "0.w_out_std", "0.b_std"]
    build = lambda: wn.serial(  # noqa: E731
        wn.GlobalSelfAttention(8, 8, 6, 2, b_std=0.1, parameterization="standard"), wn.Relu(),
        wn.GlobalAvgPool(), wn.Dense(1, parameterization="standard"))
    x = _x(3, c=2)
    start = torch.tensor([0.9, 0.3, 1.1, 0.8, 0.2], dtype=torch.float64)

    def f(v):
        k = build().with_hyperparameters(dict(zip(names, v.unbind()))).kernel(x)
        return k.nngp.sum() + k.ntk.sum()

    g = assert_grad_matches_central_differences(f, start)
    assert float(g[1]) != 0.0 and float(g[3]) != 0.0
