"""The models of benchmarks/empirical_ntk.py (at tiny sizes, float64): every implementation
equals the per-input autograd reference to 1e-10 relative (rounding ~1e-15; a missing term,
factor or transposition is O(1)), so the benchmark times exact kernels."""

import pytest
import torch

import widenets as wn

from .zoo import MODELS, benchmark_module, reference_ntk


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("empirical_ntk")


def models(bench):
    torch.manual_seed(0)
    tr = MODELS.TokenTransformer(vocab=20, d=8, heads=2, ff=12, layers=2, length=5, out=3)
    rn = MODELS.resnet18(width=2, out=3)
    with torch.no_grad():
        for bn in (m for m in rn.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
    return {"transformer": (tr.double().eval(), torch.randint(0, 20, (3, 5)),
                            torch.randint(0, 20, (2, 5))),
            "resnet18": (rn.double().eval(), torch.randn(3, 3, 8, 8, dtype=torch.float64),
                         torch.randn(2, 3, 8, 8, dtype=torch.float64)),
            "mlp": (MODELS.mlp(6, "cpu", torch.float64), torch.randn(3, 784, dtype=torch.float64),
                    torch.randn(2, 784, dtype=torch.float64))}


@pytest.mark.parametrize("name", ["transformer", "resnet18", "mlp"])
def test_benchmark_models_exact(bench, name):
    model, x1, x2 = models(bench)[name]
    ref = reference_ntk(model, None, x1, x2)
    for impl in ("auto", "structured", "jacobian", "ntvp"):
        full = wn.empirical_ntk(model, x1, x2, implementation=impl, mode="full")
        assert float((full - ref).norm() / ref.norm()) < 1e-10, impl
    # the recipe and the floor helper of the benchmark: the recipe is the same kernel
    recipe = bench.torch_func_ntk(model, x1)
    want = reference_ntk(model, None, x1, x1).diagonal(dim1=2, dim2=3).mean(-1)
    assert float((recipe - want).norm() / want.norm()) < 1e-10


def test_resnet18_in_parts_all_modes(bench, monkeypatch):
    """The memory path of the benchmark's ResNet-18 (batch_size=None with a budget smaller
    than the state of all inputs: several parts, blocks of inputs, Jacobian-stored
    normalization parameters) in every mode equals the per-input autograd reference.
    Mutations caught (O(1) relative): a part dropped or added twice, blocks merged out of
    order, a stored Jacobian laid out for the wrong mode."""
    import widenets.empirical.ntk as ntk

    monkeypatch.setattr(ntk, "DEFAULT_BUDGET_BYTES", 40_000 * 8)
    parts = []
    real = ntk.run_parts
    monkeypatch.setattr(ntk, "run_parts", lambda engine, *a, **k: parts.append(
        engine.parts(5, 20_000 * 8)) or real(engine, *a, **k))
    model, x1, x2 = models(bench)["resnet18"]
    ref = reference_ntk(model, None, x1, x2)
    for mode in ("full", "diagonal", "trace"):
        out = wn.empirical_ntk(model, x1, x2, implementation="structured", mode=mode)
        want = ref if mode == "full" else ref.diagonal(dim1=2, dim2=3)
        want = want.mean(-1) if mode == "trace" else want
        assert float((out - want).norm() / want.norm()) < 1e-10, mode
    assert len(parts[0]) > 1
