"""Bare parameters used in forward (bare.py): their per-input gradients come from the recorded
cotangents (eq. 3), checked against autograd on the probe; a wrong rewrite falls back."""


import widenets as wn
from widenets.empirical._target import resolve_target
from widenets.empirical.structured import make_plan

from .zoo import ZOO, reference_ntk


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_a_wrong_bare_factor_is_caught_by_the_probe(monkeypatch):
    """Mutation: every bare factor scaled by 1.01 (a wrong sum over the broadcast axes would do
    the same kind of damage). The probe's comparison with autograd must reject all bare
    parameters, which then take the autograd path: the kernel stays exact (1e-10; the mutation
    itself would be ~1e-2 off)."""
    import widenets.empirical.structured as st

    real = st.bare_factor

    def wrong(*args, **kwargs):
        f = real(*args, **kwargs)
        if f is not None:
            f.c = f.c * 1.01
        return f

    monkeypatch.setattr(st, "bare_factor", wrong)
    make, x1, x2, _ = ZOO["bare_parameters"]
    model, _ = make()
    plan = make_plan(resolve_target(model, None, func="test"), x1[:2])
    assert not any(layer.structure.kind == "bare" for layer in plan.known)
    assert {"cls", "pos", "gain"} <= set(plan.fallback)
    out = wn.empirical_ntk(model, x1, x2, implementation="structured", mode="full")
    assert _rel(out, reference_ntk(model, None, x1, x2)) < 1e-10


def test_learned_positions_leave_nothing_to_autograd():
    """A token transformer with learned positions (sequence-first, so the positions broadcast
    along axis 1): every parameter is structured, none needs per-input autograd Jacobians."""
    make, x1, _, _ = ZOO["token_transformer_encoder"]
    model, _ = make()
    plan = make_plan(resolve_target(model, None, func="test"), x1[:2])
    assert plan.fallback == []
    pos = [layer for layer in plan.known if layer.roles.get("value") == "pos"]
    assert len(pos) == 1 and pos[0].batch_axis == 1


def test_bare_parameter_in_float32_matches_float64():
    """float32 through the bare path agrees with the float64 reference to float32 rounding
    (1e-4; a missing use of `gain` would be O(1))."""
    make, x1, x2, _ = ZOO["bare_parameters"]
    model, _ = make()
    ref = reference_ntk(model, None, x1, x2)
    out = wn.empirical_ntk(model.float(), x1.float(), x2.float(), implementation="structured",
                           mode="full")
    assert _rel(out.double(), ref) < 1e-4
