"""Issue 17 property tests, layer side: random networks, shapes, dtypes, scales, duplicate
rows, zero rows and NaN positions thrown at `net.kernel` (seeded generation, no extra
dependency). Each call must either raise a widenets error whose message starts with the
public function's name (and, for NaN inputs, names the argument), or return a finite kernel
that agrees with two independent references:

* a brute-force loop over input pairs, each pair computed on its own (layer maps act pair by
  pair given the variances: a bookkeeping error across rows, the identical-input mask or the
  row blocks would show up here), and
* the float64 result, for float32 runs (a precision bug that float32 hides behind "it is
  finite").
"""

import re

import numpy as np
import pytest
import torch

import widenets as wn

ACTIVATIONS = [wn.Relu, wn.Erf, wn.Gelu, lambda: wn.LeakyRelu(0.2), wn.Abs,
               lambda: wn.Sin(1.0, 0.7, 0.3), wn.Identity]
ERROR = re.compile(r"^[A-Z]\w*(\[[^\]]*\])?\.kernel: ")


def _random_net(rng):
    layers = []
    for _ in range(int(rng.integers(1, 4))):
        b = [None, 0.0, float(rng.uniform(0, 1))][int(rng.integers(0, 3))]
        layers.append(wn.Dense(int(rng.integers(1, 9)), w_std=float(rng.uniform(0, 2.5)),
                               b_std=b))
        if rng.random() < 0.3:
            layers.append(wn.LayerNorm(affine=bool(rng.random() < 0.5)))
        layers.append(ACTIVATIONS[int(rng.integers(0, len(ACTIVATIONS)))]())
    layers.append(wn.Dense(int(rng.integers(1, 3)), w_std=float(rng.uniform(0.5, 2))))
    return wn.serial(*layers)


def _random_input(rng, n, d):
    x = torch.from_numpy(rng.standard_normal((n, d)) * 10 ** rng.uniform(-2, 1.5))
    if n > 1 and rng.random() < 0.3:
        x[-1] = x[0]                                  # a duplicate row
    if rng.random() < 0.15:
        x[int(rng.integers(0, n))] = 0.0              # a zero row
    return x


@pytest.mark.parametrize("seed", range(6))
def test_random_networks_raise_clearly_or_agree_with_references(seed):
    rng = np.random.default_rng(seed)
    for _trial in range(8):
        net = _random_net(rng)
        d = int(rng.integers(1, 6))
        x1 = _random_input(rng, int(rng.integers(1, 5)), d)
        x2 = None if rng.random() < 0.5 else _random_input(rng, int(rng.integers(1, 4)), d)
        nan_in = None
        if rng.random() < 0.2:
            nan_in = "x1" if x2 is None or rng.random() < 0.5 else "x2"
            t = x1 if nan_in == "x1" else x2
            t[tuple(int(rng.integers(0, s)) for s in t.shape)] = float("nan")
        dtype = torch.float32 if rng.random() < 0.5 else torch.float64
        try:
            k = net.kernel(x1, x2, dtype=dtype)
        except (ValueError, TypeError, FloatingPointError) as e:
            assert ERROR.match(str(e)), str(e)
            if nan_in is not None:
                assert f"{nan_in} contains" in str(e)
            else:                       # only underflow/overflow may refuse a clean input
                assert isinstance(e, FloatingPointError) and "flow" in str(e), str(e)
            continue
        assert nan_in is None, "a NaN input was accepted"
        for t in (k.nngp, k.ntk):
            assert t.dtype == dtype and bool(torch.isfinite(t).all())
        if x2 is None:
            assert torch.equal(k.nngp, k.nngp.T) and torch.equal(k.ntk, k.ntk.T)
        ref = net.kernel(x1, x2) if dtype == torch.float32 else k
        # reference 1: float32 against float64 (relative to the kernel's scale)
        for a, b in ((k.nngp, ref.nngp), (k.ntk, ref.ntk)):
            scale = float(b.abs().max()) or 1.0
            assert float((a.double() - b).abs().max()) <= 1e-3 * scale
        # reference 2: every pair on its own, in float64
        other = x1 if x2 is None else x2
        for i in range(x1.shape[0]):
            for j in range(other.shape[0]):
                p = net.kernel(x1[i:i + 1], other[j:j + 1])
                for a, b in ((ref.nngp, p.nngp), (ref.ntk, p.ntk)):
                    scale = max(float(ref.ntk.abs().max()), float(ref.nngp.abs().max()),
                                1e-300)
                    assert abs(float(a[i, j] - b[0, 0])) <= 1e-9 * scale, (i, j, net)


def test_random_elementwise_functions_are_checked():
    """Random compositions of torch functions, some elementwise and some not: Elementwise
    accepts exactly the elementwise ones, and their kernels match the quadrature of the same
    function written out pointwise (a loop over entries, the brute-force reference)."""
    rng = np.random.default_rng(7)
    good = [torch.tanh, torch.sigmoid, torch.erf, lambda z: torch.sin(z) * z]
    bad = [lambda z: z.cumsum(-1), lambda z: z.flip(-1), lambda z: z / z.norm(),
           lambda z: z.sum(-1, keepdim=True).expand_as(z)]
    for _ in range(6):
        f = good[int(rng.integers(0, len(good)))]
        g = bad[int(rng.integers(0, len(bad)))]
        with pytest.raises(ValueError, match=r"^Elementwise: fn must be elementwise"):
            wn.Elementwise(g)
        act = wn.Elementwise(f, degree=100)
        k11, k22 = (torch.tensor(rng.uniform(0.1, 4, 3)) for _ in range(2))
        k12 = torch.tensor(rng.uniform(-0.9, 0.9, 3)) * torch.sqrt(k11 * k22)
        both = act.t(k11, k22, k12)
        for i in range(3):
            one = act.t(k11[i:i + 1], k22[i:i + 1], k12[i:i + 1])
            assert float((both[i] - one[0]).abs()) <= 1e-14 * max(1.0, float(both.abs().max()))
