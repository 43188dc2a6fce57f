"""The pieces behind the faster full-layout convolutions (issue 14): the Conv kernel with its
bias and NTK terms folded into the offset sums, against a brute-force loop over positions, and
the allocator setting of full-layout kernels (`widenets._memory.reuse_freed_memory`)."""

import itertools
import math

import pytest
import torch

import widenets as wn
import widenets._memory as memory
from widenets.layers import _spatial as sp


def _brute_force_conv_sum(t, window, stride, pads, out):
    """Σ_d t(st·o + d - l, st·o' + d - l) over offsets d shared by both positions, zero outside
    the input (docs/math.md §conv), by explicit loops over output pairs and offsets."""
    s = len(window)
    nb = t.ndim - 2 * s
    size = t.shape[nb:nb + s]
    res = t.new_zeros((*t.shape[:nb], *out, *out))
    for o1 in itertools.product(*map(range, out)):
        for o2 in itertools.product(*map(range, out)):
            for d in itertools.product(*map(range, window)):
                p1 = [st * o + dd - lft for st, o, dd, (lft, _) in zip(stride, o1, d, pads)]
                p2 = [st * o + dd - lft for st, o, dd, (lft, _) in zip(stride, o2, d, pads)]
                if all(0 <= p < n for p, n in zip(p1 + p2, size + size)):
                    res[(..., *o1, *o2)] += t[(..., *p1, *p2)]
    return res


def _pads(size, window, stride, padding):
    geo = [sp.resolve_padding(n, w, st, padding, i, func="test")
           for i, (n, w, st) in enumerate(zip(size, window, stride))]
    return [(lft, rgt) for lft, rgt, _ in geo], [o for _, _, o in geo]


@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("size, window, stride, padding", [
    ((5, 4), (3, 2), (1, 1), "SAME"),
    ((7,), (4,), (2,), "SAME"),        # TensorFlow's uneven split: left 1, right 2
    ((5, 6), (3, 3), (2, 1), 1),
    ((2,), (3,), (1,), 2),             # no offset covers every output (sum starts at zero)
])
def test_conv_kernel_equals_brute_force(size, window, stride, padding, param):
    # Two linear Conv layers (no activation) on the full layout against the definition
    # (docs/math.md §conv) evaluated by loops: K' = w ΣK + b, Θ' = K' + w ΣΘ (ntk) or
    # C ΣK + 1 + w ΣΘ (standard). The bias and K' are folded into the eager offset sums' last
    # pass; mutations caught (tolerance 1e-12, errors of order 0.1 or more): the bias added per
    # axis or not at all, K' left out of Θ' or added twice, the scale applied per axis,
    # independent offsets for the two positions (pooling's sum), padding on the wrong side.
    x = torch.randn(3, 2, *size, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    c1 = wn.Conv(3, window, stride=stride, padding=padding, w_std=1.3, b_std=0.4,
                 parameterization=param)
    c2 = wn.Conv(2, window, padding="SAME", w_std=0.9, b_std=0.7, parameterization=param)
    k = wn.serial(c1, c2).kernel(x, layout="full")
    n_off = math.prod(window)
    k0 = torch.einsum("icp,jcq->ijpq", x.flatten(2), x.flatten(2)) / x.shape[1]
    k0 = k0.reshape(3, 3, *size, *size)
    pads1, out1 = _pads(size, window, stride, padding)
    sum0 = _brute_force_conv_sum(k0, window, stride, pads1, out1)
    k1 = 1.3 ** 2 / n_off * sum0 + 0.4 ** 2
    t1 = k1.clone() if param == "ntk" else 2 * sum0 + 1.0        # input Θ = 0, C = 2
    pads2, out2 = _pads(out1, window, (1,) * len(size), "SAME")
    sum1 = _brute_force_conv_sum(k1, window, (1,) * len(size), pads2, out2)
    sum_t1 = _brute_force_conv_sum(t1, window, (1,) * len(size), pads2, out2)
    k2 = 0.9 ** 2 / n_off * sum1 + 0.7 ** 2
    t2 = (k2 if param == "ntk" else 3 * sum1 + 1.0) + 0.9 ** 2 / n_off * sum_t1
    assert torch.allclose(k.nngp, k2, rtol=1e-12, atol=1e-12)
    assert torch.allclose(k.ntk, t2, rtol=1e-12, atol=1e-12)


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_reuse_freed_memory_sets_once_and_restores_once(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(memory, "_libc", [fake])
    with memory.reuse_freed_memory():
        with memory.reuse_freed_memory():     # nested (or a concurrent call): no new setting
            pass
        assert fake.calls == [("mallopt", memory._M_MMAP_THRESHOLD, memory._HIGH),
                              ("mallopt", memory._M_TRIM_THRESHOLD, memory._HIGH)]
    assert fake.calls[2:] == [("mallopt", memory._M_MMAP_THRESHOLD, memory._MMAP_AFTER),
                              ("mallopt", memory._M_TRIM_THRESHOLD, memory._TRIM_AFTER),
                              ("malloc_trim", 0)]
    # a full-layout kernel runs inside it, and restores the setting even when it raises
    fake.calls.clear()
    net = wn.serial(wn.Conv(2, 3, w_std=1.3), wn.Relu(), wn.GlobalAvgPool())
    net.kernel(torch.randn(3, 1, 4, 4, dtype=torch.float64))
    assert [c[0] for c in fake.calls] == ["mallopt", "mallopt", "mallopt", "mallopt",
                                          "malloc_trim"]
    fake.calls.clear()
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 1024)   # not even one pair fits
    with pytest.raises(MemoryError):
        net.kernel(torch.randn(3, 1, 4, 4, dtype=torch.float64))
    assert fake.calls[-1] == ("malloc_trim", 0) and len(fake.calls) == 5
    assert memory._reuse_depth == 0


def test_reuse_freed_memory_without_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(memory, "_libc", [None])
    with memory.reuse_freed_memory():
        x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
        k = wn.serial(wn.Conv(2, 3), wn.Relu(), wn.GlobalAvgPool()).kernel(x)
    assert k.nngp.shape == (2, 2)
