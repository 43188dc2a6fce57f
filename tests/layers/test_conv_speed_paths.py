"""The pieces behind the faster full-layout convolutions (issue 14): the padded offset sum of
the fused engine against a brute-force loop over positions, and the allocator setting of
full-layout kernels (`widenets._memory.reuse_freed_memory`)."""

import itertools

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


@pytest.mark.parametrize("size, window, stride, padding", [
    ((5, 4), (3, 2), (1, 1), "SAME"),
    ((7,), (4,), (2,), "SAME"),        # TensorFlow's uneven split: left 1, right 2
    ((5, 6), (3, 3), (2, 1), 1),
    ((4, 5), (2, 3), (1, 1), "VALID"),
])
def test_padded_pair_sum_equals_brute_force(size, window, stride, padding):
    # Mutations caught (errors of order 1, tolerance 1e-12): independent offsets for the two
    # positions (pooling's sum), padding on one half only or on the wrong side, a stride
    # applied to one half, an offset range one short.
    t = torch.randn(2, 3, *size, *size, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    geo = [sp.resolve_padding(n, w, st, padding, i, func="test")
           for i, (n, w, st) in enumerate(zip(size, window, stride))]
    pads = [(lft, rgt) for lft, rgt, _ in geo]
    out = [o for _, _, o in geo]
    got = sp.padded_pair_sum(sp.pad_pairs(t, pads), tuple(zip(window, stride)))
    want = _brute_force_conv_sum(t, window, stride, pads, out)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


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
    monkeypatch.setattr(memory, "available_memory", lambda: 1024)   # not even one pair fits
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
