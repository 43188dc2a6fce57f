"""The kernel engine (widenets.layers.engine): fused units against the eager engine and against
independent references, the automatic choice, the fallback when compiling fails.

Compiled graphs are few and shared by the tests of this module (one per activation kind,
dtype, NTK or not, flat or spatial layout): flat float64 with NTK for ABRelu, Erf, Gelu and
Sin; flat float32 and NNGP-only float64 for ABRelu; spatial float64 for ABRelu.
"""

import math
import threading
import warnings

import pytest
import torch

import widenets as wn
from tests.conftest import rel_err
from widenets.layers import engine
from widenets.layers.base import input_kernel

from .test_monte_carlo import assert_ntk_matches_monte_carlo


@pytest.fixture(scope="module")
def fused_ok():
    if not engine.fused_available(torch.float64):
        pytest.skip("torch.compile does not work here (no C++ compiler?)")


def _counting(monkeypatch):
    """Count the fused units evaluated (wraps every compiled unit)."""
    calls = [0]
    real = engine._compiled_now

    def wrapped(*args):
        fn = real(*args)
        if fn is None:
            return None

        def counted(*a):
            calls[0] += 1
            return fn(*a)
        return counted
    monkeypatch.setattr(engine, "_compiled_now", wrapped)
    return calls


def _d(n, **kw):
    return wn.Dense(n, w_std=1.4, b_std=0.3, **kw)


NETS = {
    "relu": lambda: wn.serial(_d(16), wn.Relu(), _d(16), wn.Relu(), _d(2)),
    "leaky_standard": lambda: wn.serial(_d(16, parameterization="standard"), wn.LeakyRelu(0.2),
                                        _d(3, parameterization="standard")),
    "abs_no_bias": lambda: wn.serial(wn.Dense(8, w_std=1.2, b_std=None), wn.Abs(), _d(1)),
    "erf": lambda: wn.serial(_d(16), wn.Erf(), _d(16), wn.Erf(), _d(1)),
    "gelu": lambda: wn.serial(_d(16), wn.Gelu(), _d(1)),
    "sin": lambda: wn.serial(_d(16), wn.Sin(1.1, 0.9, 0.3), _d(1)),
    # a run through combinators: residual branches and repeat are walked by the engine
    "residual_repeat": lambda: wn.serial(
        _d(16), wn.FanOut(2), wn.parallel(wn.serial(wn.Relu(), _d(16)), wn.Identity()),
        wn.FanInSum(), wn.repeat(wn.serial(wn.Erf(), _d(16)), 2), wn.Relu(), _d(1)),
}


