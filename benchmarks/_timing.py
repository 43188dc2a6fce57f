"""Timing helper shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

import statistics
import time


def times_of(fn, repeats):
    """(median, min) of `repeats` timed runs after a warm-up. On a shared machine the minimum
    is the best estimate of the uncontended time."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)
