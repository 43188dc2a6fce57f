"""Coarse-grained parallelism: independent blocks of work on a pool of one-thread workers.

Why not torch's own threads: torch runs every elementwise operation as an OpenMP parallel
region that ends in a barrier. A kernel is thousands of such operations over cache-sized
blocks, so on a busy machine a single descheduled thread stalls every one of them (issue 14
measured 3.5x slowdowns where the Gram matrix slowed 2.1x). Here the blocks of a kernel are
independent tasks taken in order from a shared counter by P pool threads, each running torch
with ONE intra-op thread (torch releases the GIL inside its operations). A stalled thread then
delays only its own block while the others take the remaining ones; nothing waits at a barrier.

Thread counts (`block_threads`), in this order:
* a limit set around the call by `threads_limit` (the tile runner uses it so that its tile
  threads x block threads do not oversubscribe the machine);
* otherwise torch's intra-op thread count of the calling thread, `torch.get_num_threads()`,
  which follows `OMP_NUM_THREADS`, `torch.set_num_threads` and `widenets --threads`;
* never more than the cores this process may run on (`os.sched_getaffinity`).
The machine's load does not lower the default: the blocks are handed out dynamically, so a job
sharing the cores with others gets its fair share of CPU time without the barrier losses that
made extra threads harmful (measured by benchmarks/contention.py; see its docstring).

torch's thread setting and these threads: `torch.set_num_threads` is per thread for OpenMP
(an OpenMP ICV of the calling thread) but also stores a process-wide value that a thread
copies on its first torch operation. A pool thread therefore initializes torch, then sets one
thread for itself; the process-wide value is restored by the thread that grew the pool (in a
`finally`), so only threads that start their first torch operation during that instant (a
millisecond, once per process) could see 1. The calling thread also computes with one
intra-op thread while it assembles the blocks, restored in a `finally` as well.

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

__all__ = ["block_threads", "threads_limit", "usable_cores", "run_in_order", "torch_threads"]

_local = threading.local()


def usable_cores() -> int:
    """The number of CPU cores this process may run on (its affinity mask; os.cpu_count
    where that is not available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def block_threads() -> int:
    """How many pool threads compute the blocks of a kernel called from this thread (see the
    module docstring for the policy)."""
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

    `fn` runs on pool threads with one torch thread each and the caller's grad and inference
    modes; `consume` runs in the calling thread, in order. With threads <= 1 (or one item) it
    is the plain loop. At most 2 x threads results wait for `consume` at any time.

    Raises:
        The exception of the first failing item in order (after all started items finished);
        an exception of `consume` or a KeyboardInterrupt likewise stops the lanes first.
    """
    n = len(items)
    threads = min(threads, n)
    if threads <= 1 or not _threads_usable():
        for i, item in enumerate(items):
            consume(i, fn(item))
        return

    cond = threading.Condition()
    window = 2 * threads
    state = {"next": 0, "consumed": 0, "stop": False, "running": threads}
    done: dict[int, object] = {}
    errors: dict[int, BaseException] = {}
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()

    def lane() -> None:
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                while True:
                    with cond:
                        while not state["stop"] and state["next"] < n and \
                                state["next"] >= state["consumed"] + window:
                            cond.wait()
                        if state["stop"] or state["next"] >= n:
                            return
                        i = state["next"]
                        state["next"] += 1
                    try:
                        result, error = fn(items[i]), None
                    except BaseException as e:  # noqa: BLE001 - re-raised by the caller
                        result, error = None, e
                    with cond:
                        if error is None:
                            done[i] = result
                        else:
                            errors[i] = error
                            state["stop"] = True
                        cond.notify_all()
                    del result, error
        finally:
            with cond:
                state["running"] -= 1
                cond.notify_all()

    _POOL.run(lane, threads)
    try:
        with torch_threads(1):
            for i in range(n):
                with cond:
                    while i not in done and i not in errors:
                        cond.wait()
                    if i in errors:
                        raise errors.pop(i)
                    result = done.pop(i)
                consume(i, result)
                del result
                with cond:
                    state["consumed"] = i + 1
                    cond.notify_all()
    except BaseException:
        with cond:
            state["stop"] = True
            cond.notify_all()
        raise
    finally:
        with cond:
            while state["running"]:
                cond.wait()
        _POOL.release(threads)
