"""All empirical-NTK implementations agree with an independent autograd reference on a zoo.

Tolerance 1e-10 relative in float64: the implementations differ only in summation order
(rounding ~1e-15); any missing term, factor or transposition is O(1) relative.
"""

import pytest
import torch

import widenets as wn
from widenets.empirical._target import resolve_target
from widenets.empirical.structured import make_plan

from .zoo import ZOO, reference_ntk

IMPLS = ["jacobian", "ntvp", "structured", "auto"]
TOL = 1e-10


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def references():
    cache = {}

    def get(name):
        if name not in cache:
            make, x1, x2, _ = ZOO[name]
            model, params = make()
            cache[name] = (model, params, x1, x2, reference_ntk(model, params, x1, x2))
        return cache[name]
    return get


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(ZOO))
def test_implementations_match_reference(name, impl, references):
    model, params, x1, x2, ref = references(name)
    full = wn.empirical_ntk(model, x1, x2, params=params, implementation=impl, mode="full")
    assert full.shape == ref.shape and full.dtype == torch.float64
    assert rel(full, ref) < TOL
    # "trace" is the mean over outputs of the diagonal, "diagonal" the diagonal, of "full"
    trace = wn.empirical_ntk(model, x1, x2, params=params, implementation=impl, mode="trace")
    diag = wn.empirical_ntk(model, x1, x2, params=params, implementation=impl, mode="diagonal")
    ref_diag = ref.diagonal(dim1=2, dim2=3)
    assert rel(diag, ref_diag) < TOL
    assert rel(trace, ref_diag.mean(-1)) < TOL
    assert rel(diag, full.diagonal(dim1=2, dim2=3)) < TOL
    assert rel(trace, full.diagonal(dim1=2, dim2=3).mean(-1)) < TOL


@pytest.mark.parametrize("impl", ["jacobian", "ntvp", "structured"])
@pytest.mark.parametrize("name", list(ZOO))
def test_blocked_and_symmetric(name, impl, references):
    model, params, x1, x2, _ = references(name)
    for mode in ("full", "diagonal", "trace"):
        one = wn.empirical_ntk(model, x1, x2, params=params, implementation=impl, mode=mode)
        blocked = wn.empirical_ntk(model, x1, x2, params=params, implementation=impl, mode=mode,
                                   batch_size=2)
        assert rel(blocked, one) < TOL
    # x2=None (upper blocks computed, lower ones mirrored) equals passing x1 twice
    twice = wn.empirical_ntk(model, x1, x1, params=params, implementation=impl, mode="full")
    for bs in (None, 2):
        sym = wn.empirical_ntk(model, x1, params=params, implementation=impl, mode="full",
                               batch_size=bs)
        assert rel(sym, twice) < TOL


@pytest.mark.parametrize("name", list(ZOO))
def test_structured_accelerates_the_known_layers(name):
    """The structured path must really use its layer rules (else agreement proves nothing):
    exactly the expected parameters are handled by Gram products, the rest by autograd."""
    make, x1, _, expected = ZOO[name]
    model, params = make()
    target = resolve_target(model, params, func="test")
    plan = make_plan(target, x1[:2])
    accelerated = {p for layer in plan.known for p in layer.roles.values()}
    assert accelerated == expected
    assert set(plan.fallback) == set(target.params) - expected


@pytest.mark.parametrize("form", ["gram", "jacobian", "sparse"])
@pytest.mark.parametrize("name", ["grouped_dilated_conv", "embedding", "shared_multi_output"])
def test_gram_and_jacobian_forms_agree(name, form, references, monkeypatch):
    """Force each per-layer form: all must give the reference (the automatic choice picks one
    form per layer, so this covers the others). "sparse" (factors.index_contract) applies to
    the embedding only (the others then take "gram"); the embedding model has repeated tokens
    and a padding index, so a pair missed or counted twice, or a padded token that
    contributes, is an O(1) error."""
    import widenets.empirical.structured as st

    monkeypatch.setattr(st, "choose_form", lambda *a, **k: form)
    model, params, x1, x2, ref = references(name)
    for mode in ("full", "trace", "diagonal"):
        out = wn.empirical_ntk(model, x1, x2, params=params, implementation="structured",
                               mode=mode)
        want = ref if mode == "full" else ref.diagonal(dim1=2, dim2=3)
        want = want.mean(-1) if mode == "trace" else want
        assert rel(out, want) < TOL


@pytest.mark.parametrize("name", ["cnn_pool_stride", "embedding", "shared_multi_output",
                                  "layernorm_batchnorm_eval"])
def test_tiny_memory_budget_chunks_but_agrees(name, references, monkeypatch):
    """With a budget of a few hundred elements every intermediate is chunked (one row of x1 at a
    time in the Gram products, one column at a time in ntvp, no cached blocks)."""
    import widenets.empirical.ntk as ntk

    monkeypatch.setattr(ntk, "DEFAULT_BUDGET_BYTES", 800 * 8)
    model, params, x1, x2, ref = references(name)
    for impl in ("structured", "ntvp"):
        out = wn.empirical_ntk(model, x1, x2, params=params, implementation=impl, mode="full",
                               batch_size=2)
        assert rel(out, ref) < TOL