def _inputs(n1=23, n2=9, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(n1, d, generator=g, dtype=torch.float64)
    x1 *= torch.linspace(0.5, 1.6, n1, dtype=torch.float64)[:, None]
    return x1.to(dtype), torch.randn(n2, d, generator=g, dtype=torch.float64).to(dtype)


def _both(net, args, use_engine, **kw):
    use_engine("eager")
    a = net.kernel(*args, **kw)
    use_engine("fused")
    b = net.kernel(*args, **kw)
    return a, b


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("name", sorted(NETS))
def test_fused_equals_eager_float64(name, blocked, use_engine, fused_ok, monkeypatch):
    calls = _counting(monkeypatch)
    net = NETS[name]()
    if blocked:
        net.block_entries = 40        # blocks of 1 and 2 rows (a padded size-1 block too)
    x1, x2 = _inputs()
    for args in ((x1,), (x1, x2)):
        a, b = _both(net, args, use_engine)
        for f in ("nngp", "ntk"):
            # rounding only: 1e-13 of the largest entry (a wrong constant or coefficient in a
            # fused formula, e.g. p[1] with the wrong sign or α = σb², moves entries by > 1e-2)
            err = float((getattr(a, f) - getattr(b, f)).abs().max() / getattr(a, f).abs().max())
            assert err < 1e-13, f"{f}: {err}"
        assert torch.equal(a.cov1, b.cov1)
        if len(args) == 1:
            for t in (b.nngp, b.ntk):
                assert torch.equal(t, t.T)              # exact symmetry
            assert torch.equal(b.nngp.diagonal(), b.cov1)   # exact diagonal
            assert torch.equal(b.ntk.diagonal(), a.ntk.diagonal())
        else:
            assert torch.equal(a.cov2, b.cov2)
    assert calls[0] > 0, "the fused path was not taken"


def test_fused_float32_and_nngp_only(use_engine, fused_ok, monkeypatch):
    calls = _counting(monkeypatch)
    net = NETS["relu"]()
    x1, x2 = _inputs(dtype=torch.float32)
    a, b = _both(net, (x1, x2), use_engine, dtype=torch.float32)
    assert b.ntk.dtype == torch.float32
    assert rel_err(b.ntk, a.ntk) < 1e-6 and rel_err(b.nngp, a.nngp) < 1e-6
    n_float32 = calls[0]
    assert n_float32 > 0
    # get="nngp" compiles the NNGP-only unit; its values are those of the full call
    x1, x2 = _inputs()
    full = net.kernel(x1, x2)
    nngp = net.kernel(x1, x2, get="nngp")
    assert torch.equal(nngp, full.nngp)
    assert calls[0] > n_float32


def _arccos_kernel(k11, k22, k12):
    """ReLU's T and Tdot entry by entry with the math module (independent of both engines):
    Cho & Saul's arc-cosine kernel, docs/math.md §relu."""
    c = max(-1.0, min(1.0, k12 / math.sqrt(k11 * k22)))
    th = math.acos(c)
    t = math.sqrt(k11 * k22) * (math.sin(th) + (math.pi - th) * c) / (2 * math.pi)
    return t, (math.pi - th) / (2 * math.pi)


def test_fused_relu_matches_brute_force_closed_form(use_engine, fused_ok):
    use_engine("fused")
    x1, x2 = _inputs(7, 5)
    w2, b2 = 1.4 ** 2, 0.3 ** 2
    net = wn.serial(_d(4), wn.Relu(), _d(1))
    k = net.kernel(x1, x2)
    d = x1.shape[1]
    ref_nngp = torch.empty(7, 5, dtype=torch.float64)
    ref_ntk = torch.empty(7, 5, dtype=torch.float64)
    for i in range(7):
        for j in range(5):
            k11 = w2 * float(x1[i] @ x1[i]) / d + b2
            k22 = w2 * float(x2[j] @ x2[j]) / d + b2
            k12 = w2 * float(x1[i] @ x2[j]) / d + b2
            t, tdot = _arccos_kernel(k11, k22, k12)
            ref_nngp[i, j] = w2 * t + b2
            ref_ntk[i, j] = ref_nngp[i, j] + w2 * k12 * tdot   # Θ¹ = K¹, docs/math.md §dense
    # a dropped bias, a factor 2 or T/Tdot swapped change entries by > 5 %
    torch.testing.assert_close(k.nngp, ref_nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(k.ntk, ref_ntk, rtol=1e-12, atol=0)


@pytest.mark.parametrize("readout", ["flatten", "gap"])
def test_fused_spatial_layouts(readout, use_engine, fused_ok, monkeypatch):
    """Diagonal layout (Flatten) and full layout (GlobalAvgPool, blocked over inputs), with a
    position-wise Dense on channels-first inputs: the spatial unit (one graph, ABRelu; the
    other formulas are the flat ones' code)."""
    calls = _counting(monkeypatch)
    conv = lambda: wn.Conv(4, 3, padding="SAME", w_std=1.3, b_std=0.2)  # noqa: E731
    pool = wn.Flatten() if readout == "flatten" else wn.GlobalAvgPool()
    net = wn.serial(conv(), wn.Relu(), wn.Dense(4, w_std=1.2, b_std=0.1), wn.LeakyRelu(0.1),
                    conv(), wn.Abs(), pool, _d(1))
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(10, 2, 4, 4, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    for args in ((x1,), (x1, x2)):
        a, b = _both(net, args, use_engine, batch_size=4)
        for f in ("nngp", "ntk"):
            err = float((getattr(a, f) - getattr(b, f)).abs().max() / getattr(a, f).abs().max())
            assert err < 1e-12, f"{f}: {err}"
        if len(args) == 1:
            assert torch.equal(b.ntk, b.ntk.T) and torch.equal(b.nngp.diagonal(), b.cov1)
    assert calls[0] > 0


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "abrelu", "erf", "gelu", "sin"])
def test_fused_ntk_matches_monte_carlo(act, use_engine, fused_ok, x_small):
    # the Monte Carlo check of test_monte_carlo.py on the fused engine
    use_engine("fused")
    assert_ntk_matches_monte_carlo(act, x_small)


def test_hyperparameter_gradients_take_the_eager_path(use_engine, fused_ok, monkeypatch):
    calls = _counting(monkeypatch)
    x1, _ = _inputs(6, 2)
    grads = {}
    for name in ("eager", "fused"):
        use_engine(name)
        w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        net = wn.serial(wn.Dense(8, w_std=w, b_std=0.2), wn.Relu(), wn.Dense(1, w_std=w))
        (g,) = torch.autograd.grad(net.kernel(x1, get="ntk").sum(), w)
        grads[name] = g
    assert calls[0] == 0
    assert torch.equal(grads["eager"], grads["fused"])


def test_fallback_when_the_build_fails_is_announced_once(use_engine, monkeypatch):
    def broken(*args):
        raise RuntimeError("simulated: C++ compiler not found")

    monkeypatch.setattr(engine, "_compile", broken)
    monkeypatch.setattr(engine, "_compiled", {})
    monkeypatch.setattr(engine, "_failed", {})
    monkeypatch.setattr(engine, "_announced", False)
    net = NETS["relu"]()
    x1, x2 = _inputs()
    use_engine("eager")
    want = net.kernel(x1, x2)
    use_engine("fused")
    with pytest.warns(engine.EngineWarning, match="simulated: C\\+\\+ compiler not found"):
        got = net.kernel(x1, x2)
    assert torch.equal(got.ntk, want.ntk) and torch.equal(got.nngp, want.nngp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = net.kernel(x1, x2, dtype=torch.float32)       # another unit: still silent
    assert again.ntk.dtype == torch.float32
    assert not engine.fused_available(torch.float64)


def test_auto_is_eager_for_small_kernels_and_compiles_large_ones_in_background(
        use_engine, monkeypatch):
    compiled, calls = [], [0]

    def fake(key, prep, formula, consts):
        compiled.append(key)
        src = engine._unit_source(formula, key[1], "widenets_test_unit")

        def unit(*args):                            # the uncompiled unit stands in
            calls[0] += 1
            return src(*args)
        return unit

    monkeypatch.setattr(engine, "_compile", fake)
    monkeypatch.setattr(engine, "_compiled", {})
    monkeypatch.setattr(engine, "_failed", {})
    use_engine("auto")
    net = NETS["erf"]()       # not a Dense/ABRelu chain: the native engine does not take it
    x1, _ = _inputs(100, 1)
    eager_100 = net.kernel(x1)
    assert compiled == [] and engine.wait_for_compiles(5)      # 100 inputs: nothing compiled
    monkeypatch.setattr(engine, "AUTO_MIN_ENTRIES", 50)
    first = net.kernel(x1)            # starts the compile, stays eager for this call
    assert engine.wait_for_compiles(60)
    assert len(compiled) == 1 and calls[0] == 0
    assert torch.equal(first.ntk, eager_100.ntk)
    second = net.kernel(x1)           # the unit is ready: one pass per unit (2 units)
    assert calls[0] == 2
    assert rel_err(second.ntk, eager_100.ntk) < 1e-14
    assert torch.equal(second.nngp.diagonal(), second.cov1)


def test_blocks_from_several_threads(use_engine, fused_ok):
    use_engine("fused")
    net = NETS["erf"]()
    x1, _ = _inputs(40, 1)
    k0 = input_kernel(x1, None, want_ntk=True)
    whole = engine.apply(net, k0)
    out = {}

    def work(r0):
        out[r0] = engine.apply(net, k0.row_block(r0, r0 + 10))

    threads = [threading.Thread(target=work, args=(r0,)) for r0 in range(0, 40, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ntk = torch.cat([out[r0].ntk for r0 in range(0, 40, 10)])
    assert rel_err(ntk, whole.ntk) < 1e-14 and torch.equal(ntk, ntk.T)


def test_set_engine_checks_its_argument(use_engine, monkeypatch):
    with pytest.raises(ValueError, match="^set_engine: engine must be one of"):
        wn.set_engine("fast")
    assert use_engine("eager") in engine.ENGINES and wn.get_engine() == "eager"
    monkeypatch.setattr(engine, "_engine", None)
    monkeypatch.setenv("WIDENETS_ENGINE", "Eager")
    assert wn.get_engine() == "eager"
    monkeypatch.setenv("WIDENETS_ENGINE", "turbo")
    with pytest.raises(ValueError, match="WIDENETS_ENGINE must be one of"):
        wn.get_engine()


def test_default_engine_is_native(monkeypatch):
    """With neither set_engine nor WIDENETS_ENGINE the engine is "native" (the measured choice,
    see engine's docstring); "fused" in the environment is read (catches a default of "auto"
    or an environment variable that is ignored)."""
    monkeypatch.setattr(engine, "_engine", None)
    monkeypatch.delenv("WIDENETS_ENGINE", raising=False)
    assert wn.get_engine() == "native"
    monkeypatch.setenv("WIDENETS_ENGINE", "fused")
    assert wn.get_engine() == "fused"
