"""The native engine (widenets.layers.engine.network_kernel, widenets.layers._native): chains of
Dense and ABRelu layers in one compiled pass, against the eager engine, an mpmath arc-cosine,
a brute-force closed form and Monte Carlo; exact diagonal, symmetry, identical inputs, errors;
the fallback when the build fails; the symmetric Gram matrix of the input kernel."""

import math
import warnings

import mpmath
import pytest
import torch

import widenets as wn
from widenets.layers import _native, engine
from widenets.layers._inputs import _row_hashes, symmetric_gram

from .test_engine import _d
from .test_monte_carlo import assert_ntk_matches_monte_carlo


@pytest.fixture(autouse=True)
def small_kernels_native(monkeypatch):
    """The test kernels are far below NATIVE_MIN_ENTRIES: let them take the native path."""
    monkeypatch.setattr(engine, "NATIVE_MIN_ENTRIES", 0)


@pytest.fixture(scope="module")
def native_ok():
    if not engine.native_available():
        pytest.skip("the native engine does not build here (no C++ compiler?)")
    return _native.load()


def _counting(monkeypatch):
    """Count the native passes (wraps engine._run_chain)."""
    calls = [0]
    real = engine._run_chain

    def counted(*args):
        calls[0] += 1
        return real(*args)
    monkeypatch.setattr(engine, "_run_chain", counted)
    return calls


NETS = {
    "relu": lambda: wn.serial(_d(16), wn.Relu(), _d(16), wn.Relu(), _d(2)),
    "leaky_standard": lambda: wn.serial(_d(16, parameterization="standard"), wn.LeakyRelu(0.2),
                                        _d(3, parameterization="standard"), wn.Abs()),
    "abs_no_bias_repeat": lambda: wn.serial(wn.Dense(8, w_std=1.2, b_std=None), wn.Abs(),
                                            wn.repeat(wn.serial(_d(8), wn.ABRelu(-0.3, 1.1)), 2),
                                            _d(1)),
}


