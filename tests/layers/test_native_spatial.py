"""The native engine on images (widenets.layers.engine.spatial_network_kernel,
widenets.layers._native_spatial): networks of Conv, ABRelu, pooling, Flatten and Dense layers
computed one input pair at a time, against the eager engine (to rounding), Monte Carlo over
finite conv nets; exact symmetry, diagonal and identical inputs; errors; the fallback when the
build fails; which kernels take the native path."""


import pytest
import torch

import widenets as wn
from widenets.layers import _native, _native_spatial, engine

from .test_native import assert_build_failure_falls_back, assert_errors_are_the_eager_ones


@pytest.fixture
def small_native(monkeypatch):
    """The test kernels are far below NATIVE_MIN_SPATIAL_WORK: let them take the native path."""
    monkeypatch.setattr(engine, "NATIVE_MIN_SPATIAL_WORK", 0)


@pytest.fixture(scope="module")
def native_ok():
    try:
        return _native.load("spatial")
    except _native.BuildError:
        pytest.skip("the native spatial library does not build here (no C++ compiler?)")


def _counting(monkeypatch):
    """Count the native spatial computations (wraps _native_spatial.compute)."""
    calls = [0]
    real = _native_spatial.compute

    def counted(*args, **kw):
        calls[0] += 1
        return real(*args, **kw)
    monkeypatch.setattr(_native_spatial, "compute", counted)
    return calls


def _c(out=3, k=3, **kw):
    kw.setdefault("w_std", 1.4)
    kw.setdefault("b_std", 0.2)
    return wn.Conv(out, k, **kw)


NETS = {   # name: (network, input shape (C, *S))
    "gap": (lambda: wn.serial(_c(), wn.Relu(), _c(), wn.Relu(), wn.GlobalAvgPool(),
                              wn.Dense(1)), (2, 6, 5)),
    "myrtle_like": (lambda: wn.serial(_c(), wn.Relu(), wn.AvgPool(2), _c(), wn.Relu(),
                                      wn.AvgPool(2, padding="SAME"), _c(), wn.Relu(),
                                      wn.GlobalAvgPool(), wn.Dense(2)), (3, 8, 7)),
    # VALID, strides, the standard parameterization, no bias, SumPool, circular padding,
    # GlobalSumPool, a flat Dense-ReLU-Dense readout
    "mixed": (lambda: wn.serial(
        wn.Conv(3, (3, 2), stride=(2, 1), padding="VALID", parameterization="standard"),
        wn.LeakyRelu(0.1), wn.SumPool(2, stride=1, padding="SAME"),
        _c(2, 2, padding="CIRCULAR", b_std=None), wn.Abs(), wn.GlobalSumPool(),
        wn.Dense(3, w_std=1.2, b_std=0.1), wn.Relu(), wn.Dense(1)), (2, 7, 6)),
    # Flatten readout: the diagonal layout (no pooling)
    "flatten": (lambda: wn.serial(_c(padding="CIRCULAR"), wn.ABRelu(-0.3, 1.1),
                                  _c(2, stride=2), wn.Relu(), wn.Flatten(), wn.Dense(2)),
                (2, 7, 6)),
    "conv1d": (lambda: wn.serial(_c(3, 3), wn.Relu(), wn.AvgPool(2, padding="SAME"),
                                 _c(3, 2), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1)),
               (3, 9)),
}


