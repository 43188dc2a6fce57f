"""Coarse-grained parallelism: independent blocks of work on a pool of one-thread workers.

Why not torch's own threads: torch runs every elementwise operation as an OpenMP parallel
region that ends in a barrier. A kernel is thousands of such operations over cache-sized
blocks, so on a busy machine a single descheduled thread stalls every one of them (issue 14
measured 3.5x slowdowns where the Gram matrix slowed 2.1x). Here the blocks of a kernel are
independent tasks taken in order from a shared counter by P threads (the calling thread and
P - 1 pool threads), each running torch with ONE intra-op thread (torch releases the GIL inside
its operations). A stalled thread then delays only its own block while the others take the
remaining ones; nothing waits at a barrier.

Thread counts (`block_threads`): the smallest of
* torch's intra-op thread count of the calling thread, `torch.get_num_threads()`, which
  follows `OMP_NUM_THREADS`, `torch.set_num_threads` and `widenets --threads`;
* the cores this process may run on (`os.sched_getaffinity`);
* a limit set around the call by `threads_limit` (the tile runner's, so that tile threads x
  block threads do not oversubscribe the machine).
Everything else of a `net.kernel` call runs on the calling thread with ONE torch thread
(torch's threads would bring the barriers back: a kernel of 200 inputs took 12x longer with two
on the busy machine), except large steps (`big_op_threads`: the input Gram matrix, a kernel
that cannot be cut into blocks) which use `block_threads()` torch threads.

The machine's load does not lower the count. A variant that took one thread per core left
free by other runnable threads (/proc/loadavg) was measured against this one on the busy 2-core
machine (benchmarks/contention.py, interleaved rounds): next to a second torch job it was 1.3x
slower (1.6x the Gram's slowdown against 1.0x), and two widenets jobs at once ran alike with
either. Blocks are handed out dynamically, so a job with more threads than its share of the
cores loses little (the threads share Python's GIL between operations: a thread descheduled
while it holds the GIL delays its job's other threads, a far rarer stall than a barrier per
operation), while under the operating system's per-thread fair share it gets more CPU time.

torch's thread setting and these threads: `torch.set_num_threads` is per thread for OpenMP
(an OpenMP ICV of the calling thread) but also stores a process-wide value that a thread
copies on its first torch operation. A pool thread therefore initializes torch, then sets one
thread for itself; the process-wide value is restored by the thread that grew the pool (in a
`finally`), so only threads that start their first torch operation during that instant (a
millisecond, once per process) could see 1. During a `net.kernel` call the calling thread
runs with one torch thread (more for large steps), its setting restored in a `finally`; as
`torch.set_num_threads` writes the process-wide value too, another thread of the program that
makes its FIRST torch operation during the call starts with that count (threads that already
ran torch keep theirs).

Results are bitwise those of the serial loop: each block is computed by the same operations
on the same data, whichever thread runs it, and results are consumed in block order. An
exception in a block is re-raised in the calling thread (same object, message and traceback);
when several blocks fail, the first in block order wins, exactly as in the serial loop, and
the call returns only after every started block has finished.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Sequence

import torch

__all__ = ["spans", "block_threads", "threads_limit", "usable_cores", "run_in_order",
           "torch_threads", "big_op_threads", "PARALLEL_MIN_WORK"]

_local = threading.local()


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """[(0, size), (size, 2 size), ..., (.., n)]: consecutive index ranges of at most `size`
    covering range(n), the blocks and strips that the schedulers hand out.

    Example:
        >>> spans(5, 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def usable_cores() -> int:
    """The number of CPU cores this process may run on (its affinity mask; os.cpu_count
    where that is not available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def block_threads() -> int:
    """How many threads compute the blocks of a kernel called from this thread (the calling
    thread and pool threads; see the module docstring for the policy)."""
    n = min(torch.get_num_threads(), usable_cores())
    limit = getattr(_local, "limit", None)
    if limit is not None:
        n = min(n, limit)
    return max(1, n)


@contextlib.contextmanager
def threads_limit(n: int):
    """Within this block, kernels called from this thread use at most `n` block threads."""
    old = getattr(_local, "limit", None)
    _local.limit = max(1, int(n)) if old is None else max(1, min(old, int(n)))
    try:
        yield
    finally:
        _local.limit = old


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count of this thread set to `n` for the block, then restored
    (with the process-wide value torch copies into new threads, see the module docstring)."""
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


#: work (scalar multiply-adds or elementwise operations) below which a step of `net.kernel` on
#: the calling thread runs with one torch thread, about 50 ms of one core: splitting its
#: operations costs barriers, which on a busy machine cost far more than small operations
#: (measured: a kernel of 200 inputs took 8-12x longer with two threads)
PARALLEL_MIN_WORK = 1 << 27


def big_op_threads(threads: int, work: int):
    """torch_threads for a step of the calling thread of about `work` scalar operations (the
    input Gram matrix, a kernel that is one block): `threads` if it is large, else 1."""
    return torch_threads(threads if work >= PARALLEL_MIN_WORK else 1)


# ------------------------------------------------------------------------------ the pool
class _Pool:
    """Daemon threads that run the lanes of `run_in_order`; each computes with one torch
    thread. The pool grows to the number of lanes running at once (over all callers)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.size = 0
        self.busy = 0

    def run(self, job: Callable[[], None], lanes: int) -> None:
        with self.lock:
            self.busy += lanes
            grow = self.busy - self.size
            if grow > 0:
                self._grow(grow)
        for _ in range(lanes):
            self.jobs.put(job)

    def release(self, lanes: int) -> None:
        with self.lock:
            self.busy -= lanes

    def _grow(self, k: int) -> None:
        ready = threading.Barrier(k + 1)
        mine = torch.get_num_threads()
        try:
            for _ in range(k):
                threading.Thread(target=self._work, args=(ready,), daemon=True,
                                 name=f"widenets-block-{self.size}").start()
                self.size += 1
            ready.wait()
        finally:
            torch.set_num_threads(mine)     # the process-wide value the new threads changed

    def _work(self, ready: threading.Barrier) -> None:
        torch.get_num_threads()         # torch's per-thread initialization happens now...
        torch.set_num_threads(1)        # ...so this one-thread setting stays with the thread
        ready.wait()
        while True:
            job = self.jobs.get()
            job()


_POOL = _Pool()


def _after_fork() -> None:           # a forked child has none of the parent's threads
    global _POOL
    _POOL = _Pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _threads_usable() -> bool:
    """False inside torch.compile tracing or torch.func transforms, whose state belongs to
    the calling thread."""
    try:
        if torch.compiler.is_compiling():
            return False
        return torch._C._functorch.peek_interpreter_stack() is None
    except AttributeError:          # pragma: no cover - other torch versions: be safe
        return False


# ------------------------------------------------------------------------------ run
def run_in_order(fn: Callable, items: Sequence, consume: Callable[[int, object], None], *,
                 threads: int) -> None:
    """consume(i, fn(items[i])) for i = 0, 1, ... in order, with fn on `threads` threads.

    The calling thread is one of the `threads`: it computes items too, and consumes the
    finished ones in order between its own items (consuming first, so that at most
    2 x threads results wait). The other threads - 1 are pool threads. Every fn runs with one
    torch thread and the caller's grad and inference modes. With threads <= 1 (or one item)
    it is the plain loop, with one torch thread.

    Raises:
        The exception of the first failing item in order, after every started item finished;
        an exception of `consume` or a KeyboardInterrupt likewise stops and waits first.
    """
    n = len(items)
    if n <= 1 or threads <= 1 or not _threads_usable():
        # one thread: one torch thread (no barrier per operation)
        with torch_threads(1):
            for i, item in enumerate(items):
                consume(i, fn(item))
        return
    threads = min(threads, n)

    cond = threading.Condition()
    window = 2 * threads
    lanes = threads - 1                     # pool threads; the caller is the last lane
    # inflight: items started and not finished. The caller waits for those only, not for
    # pool threads that have not woken up yet (on a busy machine that takes milliseconds;
    # such a lane finds nothing left and returns)
    state = {"next": 0, "consumed": 0, "stop": False, "inflight": 0}
    done: dict[int, object] = {}
    errors: dict[int, BaseException] = {}
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()

    def take() -> int | None:               # under cond: the next item, if one may start
        i = state["next"]
        if state["stop"] or i >= n or i >= state["consumed"] + window:
            return None
        state["next"] = i + 1
        state["inflight"] += 1
        return i

    def compute(i: int) -> None:
        try:
            result, error = fn(items[i]), None
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller, in order
            result, error = None, e
        with cond:
            if error is None:
                done[i] = result
            else:
                errors[i] = error
                state["stop"] = True
            state["inflight"] -= 1
            cond.notify_all()

    def lane() -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            while True:
                with cond:
                    i = take()
                    while i is None and not state["stop"] and state["next"] < n:
                        cond.wait()
                        i = take()
                if i is None:
                    return
                compute(i)

    _POOL.run(lane, lanes)
    try:
        with torch_threads(1):
            while state["consumed"] < n:
                with cond:
                    c = state["consumed"]
                    if c in errors:
                        raise errors.pop(c)
                    ready = c in done
                    result = done.pop(c) if ready else None
                    i = None if ready else take()
                    if not ready and i is None:
                        cond.wait()
                        continue
                if ready:
                    consume(c, result)
                    result = None
                    with cond:
                        state["consumed"] = c + 1
                        cond.notify_all()
                else:
                    compute(i)
    except BaseException:
        with cond:
            state["stop"] = True
            cond.notify_all()
        raise
    finally:
        with cond:
            while state["inflight"]:
                cond.wait()
        _POOL.release(lanes)