def _inputs(n1=23, n2=9, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(n1, d, generator=g, dtype=torch.float64)
    x1 *= torch.linspace(0.5, 1.6, n1, dtype=torch.float64)[:, None]
    x1[7] = x1[2]                                   # identical inputs within x1
    x2 = torch.randn(n2, d, generator=g, dtype=torch.float64)
    x2[4] = x1[2]                                   # and across x1, x2
    return x1.to(dtype), x2.to(dtype)


def _scaled_err(a, b, diag1, diag2):
    """max |a - b| / √(K(x,x) K(x',x')): rounding relative to the entry's natural scale (an
    NTK entry near a zero of Tdot has no relative accuracy in any engine)."""
    return float(((a - b).abs() / torch.sqrt(diag1[:, None] * diag2[None, :])).max())


def test_acos_against_mpmath(native_ok):
    """The compiled arc-cosine (docs/math/native-relu.md) within 2 eps (relative) of mpmath on
    a grid, at the branch point |x| = 1/2 and at the edges x -> ±1 (θ -> 0 and π). A wrong
    polynomial coefficient, the last term dropped or a wrong branch (π - 2p for x > 0) give
    errors of 1e-5 and more."""
    for dtype, fn in ((torch.float32, native_ok.wn_acos_f32),
                      (torch.float64, native_ok.wn_acos_f64)):
        eps = torch.finfo(dtype).eps
        edges = torch.cat([1 - torch.logspace(-16, -1, 60, dtype=torch.float64),
                           torch.tensor([0.5, 0.0, 1e-30, 1.0], dtype=torch.float64)])
        x = torch.cat([torch.linspace(-1, 1, 2001, dtype=torch.float64), edges, -edges]).to(dtype)
        up, down = torch.tensor(2.0, dtype=dtype), torch.tensor(-2.0, dtype=dtype)
        x = torch.cat([x, torch.nextafter(x, up), torch.nextafter(x, down)]).clamp(-1, 1)
        y = torch.empty_like(x)
        fn(x.numel(), x.data_ptr(), y.data_ptr())
        ref = torch.tensor([float(mpmath.acos(v)) for v in x.tolist()], dtype=torch.float64)
        err = (y.double() - ref).abs() / (eps * ref.abs().clamp(min=1e-300))
        assert float(err[ref > 0].max()) <= 2.0, dtype
        assert float(y[x == 1].abs().max()) == 0.0          # θ = 0 exactly at c = 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(NETS))
def test_native_equals_eager(name, dtype, use_engine, native_ok, monkeypatch):
    calls = _counting(monkeypatch)
    net = NETS[name]()
    x1, x2 = _inputs(dtype=dtype)
    tol = 64 * torch.finfo(dtype).eps       # rounding of a few layers; a wrong coefficient is 1e-2
    for args in ((x1,), (x1, x2)):
        use_engine("eager")
        a = net.kernel(*args, dtype=dtype)
        use_engine("native")
        b = net.kernel(*args, dtype=dtype)
        assert torch.equal(a.cov1, b.cov1)
        c2a, c2b = (a.cov1, b.cov1) if len(args) == 1 else (a.cov2, b.cov2)
        assert torch.equal(c2a, c2b)
        for f in ("nngp", "ntk"):
            ta, tb = getattr(a, f), getattr(b, f)
            assert tb.dtype == dtype
            assert _scaled_err(tb, ta, a.cov1, c2a) < tol, f
            # identical inputs: exactly the eager engine's self-pair values
            if len(args) == 1:
                assert tb[7, 2] == ta[7, 2] == ta[2, 2]
            else:
                assert tb[2, 4] == ta[2, 4] and tb[7, 4] == ta[7, 4]
        if len(args) == 1:
            for t in (b.nngp, b.ntk):
                assert torch.equal(t, t.T)                   # exact symmetry
            assert torch.equal(b.nngp.diagonal(), b.cov1)    # exact diagonal
            assert torch.equal(b.ntk.diagonal(), a.ntk.diagonal())
        assert (a.channels, a.is_gaussian) == (b.channels, b.is_gaussian)
    assert calls[0] == 2, "the native path was not taken"
    # NNGP only: the values of the full call
    assert torch.equal(net.kernel(x1, x2, get="nngp", dtype=dtype),
                       net.kernel(x1, x2, dtype=dtype).nngp)


def test_native_relu_matches_brute_force_closed_form(use_engine, native_ok, monkeypatch):
    """Cho & Saul's arc-cosine kernel entry by entry with the math module (docs/math.md §relu),
    independent of both engines, including pairs at c -> ±1 (x' = ±x (1 + 1e-9))."""
    calls = _counting(monkeypatch)
    use_engine("native")
    x1, x2 = _inputs(12, 6)
    x2[0] = x1[1] * (1 + 1e-9)
    x2[1] = -x1[3] * (1 - 1e-9)
    w2, b2 = 1.4 ** 2, 0.3 ** 2
    net = wn.serial(wn.Dense(4, w_std=1.4), wn.Relu(), _d(1))
    k = net.kernel(x1, x2)
    d = x1.shape[1]
    ref_nngp = torch.empty(12, 6, dtype=torch.float64)
    ref_ntk = torch.empty(12, 6, dtype=torch.float64)
    for i in range(12):
        for j in range(6):
            k11 = w2 * float(x1[i] @ x1[i]) / d
            k22 = w2 * float(x2[j] @ x2[j]) / d
            k12 = w2 * float(x1[i] @ x2[j]) / d
            c = max(-1.0, min(1.0, k12 / math.sqrt(k11 * k22)))
            th = math.acos(c)
            t = math.sqrt(k11 * k22) * (math.sin(th) + (math.pi - th) * c) / (2 * math.pi)
            ref_nngp[i, j] = w2 * t + b2
            ref_ntk[i, j] = ref_nngp[i, j] + w2 * k12 * (math.pi - th) / (2 * math.pi)
    # a dropped bias, a factor 2 or T/Tdot swapped change entries by > 5 %; 1e-7 leaves room
    # for the conditioning of arccos at c = ±1 (both references evaluate it there)
    torch.testing.assert_close(k.nngp, ref_nngp, rtol=1e-7, atol=0)
    torch.testing.assert_close(k.ntk, ref_ntk, rtol=1e-7, atol=0)
    assert calls[0] == 1


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "abrelu"])
def test_native_ntk_matches_monte_carlo(act, use_engine, native_ok, x_small):
    # the Monte Carlo check of test_monte_carlo.py on the native engine
    use_engine("native")
    assert_ntk_matches_monte_carlo(act, x_small)


def test_native_errors_are_the_eager_ones(use_engine, native_ok):
    """Overflow to inf (float32, huge w_std), NaN from a NaN-producing input scale and
    underflow: the same FloatingPointError (message included) on both engines."""
    x1, _ = _inputs()
    nets = [
        (wn.serial(*[wn.Dense(4, w_std=1e9), wn.Relu()] * 4, wn.Dense(1)), torch.float32),
        (wn.serial(*[wn.Dense(4, w_std=1e-9), wn.Relu()] * 5, wn.Dense(1)), torch.float32),
    ]
    assert_errors_are_the_eager_ones(nets, x1, use_engine)


def assert_errors_are_the_eager_ones(nets, x1, use_engine):
    """Each (net, dtype) raises FloatingPointError with the same message, naming the kernel
    function, on the eager and the native engine."""
    for net, dtype in nets:
        messages = []
        for name in ("eager", "native"):
            use_engine(name)
            with pytest.raises(FloatingPointError) as err:
                net.kernel(x1, dtype=dtype)
            messages.append(str(err.value))
        assert messages[0] == messages[1]
        assert messages[0].startswith("serial.kernel:") or ".kernel:" in messages[0]


