"""How much memory widenets may plan to use: one policy for every memory-aware path.

The policy (`memory_budget`): a step that chooses its own size (the blocks of a full-layout
kernel, all of them running at once together; loading a stored kernel; a Cholesky solve of a
stored kernel; the blocks of an empirical NTK) plans for at most HALF of the memory available
when it starts (MemAvailable on Linux; a GPU's free memory for its tensors), so that the
other half absorbs what the estimate misses and what other processes take meanwhile. A path
may cap it lower where it has a reason (the empirical NTK caps it at 2 GiB,
`widenets.empirical.cost.DEFAULT_BUDGET_BYTES`).

Tests simulate a small machine by replacing `available_memory` in this module.

`reuse_freed_memory` (glibc only): while a full-layout kernel runs, its blocks allocate and
free tens of tensors of up to tens of MiB per layer. glibc serves allocations above its mmap
threshold (at most 32 MiB, adapting upwards from 128 KiB) with fresh mmaps and returns freed
heap tops above its trim threshold to the system, so every such temporary is faulted in page
by page (the kernel zeroes each 4 KiB page) on first touch: measured on the busy 2-core
machine, the float64 CNN-GAP kernel of benchmarks/analytic_conv.py spent more than half its CPU
time in those faults (2.6 s against 1.0 s of CPU at N = 64). Inside the context both
thresholds are raised, so freed blocks are reused; on exit they are set to glibc's own ceilings
(32 MiB / 64 MiB) and `malloc_trim(0)` hands the retained memory back.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

__all__ = ["available_memory", "memory_budget", "on_host", "reuse_freed_memory"]


def on_host(device) -> bool:
    """Whether `device` (None, a name such as "cuda:1", or a torch.device) is the CPU."""
    return device is None or str(device).split(":")[0] == "cpu"


def available_memory(device=None) -> int:
    """Bytes of memory available to this process: on the CPU (device None or "cpu")
    MemAvailable on Linux (4 GiB otherwise); on a CUDA device the free device memory plus what
    torch's caching allocator holds unused."""
    if not on_host(device):
        import torch

        device = torch.device(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free + torch.cuda.memory_reserved(device)
                       - torch.cuda.memory_allocated(device))
        return 4 << 30                         # other accelerators: a conservative guess
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def memory_budget(*, cap: int | None = None, device=None) -> int:
    """Bytes a memory-aware step may plan to hold at once: half of `available_memory(device)`
    now (the CPU's by default, a GPU's for its tensors), and at most `cap` when given (see the
    module docstring)."""
    budget = available_memory(device) // 2
    return budget if cap is None else min(budget, int(cap))


# glibc's mallopt parameters (malloc.h) and the values used while a kernel runs / after it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HIGH = (1 << 31) - 1                      # mallopt takes an int
_MMAP_AFTER, _TRIM_AFTER = 32 << 20, 64 << 20   # glibc's own ceilings of the dynamic values
_reuse_lock = threading.Lock()
_reuse_depth = 0
_libc: list = []                           # [libc or None], looked up once


def _glibc():
    if not _libc:
        lib = None
        try:
            cand = ctypes.CDLL("libc.so.6")
            if hasattr(cand, "mallopt") and hasattr(cand, "malloc_trim") \
                    and hasattr(cand, "gnu_get_libc_version"):
                lib = cand
        except OSError:
            pass
        _libc.append(lib)
    return _libc[0]


@contextlib.contextmanager
def reuse_freed_memory():
    """Inside: freed memory stays in the process and is reused (no page faults on large
    temporaries); on exit the thresholds return to glibc's ceilings and the retained memory to
    the system. Nested and concurrent uses share one setting (the last exit restores). A no-op
    without glibc (see the module docstring)."""
    global _reuse_depth
    lib = _glibc()
    if lib is None:
        yield
        return
    with _reuse_lock:
        _reuse_depth += 1
        if _reuse_depth == 1:
            lib.mallopt(_M_MMAP_THRESHOLD, _HIGH)
            lib.mallopt(_M_TRIM_THRESHOLD, _HIGH)
    try:
        yield
    finally:
        with _reuse_lock:
            _reuse_depth -= 1
            if _reuse_depth == 0:
                lib.mallopt(_M_MMAP_THRESHOLD, _MMAP_AFTER)
                lib.mallopt(_M_TRIM_THRESHOLD, _TRIM_AFTER)
                lib.malloc_trim(0)