def _inputs(shape, n1=7, n2=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(n1, *shape, generator=g, dtype=torch.float64)
    x1 *= torch.linspace(0.5, 1.6, n1, dtype=torch.float64).reshape(-1, *[1] * len(shape))
    x1[4] = x1[1]                                   # identical inputs within x1
    x2 = torch.randn(n2, *shape, generator=g, dtype=torch.float64)
    x2[2] = x1[1]                                   # and across x1, x2
    return x1.to(dtype), x2.to(dtype)


def _scaled_err(a, b, diag1, diag2):
    """max |a - b| / √(K(x,x) K(x',x')): rounding relative to the entry's natural scale."""
    return float(((a - b).abs() / torch.sqrt(diag1[:, None] * diag2[None, :])).max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(NETS))
def test_native_spatial_equals_eager(name, dtype, use_engine, native_ok, small_native,
                                     monkeypatch):
    """To rounding (64 eps of the entry's scale; a missing 1/|D| or 1/|W|², a wrong variance
    index, a dropped bias or T/Tdot swapped are errors of 1e-2 and more), for x2 = None and
    x2 given; exact symmetry, K(x, x) = cov1 exactly on the diagonal, identical inputs exactly
    the self-pair values; NNGP-only equals the NNGP of the full call bitwise."""
    calls = _counting(monkeypatch)
    make, shape = NETS[name]
    net = make()
    x1, x2 = _inputs(shape, dtype=dtype)
    tol = 64 * torch.finfo(dtype).eps
    for args in ((x1,), (x1, x2)):
        use_engine("eager")
        a = net.kernel(*args, dtype=dtype)
        use_engine("native")
        b = net.kernel(*args, dtype=dtype)
        c2a, c2b = (a.cov1, b.cov1) if len(args) == 1 else (a.cov2, b.cov2)
        for f in ("nngp", "ntk"):
            ta, tb = getattr(a, f), getattr(b, f)
            assert tb.dtype == dtype and tb.shape == ta.shape
            assert _scaled_err(tb, ta, a.cov1, c2a) < tol, f
        assert float(((b.cov1 - a.cov1).abs() / a.cov1).max()) < tol
        assert float(((c2b - c2a).abs() / c2a).max()) < tol
        if len(args) == 1:
            for t in (b.nngp, b.ntk):
                assert torch.equal(t, t.T)                        # exact symmetry
            assert torch.equal(b.nngp.diagonal(), b.cov1)         # exact diagonal
            assert b.nngp[1, 4] == b.nngp[4, 1] == b.cov1[1] == b.cov1[4]
            assert b.ntk[1, 4] == b.ntk[1, 1]
        else:
            assert b.nngp[1, 2] == b.cov1[1] and b.nngp[4, 2] == b.cov1[1]
            assert b.ntk[1, 2] == b.ntk[4, 2]
        assert (a.channels, a.is_gaussian) == (b.channels, b.is_gaussian)
        use_engine("native")
        assert torch.equal(net.kernel(*args, get="nngp", dtype=dtype), b.nngp)
    assert calls[0] == 4, "the native path was not taken"


def test_flatten_in_the_full_layout_and_threads(use_engine, native_ok, small_native,
                                                monkeypatch):
    """layout="full" on a Flatten readout (the mean of the position-pair diagonal) equals the
    eager engine; the strips of pairs on 2 threads give bitwise the 1-thread kernel."""
    calls = _counting(monkeypatch)
    make, shape = NETS["flatten"]
    net = make()
    x1, x2 = _inputs(shape)
    use_engine("eager")
    a = net.kernel(x1, x2, layout="full")
    use_engine("native")
    b = net.kernel(x1, x2, layout="full")
    assert _scaled_err(b.ntk, a.ntk, a.cov1, a.cov2) < 64 * torch.finfo(torch.float64).eps
    assert calls[0] == 1
    one = engine.spatial_network_kernel(net, x1, None, want_ntk=True, full=False,
                                        fname="kernel", threads=1)
    two = engine.spatial_network_kernel(net, x1, None, want_ntk=True, full=False,
                                        fname="kernel", threads=2)
    assert torch.equal(one.nngp, two.nngp) and torch.equal(one.ntk, two.ntk)


def test_networks_the_native_loop_does_not_cover_stay_eager(use_engine, native_ok,
                                                            small_native, monkeypatch):
    """Other activations, Dense on positions, a spatial output, LayerNorm: eager, with the
    eager results; an activation on the raw input raises the eager error."""
    calls = _counting(monkeypatch)
    x1, _ = _inputs((2, 5, 5))
    nets = [wn.serial(_c(), wn.Erf(), wn.GlobalAvgPool(), wn.Dense(1)),
            wn.serial(_c(), wn.Relu(), wn.Dense(3), wn.GlobalAvgPool(), wn.Dense(1)),
            wn.serial(_c(), wn.Relu(), _c()),
            wn.serial(_c(), wn.LayerNorm(), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))]
    for net in nets:
        use_engine("eager")
        want = net.kernel(x1)
        use_engine("native")
        assert torch.equal(net.kernel(x1).nngp, want.nngp)
    with pytest.raises(ValueError, match="input must be Gaussian"):
        wn.serial(wn.Relu(), _c(), wn.GlobalAvgPool()).kernel(x1)
    assert calls[0] == 0