def assert_build_failure_falls_back(net, x1, x2, use_engine, monkeypatch, cache_dir):
    """A compiler that fails (simulated by CXX=false, with an empty cache) makes the native
    engine unavailable: one EngineWarning, then eager results (bitwise), silently, and
    nothing written to the cache. The caller lets `net` take the native path by size."""
    monkeypatch.setenv("CXX", "false")
    monkeypatch.setenv("WIDENETS_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(_native, "_libs", {})
    monkeypatch.setattr(_native, "_errors", {})
    monkeypatch.setattr(engine, "_native_announced", False)
    use_engine("eager")
    want = net.kernel(x1, x2)
    use_engine("native")
    with pytest.warns(engine.EngineWarning, match="native kernel engine is unavailable"):
        got = net.kernel(x1, x2)
    assert torch.equal(got.ntk, want.ntk) and torch.equal(got.nngp, want.nngp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = net.kernel(x1, dtype=torch.float32)
    assert again.ntk.dtype == torch.float32
    assert list(cache_dir.iterdir()) == []


def test_native_fallback_when_the_build_fails_is_announced_once(use_engine, monkeypatch,
                                                                 tmp_path):
    monkeypatch.setattr(engine, "NATIVE_MIN_ENTRIES", 10)     # these kernels may build
    assert_build_failure_falls_back(NETS["relu"](), *_inputs(), use_engine, monkeypatch,
                                    tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # announced once only
        assert not engine.native_available()


def test_small_kernels_never_build(use_engine, monkeypatch):
    """Below NATIVE_MIN_ENTRIES a kernel neither starts a build nor uses a cached library
    (mutation: using the library when an earlier process cached it would make a kernel's
    engine, hence its last bits, depend on the machine's history)."""
    monkeypatch.setattr(_native, "_libs", {})
    monkeypatch.setattr(_native, "cached", lambda which="chain": True)
    monkeypatch.setattr(engine, "NATIVE_MIN_ENTRIES", 1 << 20)

    def no_build(which="chain"):
        raise AssertionError("a small kernel used the native library")
    monkeypatch.setattr(_native, "load", no_build)
    use_engine("native")
    x1, _ = _inputs(100, 5)
    assert NETS["relu"]().kernel(x1).ntk.shape == (100, 100)


def test_symmetric_gram_and_row_hashes():
    """The strip-wise Gram matrix of the input kernel: exactly symmetric, equal to a float64
    x xᵀ / d to float32 rounding (a strip written at the wrong offset or a missing mirror
    is an O(1) error), for n above and below one strip; equal rows hash equally (-0.0 too)."""
    g = torch.Generator().manual_seed(0)
    for n in (600, 100):
        x = torch.randn(n, 50, generator=g)
        got = symmetric_gram(x / 50, x, threads=2)
        ref = x.double() @ x.double().T / 50
        assert torch.equal(got, got.T)
        assert float((got.double() - ref).abs().max()) < 1e-5
    x = torch.randn(5, 80, generator=g, dtype=torch.float64)
    x[3] = x[1]
    x[3, 10], x[1, 10] = 0.0, -0.0
    h = _row_hashes(x)
    assert h[3] == h[1] and len(set(h.tolist())) == 4


def test_chains_the_eager_engine_refuses_stay_eager(use_engine, native_ok, monkeypatch):
    """An activation on the raw input or on another activation's output (not Gaussian): the
    native engine does not compute it, the eager engine raises its error."""
    calls = _counting(monkeypatch)
    use_engine("native")
    x1, _ = _inputs()
    for net in (wn.serial(wn.Relu(), _d(1)), wn.serial(_d(4), wn.Relu(), wn.Relu(), _d(1))):
        with pytest.raises(ValueError, match="input must be Gaussian"):
            net.kernel(x1)
    assert calls[0] == 0


def test_all_finite_one_pass_check():
    """The one-reduction finiteness test of the block checks against torch.isfinite: inf, -inf,
    both (sum NaN), NaN, and finite values whose sum overflows (must still count as finite:
    a check that only looked at the sum would report an overflow that is not there)."""
    from widenets.layers._kernel_checks import all_finite

    big = torch.finfo(torch.float32).max
    cases = [torch.ones(5), torch.tensor([1.0, float("inf")]), torch.tensor([-float("inf"), 2.0]),
             torch.tensor([float("inf"), -float("inf")]), torch.tensor([0.0, float("nan")]),
             torch.full((4,), big)]
    for t in cases:
        assert all_finite(t) == bool(torch.isfinite(t).all()), t
