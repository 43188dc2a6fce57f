"""How much memory widenets may plan to use: one policy for every memory-aware path.

The policy (`memory_budget`): a step that chooses its own size (the blocks of a full-layout
kernel, all of them running at once together; loading a stored kernel; a Cholesky solve of a
stored kernel; the blocks of an empirical NTK) plans for at most HALF of the memory available
when it starts (MemAvailable on Linux), so that the other half absorbs what the estimate
misses and what other processes take meanwhile. A path may cap it lower where it has a reason
(the empirical NTK caps it at 2 GiB, `widenets.empirical.cost.DEFAULT_BUDGET_BYTES`).

Tests simulate a small machine by replacing `available_memory` in this module.
"""

from __future__ import annotations

import os

__all__ = ["available_memory", "memory_budget"]


def available_memory() -> int:
    """Bytes of memory available to this process (MemAvailable on Linux; 4 GiB otherwise)."""
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


def memory_budget(*, cap: int | None = None) -> int:
    """Bytes a memory-aware step may plan to hold at once: half of `available_memory()` now,
    and at most `cap` when given (see the module docstring)."""
    budget = available_memory() // 2
    return budget if cap is None else min(budget, int(cap))
