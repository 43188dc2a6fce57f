"""Invariants every layer must satisfy, over a registry of every layer and combinator."""

import pytest
import torch

from .registry import nets

ALL = {f"{p}/{name}": net for p in ("ntk", "standard") for name, net in nets(parameterization=p).items()}


@pytest.fixture
def xs(x_small):
    g = torch.Generator().manual_seed(7)
    x2 = torch.randn(4, 8, generator=g, dtype=torch.float64) * 0.9
    return x_small, x2


@pytest.mark.parametrize("name", sorted(ALL))
class TestInvariants:
    def test_symmetric_call_equals_two_argument_call(self, name, xs):
        x, _ = xs
        a, b = ALL[name].kernel(x), ALL[name].kernel(x, x.clone())
        # x1 @ x2.T and the separately computed variances differ in the last bit, which arccos at
        # c ~ 1 amplifies to ~1e-8 on the diagonal of Tdot; off the diagonal they agree to 1e-12.
        # Quadrature (Elementwise) is not evaluated symmetrically in (K11, K22); k(x) is
        # symmetrized, so the two calls differ by the quadrature error (~1e-5 for Tdot of tanh at
        # degree 96: sech² is narrow next to the node spacing at K ≈ 3).
        quad = "elementwise" in name
        for f in ("nngp", "ntk"):
            ta, tb = getattr(a, f), getattr(b, f)
            torch.testing.assert_close(ta, tb, rtol=1e-4 if quad else 1e-7, atol=0)
            if quad:
                continue
            off = ~torch.eye(len(x), dtype=torch.bool)
            torch.testing.assert_close(ta[off], tb[off], rtol=1e-11, atol=1e-13)

    def test_symmetric_and_psd(self, name, xs):
        k = ALL[name].kernel(xs[0])
        for f in ("nngp", "ntk"):
            t = getattr(k, f)
            assert torch.equal(t, t.T), f"{f} not exactly symmetric"
            ev = torch.linalg.eigvalsh(t)
            assert ev[0] >= -1e-10 * ev[-1], f"{f} eigenvalues {ev}"

    def test_variances_are_the_diagonal(self, name, xs):
        x1, x2 = xs
        net = ALL[name]
        k12 = net.kernel(x1, x2)
        k1, k2 = net.kernel(x1), net.kernel(x2)
        torch.testing.assert_close(k1.cov1, torch.diagonal(k1.nngp), rtol=0, atol=0)
        torch.testing.assert_close(k12.cov1, k1.cov1, rtol=1e-13, atol=0)
        torch.testing.assert_close(k12.cov2, k2.cov1, rtol=1e-13, atol=0)

    def test_float64_default_and_deterministic(self, name, xs):
        x1, x2 = xs
        a, b = ALL[name].kernel(x1, x2), ALL[name].kernel(x1, x2)
        assert a.nngp.dtype == torch.float64 and a.ntk.dtype == torch.float64
        assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)

    def test_float32_on_request(self, name, xs):
        x1, x2 = xs
        a = ALL[name].kernel(x1, x2, dtype=torch.float32)
        b = ALL[name].kernel(x1, x2)
        assert a.nngp.dtype == torch.float32 and a.ntk.dtype == torch.float32
        torch.testing.assert_close(a.ntk.double(), b.ntk, rtol=2e-4, atol=1e-5)

    def test_get_selects_and_skips(self, name, xs):
        x1, x2 = xs
        full = ALL[name].kernel(x1, x2)
        nngp = ALL[name].kernel(x1, x2, get="nngp")
        ntk = ALL[name].kernel(x1, x2, get="ntk")
        both = ALL[name].kernel(x1, x2, get=("ntk", "nngp"))
        assert torch.equal(nngp, full.nngp) and torch.equal(ntk, full.ntk)
        assert torch.equal(both[0], full.ntk) and torch.equal(both[1], full.nngp)