def test_native_spatial_errors_are_the_eager_ones(use_engine, native_ok, small_native):
    """Overflow (float32, huge w_std) and underflow: the same FloatingPointError, message
    included, on both engines (a non-finite native value makes the eager engine recompute)."""
    x1, _ = _inputs((1, 5, 5))
    nets = [(wn.serial(*[_c(w_std=1e9), wn.Relu()] * 3, wn.GlobalAvgPool(), wn.Dense(1)),
             torch.float32),
            (wn.serial(*[_c(w_std=1e-9, b_std=None), wn.Relu()] * 4, wn.GlobalAvgPool(),
                       wn.Dense(1, b_std=None)), torch.float32)]
    assert_errors_are_the_eager_ones(nets, x1, use_engine)


def test_native_spatial_fallback_when_the_build_fails(use_engine, monkeypatch, tmp_path,
                                                      small_native):
    make, shape = NETS["gap"]
    assert_build_failure_falls_back(make(), *_inputs(shape), use_engine, monkeypatch, tmp_path)


def test_which_kernels_take_the_native_path(use_engine, native_ok, monkeypatch):
    """The size rule (NATIVE_MIN_SPATIAL_WORK, not patched here): the CNN-GAP of
    benchmarks/analytic_conv.py at N = 128 on 8 x 8 images takes the native path; the same
    network at N = 100 stays eager and never loads (or builds) the library (mutation: a rule
    on output entries, as for flat kernels, would take N = 100 native)."""
    calls = _counting(monkeypatch)
    use_engine("native")
    conv = lambda: wn.Conv(1, 3, padding="SAME", w_std=1.4, b_std=0.1)  # noqa: E731
    net = wn.serial(conv(), wn.Relu(), conv(), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    x = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    k = net.kernel(x, dtype=torch.float32, get="nngp")
    assert calls[0] == 1 and k.shape == (128, 128)
    small = wn.serial(conv(), wn.GlobalAvgPool(), wn.Dense(1))

    def no_load(which="chain"):
        raise AssertionError("a small kernel loaded a native library")
    monkeypatch.setattr(_native, "load", no_load)
    small.kernel(x[:100], dtype=torch.float32, get="nngp")
    assert calls[0] == 1


@pytest.mark.slow
@pytest.mark.parametrize("readout", ["gap", "flatten"])
def test_native_spatial_matches_monte_carlo(readout, use_engine, native_ok, small_native,
                                            monkeypatch, mc_check):
    """The shared spatial Monte Carlo check (tests/layers/conftest.py: 256-channel finite
    conv nets) on kernels the native engine computes."""
    calls = _counting(monkeypatch)
    use_engine("native")
    x = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pool = wn.GlobalAvgPool() if readout == "gap" else wn.Flatten()

    def make(c, o):
        return wn.serial(wn.Conv(c, 3, w_std=1.5, b_std=0.1), wn.Relu(),
                         wn.Conv(c, 3, w_std=1.3, b_std=0.2), wn.Relu(), pool,
                         wn.Dense(o, w_std=1.1, b_std=0.1))
    mc_check(make, x, (2, 5, 5))
    assert calls[0] >= 1
