"""What finite width changes: NTK drift, laziness, depth-to-width statistics and the Neural
Tangent Hierarchy (docs/math.md §laziness, §nth, §hanin-nica; seeds 000, 001, 003).

    import widenets as wn
    rec = wn.finite_width.train(model, x, y, learning_rate=1.0, steps=100)
    wn.finite_width.relative_change(rec).weights        # laziness per parameter tensor
    k3 = wn.finite_width.higher_order_kernel(model, x, order=3)
    nth = wn.finite_width.truncated_nth(model, x, y, order=3, times=ts)
    gd = wn.finite_width.truncated_nth(model, x, y, order=3, times=range(20),
                                       learning_rate=2.0, discrete=True)   # GD, step η
    mom = wn.finite_width.ntk_moments(depth=10, width=50, x=x0, n_samples=10_000)

Time and loss conventions: see `training` (t = number of GD steps of size η; "mean" loss
(1/2n) Σ r² of seed 000 or "sum" loss (1/2) Σ r² of seed 002).
"""

from .hierarchy import (
    NTHKernels,
    NTHResult,
    higher_order_kernel,
    k3_hvp_count,
    nth_kernels,
    truncated_nth,
)
from .laziness import (
    KappaResult,
    RelativeChange,
    ScaledModel,
    SweepResult,
    kappa,
    relative_change,
    scaled,
    width_sweep,
)
from .moments import NTKMoments, ntk_moments
from .training import RECORDABLE, TrainRecord, train

__all__ = [
    "train", "TrainRecord", "RECORDABLE",
    "relative_change", "RelativeChange", "kappa", "KappaResult", "scaled", "ScaledModel",
    "width_sweep", "SweepResult",
    "ntk_moments", "NTKMoments",
    "higher_order_kernel", "nth_kernels", "truncated_nth", "NTHKernels", "NTHResult",
    "k3_hvp_count",
]
