"""The block scheduler of `net.kernel` (layers/_schedule.py on widenets/_parallel.py): blocks
computed on several one-thread workers give bitwise the serial loop's result, in every layout;
errors of a worker's block surface in the caller exactly as in the serial loop.

The reference is the serial loop of the same blocks (threads = 1) and the one-pass kernel
(block_entries large): the threads must not change a single bit. Any mutation that assembles
a block at the wrong rows, drops a block, skips the transposed blocks of a symmetric full
layout or mixes the pairs' order fails `torch.equal`.
"""

import threading
import time

import pytest
import torch

import widenets as wn
import widenets._parallel as parallel
from widenets.layers import Layer
from widenets.layers import _schedule as schedule
from widenets.layers._schedule import kernel_in_row_blocks, row_bounds
from widenets.layers.base import input_kernel


@pytest.fixture
def threads(monkeypatch):
    """set(n): kernels called from this thread use n block threads (torch's intra-op count
    and the core count both read as n), restored afterwards."""
    old = torch.get_num_threads()

    def set_threads(n):
        monkeypatch.setattr(parallel, "usable_cores", lambda: n)
        torch.set_num_threads(n)
        assert parallel.block_threads() == n

    yield set_threads
    torch.set_num_threads(old)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _same(a, b):
    for name in ("nngp", "ntk", "cov1", "cov2"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert (ta is None) == (tb is None), name
        if ta is not None:
            assert torch.equal(ta, tb), name


def _kernels(net, x, y, threads, n, **kw):
    """(serial, threaded) kernels; checks that the threaded one ran on several pool threads
    (a scheduler that silently fell back to the serial loop fails here)."""
    threads(1)
    serial = net.kernel(x, y, **kw)
    threads(n)
    names = set()
    real = schedule.compute_block

    def spy(layer, k):
        names.add(threading.current_thread().name)
        return real(layer, k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(schedule, "compute_block", spy)
        threaded = net.kernel(x, y, **kw)
    # the calling thread computes blocks too; the others are the pool's
    assert len(names) > 1 and any(s.startswith("widenets-block") for s in names), names
    return serial, threaded


@pytest.mark.parametrize("symmetric", [True, False])
def test_flat_threads_equal_serial_and_one_pass_bitwise(threads, symmetric):
    net = wn.serial(wn.Dense(16, w_std=1.5, b_std=0.1), wn.Relu(), wn.Dense(8), wn.Erf(),
                    wn.Dense(1))
    x = _x(37, 5)
    y = None if symmetric else _x(23, 5, seed=1)
    one_pass = net.kernel(x, y)
    net.block_entries = 40                       # blocks of 1 or 2 rows: ~20-37 blocks
    serial, threaded = _kernels(net, x, y, threads, 3)
    _same(serial, one_pass)
    _same(threaded, one_pass)


def test_branches_and_row_offsets_in_blocks(threads):
    """A network ending in two branches (lists of Kernels) and a symmetric kernel whose
    blocks carry their row offsets (the exact diagonal)."""
    net = wn.serial(wn.Dense(8), wn.FanOut(2), wn.parallel(wn.Relu(), wn.Dense(4)))
    x = _x(19, 4)
    x[7] = x[3]                                   # identical inputs: same_input pairs
    one_pass = net.kernel(x)
    net.block_entries = 30
    serial, threaded = _kernels(net, x, None, threads, 2)
    for a, b, c in zip(one_pass, serial, threaded, strict=True):
        _same(b, a)
        _same(c, a)


@pytest.mark.parametrize("symmetric", [True, False])
def test_diagonal_layout_threads_equal_serial(threads, symmetric):
    net = wn.serial(wn.Conv(6, 3, w_std=1.4), wn.Relu(), wn.Conv(6, 3), wn.Relu(),
                    wn.Flatten(), wn.Dense(1))
    x = _x(11, 2, 5, 5)
    y = None if symmetric else _x(7, 2, 5, 5, seed=1)
    one_pass = net.kernel(x, y)
    net.block_entries = 200                      # 8 rows of 5x5 positions: 1 row per block
    serial, threaded = _kernels(net, x, y, threads, 3)
    _same(serial, one_pass)
    _same(threaded, one_pass)


@pytest.mark.parametrize("symmetric", [True, False])
def test_full_layout_block_pairs_threads_equal_serial(threads, symmetric):
    net = wn.serial(wn.Conv(5, 3, w_std=1.3, b_std=0.1), wn.Relu(), wn.Conv(5, 3),
                    wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    x = _x(7, 2, 4, 4)
    y = None if symmetric else _x(5, 2, 4, 4, seed=1)
    one_pass = net.kernel(x, y)                  # one block: b >= n
    serial, threaded = _kernels(net, x, y, threads, 3, batch_size=2)
    _same(threaded, serial)
    # the pooling's sums over position pairs are vectorized by block shape: the blocked
    # kernel equals the one-pass kernel to rounding (a misplaced block is off by O(1))
    for name in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(threaded, name), getattr(one_pass, name),
                                   rtol=1e-13, atol=0)
    spatial = wn.serial(wn.Conv(5, 3), wn.Relu())  # a spatial output: all (p, p') kept
    serial, threaded = _kernels(spatial, x, y, threads, 3, batch_size=3, layout="full")
    _same(threaded, serial)
    _same(threaded, spatial.kernel(x, y, layout="full"))


def test_row_bounds_cover_the_rows_once_with_enough_blocks_per_thread():
    for n1, per_row, entries, t in [(100, 10, 1 << 18, 1), (100, 10, 1 << 18, 2),
                                    (4000, 4000, 1 << 18, 2), (5, 3, 1, 4), (1, 1, 1, 8)]:
        b = row_bounds(n1, per_row, entries, t)
        assert b[0][0] == 0 and b[-1][1] == n1
        assert all(r1 > r0 and r1 == s0 for (r0, r1), (s0, _) in zip(b, b[1:] + [(n1, 0)]))
    # one thread: blocks of block_entries; two threads: >= 8 blocks where rows allow,
    # never below MIN_BLOCK_ENTRIES entries
    assert len(row_bounds(4000, 4000, 1 << 18, 1)) == 62
    assert len(row_bounds(1000, 1000, 1 << 18, 2)) == 8
    assert len(row_bounds(100, 100, 1 << 18, 2)) == 1      # 10^4 entries: not worth a split


# ------------------------------------------------------------------------------ errors
class _FailIn(Layer):
    """A test layer: raises in the blocks whose first row is in `rows` (the block of row r
    after `delay[r]` seconds), else the identity."""

    def __init__(self, rows, delay=None):
        self.rows, self.delay = set(rows), dict(delay or {})

    def apply_kernel(self, k):
        r = k.row_offset
        time.sleep(self.delay.get(r, 0.0))
        if r in self.rows:
            raise ValueError(f"_FailIn: block at row {r}")
        return k


def test_the_first_failing_block_in_order_wins_and_nothing_keeps_running(threads):
    x = _x(12, 3)
    k0 = input_kernel(x, None, want_ntk=True)
    layer = _FailIn(rows={3, 9}, delay={3: 0.3})   # block 9 fails first in time
    layer.block_entries = 12                          # one row per block
    threads(1)
    with pytest.raises(ValueError, match=r"^_FailIn: block at row 3$"):
        kernel_in_row_blocks(layer, k0, "test", threads=1)
    before = threading.active_count()
    with pytest.raises(ValueError, match=r"^_FailIn: block at row 3$") as info:
        kernel_in_row_blocks(layer, k0, "test", threads=4)
    # the worker's traceback is kept: the raising frame is the layer's
    assert info.traceback[-1].name == "apply_kernel"
    # the pool's threads are idle again: a following call runs on them and is right
    assert threading.active_count() <= before + 4
    ok = _FailIn(rows=())
    ok.block_entries = 12
    assert torch.equal(kernel_in_row_blocks(ok, k0, "test", threads=4).nngp, k0.nngp)


def test_nonfinite_and_underflow_errors_equal_the_serial_ones(threads):
    """A non-finite block (row 9 of x1 so large that its variance overflows: only that
    block's rows fail) and an underflow: the threaded run raises the serial run's
    FloatingPointError, message for message."""
    x, y = _x(16, 4), _x(16, 4, seed=1)
    big = x.clone()
    big[9] *= 1e155
    relu_net = wn.serial(wn.Dense(6), wn.Relu(), wn.Dense(1))
    deep = wn.serial(*[m for _ in range(60) for m in (wn.Dense(4, w_std=0.3), wn.Relu())])
    for net, x1, dtype, what in ((relu_net, big, torch.float64, "non-finite"),
                                 (deep, x, torch.float32, "underflowed")):
        net.block_entries = 16                   # one row per block
        messages = []
        for n in (1, 3):
            threads(n)
            with pytest.raises(FloatingPointError) as info:
                net.kernel(x1, y, dtype=dtype)
            messages.append(str(info.value))
        assert messages[0] == messages[1]
        assert what in messages[0]


def test_grad_and_no_grad_modes_reach_the_workers(threads):
    """Hyperparameter tensors that require grad: the threaded kernel equals the serial one
    bitwise and so do its gradients up to the order of their accumulation (rounding);
    under torch.no_grad() the workers build no graph."""
    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    net = wn.serial(wn.Dense(8, w_std=w, b_std=0.1), wn.Relu(), wn.Dense(1, w_std=w))
    net.block_entries = 30
    x = _x(17, 3)
    grads = []
    for n in (1, 3):
        threads(n)
        k = net.kernel(x, get="ntk")
        (g,) = torch.autograd.grad(k.sum(), w)
        grads.append((k.detach(), g))
    assert torch.equal(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-13, atol=0)
    with torch.no_grad():
        assert not net.kernel(x, get="ntk").requires_grad


# ------------------------------------------------------------------------------ policy
def test_the_calling_thread_uses_one_torch_thread_except_for_large_steps(monkeypatch):
    """With one block thread (here the tile runner's limit) the blocks run on the calling
    thread with ONE torch thread, and so does a small kernel that is one block (torch's
    intra-op threads would stall at their barriers); only steps of PARALLEL_MIN_WORK or
    more get torch's threads, block_threads() of them at most."""
    old = torch.get_num_threads()
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    seen = []
    real = schedule.compute_block

    def spy(layer, k):
        seen.append((threading.current_thread() is threading.main_thread(),
                     torch.get_num_threads()))
        return real(layer, k)

    monkeypatch.setattr(schedule, "compute_block", spy)
    net = wn.serial(wn.Dense(4), wn.Relu())
    previous = wn.set_engine("eager")     # the row blocks (the native engine runs this chain
    try:                                  # as strips of its own, tests/layers/test_native.py)
        torch.set_num_threads(2)
        for limit, blocks, expect in ((1, 8, 1), (1, 1 << 18, 1), (2, 1 << 18, 1)):
            net.block_entries = blocks
            seen.clear()
            with parallel.threads_limit(limit):
                net.kernel(_x(20, 3))
            assert seen and all(s == (True, expect) for s in seen), (limit, blocks, seen)
            assert torch.get_num_threads() == 2                 # restored
        for elements, expect in ((parallel.PARALLEL_MIN_WORK, 2),
                                 (parallel.PARALLEL_MIN_WORK - 1, 1)):
            with parallel.big_op_threads(2, elements):
                assert torch.get_num_threads() == expect
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
        wn.set_engine(previous)


def test_thread_count_policy(monkeypatch):
    old = torch.get_num_threads()
    monkeypatch.setattr(parallel, "usable_cores", lambda: 3)
    try:
        torch.set_num_threads(8)
        assert parallel.block_threads() == 3            # never more than the cores
        torch.set_num_threads(2)
        assert parallel.block_threads() == 2            # torch's (OMP_NUM_THREADS) setting
        with parallel.threads_limit(1):
            assert parallel.block_threads() == 1        # the tile runner's limit
            with parallel.threads_limit(5):
                assert parallel.block_threads() == 1    # limits only tighten
        assert parallel.block_threads() == 2
        # computing blocks leaves this thread's torch setting as it was
        net = wn.serial(wn.Dense(4), wn.Relu())
        net.block_entries = 8
        net.kernel(_x(20, 3))
        assert torch.get_num_threads() == 2
        # ... and threads started afterwards get it too (the process-wide value is restored)
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == [2]
    finally:
        torch.set_num_threads(old)
