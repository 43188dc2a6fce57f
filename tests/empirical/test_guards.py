"""The random-projection guards that catch wrong vmap batching rules must accept correct
batched gradients and reject ones attributed to the wrong input."""

import torch
from torch import nn

from widenets.empirical import jacobian as jac_mod
from widenets.empirical import structured as st
from widenets.empirical._target import resolve_target
from widenets.empirical.attention import no_fused_attention

DT = torch.float64


def setup():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).to(DT)
    x = torch.randn(6, 3, dtype=DT)
    return m, x


def test_cotangent_guard():
    m, x = setup()
    target = resolve_target(m, None, func="test")
    plan = st.make_plan(target, x[:2])
    records = [[] for _ in plan.known]
    with torch.enable_grad(), st._capture(plan.known, records, target.params):
        out = target(target.params, x)
    deltas = st._deltas(records)
    grads = st.output_basis_grads(out, deltas)
    assert st._projection_matches(out, deltas, grads)
    swapped = [g.clone() for g in grads]
    swapped[0][:, [0, 1]] = swapped[0][:, [1, 0]]           # rows of two inputs exchanged
    assert not st._projection_matches(out, deltas, swapped)
    mixed = [g.clone() for g in grads]
    mixed[1][[0, 1]] = mixed[1][[1, 0]]                      # two outputs exchanged
    assert not st._projection_matches(out, deltas, mixed)


def test_jacobian_guard():
    m, x = setup()
    target = resolve_target(m, None, func="test")
    names = list(target.params)
    good = jac_mod._looped_jacobians(target, names, x)
    assert jac_mod._projection_matches(target, names, x, good)
    bad = [j.clone() for j in good]
    bad[2][[0, 3]] = bad[2][[3, 0]]
    assert not jac_mod._projection_matches(target, names, x, bad)


def test_batched_backward_kept_for_sequence_first_layers():
    """The probe's check of the vmapped backward (make_plan) knows each recorded tensor's batch
    axis: a sequence-first transformer (inputs (L, n, d) to its Linear/LayerNorm layers,
    positions added along axis 1) keeps the batched pass. Mutation caught: checking every
    tensor as if its batch axis were 0 rejects the correct batched cotangents (or fails on the
    shapes), and the engine then loops over the outputs (same kernel, O backward passes)."""
    from .zoo import ZOO

    for name in ("transformer_seq_first", "token_transformer_encoder"):
        make, x1, _, _ = ZOO[name]
        model, params = make()
        target = resolve_target(model, params, func="test")
        with no_fused_attention():
            plan = st.make_plan(target, x1[:2])
            assert plan.batched_checked and plan.batched_backward, name
            st.StructuredEngine(target, plan, budget=10**7).prepare(x1)
        assert plan.batched_checked and plan.batched_backward, name


def test_probe_check_of_batched_backward(monkeypatch):
    """make_plan checks the vmapped backward pass on the probe (`_batched_matches`): it accepts
    the right cotangents and rejects rows of two inputs exchanged (mutation: a batching rule
    that mixes up inputs, or a check that compares nothing); when it fails, the plan loops
    over the outputs and the kernel stays exact (mutation: ignoring the failed check would
    keep the batched pass)."""
    import widenets as wn

    m, x = setup()
    target = resolve_target(m, None, func="test")
    plan = st.make_plan(target, x[:2])
    assert plan.batched_checked and plan.batched_backward
    records = [[] for _ in plan.known]
    with torch.enable_grad(), st._capture(plan.known, records, target.params):
        out = target(target.params, x[:2])
    deltas = st._deltas(records)
    v = torch.randn(out.shape, dtype=DT)
    vs = torch.zeros((2, *v.shape), dtype=DT)
    vs[0, 0], vs[1, 1] = v[0], v[1]
    plain = [torch.stack(g) for g in zip(*[torch.autograd.grad(out, deltas, vs[r],
                                                               retain_graph=True)
                                            for r in range(2)], strict=True)]
    assert st._batched_matches(out, deltas, vs, plain)
    swapped = [p.clone() for p in plain]
    swapped[0][:, [0, 1]] = swapped[0][:, [1, 0]]
    assert not st._batched_matches(out, deltas, vs, swapped)

    monkeypatch.setattr(st, "_batched_matches", lambda *args: False)
    plan = st.make_plan(target, x[:2])
    assert not plan.batched_backward
    got = wn.empirical_ntk(m, x, implementation="structured", mode="full")
    want = wn.empirical_ntk(m, x, implementation="jacobian", mode="full")
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_rows_match_is_the_block_diagonal_comparison():
    """`_rows_match(j, ref)` is `_close(j, want)` with want[i, r] = ref[r] if i = r else 0, the
    verification's criterion. Mutations caught: ignoring the off-diagonal rows (a gradient
    attributed to the wrong input), or the diagonal (a wrong factor), or comparing rows in
    the wrong order."""
    torch.manual_seed(0)
    k, p = 3, 40
    ref = torch.randn(k, p, dtype=DT)
    j = torch.zeros(k, k, p, dtype=DT)
    j[torch.arange(k), torch.arange(k)] = ref
    assert st._rows_match(j, ref, 1e-8)
    off = j.clone()
    off[0, 1] = 1e-3 * ref[1]                      # a small leak to another input
    assert not st._rows_match(off, ref, 1e-8)
    assert st._rows_match(off, ref, 1e-2)          # within a loose tolerance: same as _close
    want = j
    for bad in (off, j * 1.001, j[[1, 0, 2]]):
        assert st._rows_match(bad, ref, 1e-8) == st._close(bad, want, 1e-8)
    assert not st._rows_match(j[:, :2], ref, 1e-8)  # wrong shape
