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
    """The first block's check of the vmapped backward knows each recorded tensor's batch axis:
    a sequence-first transformer (inputs (L, n, d) to its Linear/LayerNorm layers, positions
    added along axis 1) keeps the batched pass. Mutation caught: checking every tensor as if
    its batch axis were 0 rejects the correct batched cotangents (or fails on the shapes), and
    the engine then loops over the outputs (same kernel, O backward passes)."""
    from .zoo import ZOO

    for name in ("transformer_seq_first", "token_transformer_encoder"):
        make, x1, _, _ = ZOO[name]
        model, params = make()
        target = resolve_target(model, params, func="test")
        plan = st.make_plan(target, x1[:2])
        assert plan.batched_backward and not plan.batched_checked
        with no_fused_attention():
            st.StructuredEngine(target, plan, budget=10**7).prepare(x1)
        assert plan.batched_checked and plan.batched_backward, name