def test_float32_agrees_with_float64():
    """float32 runs every implementation; agreement to float32 rounding (1e-4 relative; a wrong
    term would be O(1))."""
    make, x1, x2, _ = ZOO["cnn_pool_stride"]
    model, _ = make()
    ref = wn.empirical_ntk(model, x1, x2, implementation="jacobian", mode="full")
    model32 = model.float()
    for impl in IMPLS:
        out = wn.empirical_ntk(model32, x1.float(), x2.float(), implementation=impl, mode="full")
        assert out.dtype == torch.float32
        assert rel(out.double(), ref) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(ZOO))
def test_cuda_matches_cpu(name, references):
    """Every implementation on every zoo model, with the model and inputs on the GPU, against
    the CPU autograd reference (1e-10: the same bound as on the CPU)."""
    import copy

    model, params, x1, x2, ref = references(name)
    dev = torch.device("cuda")
    if params is None:                  # a copy: the cached CPU model serves the other tests
        model = copy.deepcopy(model).to(dev)
    else:                               # a function of explicit parameters
        params = {k: v.to(dev) for k, v in params.items()}
    for impl in IMPLS:
        out = wn.empirical_ntk(model, x1.to(dev), x2.to(dev), params=params,
                               implementation=impl, mode="full")
        assert out.device.type == "cuda"
        assert rel(out.cpu(), ref) < TOL, impl


def test_attention_replacement_is_checked_against_the_module(references, monkeypatch):
    """If the recording re-implementation of nn.MultiheadAttention were not the module's own
    function (mutation: its output scaled by 1.01), make_plan must notice on the probe and send
    the attention parameters to the autograd path: the kernel stays exact."""
    import widenets.empirical.structured as st

    real = st.recording_forward

    def wrong(m, record):
        fwd = real(m, record)

        def forward(*args, **kwargs):
            y, w = fwd(*args, **kwargs)
            return y * 1.01, w
        return forward

    monkeypatch.setattr(st, "recording_forward", wrong)
    model, params, x1, x2, ref = references("causal_decoder_layer")
    plan = make_plan(resolve_target(model, params, func="test"), x1[:2])
    assert not any(layer.structure.kind == "attention" for layer in plan.known)
    assert "dec.self_attn.in_proj_weight" in plan.fallback
    out = wn.empirical_ntk(model, x1, x2, implementation="structured", mode="full")
    assert rel(out, ref) < TOL


def test_batch_size_none_blocks_by_the_structured_state(references, monkeypatch):
    """batch_size=None with a budget smaller than the factors of the whole batch: the inputs
    are split into blocks (mutation caught: the old estimate, which counted only the autograd
    part, gave one block here since every parameter is known) and the kernel is unchanged."""
    import widenets.empirical.ntk as ntk

    monkeypatch.setattr(ntk, "DEFAULT_BUDGET_BYTES", 60_000 * 8)
    chosen = []
    real = ntk._auto_block
    monkeypatch.setattr(ntk, "_auto_block", lambda *a: chosen.append(real(*a)) or chosen[-1])
    model, params, x1, x2, ref = references("resnet_batchnorm_eval")
    out = wn.empirical_ntk(model, x1, x2, implementation="structured", mode="full")
    assert chosen and chosen[0] is not None and chosen[0] < x1.shape[0]
    assert rel(out, ref) < TOL


@pytest.mark.parametrize("name", ["resnet_batchnorm_eval", "token_transformer_encoder"])
def test_batch_size_none_in_parts_of_the_state(name, references, monkeypatch):
    """batch_size=None with a budget smaller than the structured state of all inputs: the
    layers are grouped into parts, each part's state computed once for all inputs (in blocks)
    and contracted at once; a part too large for all inputs goes through the blocked
    row x column loop. Modes full/diagonal/trace, x2 given and None, against the reference.
    Mutations caught: a part's contribution dropped or counted twice, blocks merged in the
    wrong order (rows of Θ permuted), a Jacobian-stored parameter in the wrong layout for a
    mode: each is O(1) relative."""
    import widenets.empirical.ntk as ntk
    import widenets.empirical.structured as st

    monkeypatch.setattr(ntk, "DEFAULT_BUDGET_BYTES", 2_000 * 8)
    seen = []
    real = st.StructuredEngine.parts

    def parts(self, n, budget_bytes):
        out = real(self, n, budget_bytes)
        seen.append((out, set(self.as_jacobian)))
        return out

    monkeypatch.setattr(st.StructuredEngine, "parts", parts)
    model, params, x1, x2, ref = references(name)
    twice = reference_ntk(model, params, x1, x1)
    for mode in ("full", "diagonal", "trace"):
        for xb, want in ((x2, ref), (None, twice)):
            out = wn.empirical_ntk(model, x1, xb, params=params, implementation="structured",
                                   mode=mode)
            want = want if mode == "full" else want.diagonal(dim1=2, dim2=3)
            want = want.mean(-1) if mode == "trace" else want
            assert rel(out, want) < TOL, (mode, xb is None)
    parts_, as_jacobian = seen[0]
    assert len(parts_) > 2 and any(p.fits for p in parts_) and not all(p.fits for p in parts_)
    assert as_jacobian            # normalization scales / biases stored as Jacobian rows
