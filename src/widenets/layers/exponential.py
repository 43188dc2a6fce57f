"""Exponential activations with closed-form kernels: Exp, Gaussian, and the kernel-only
ExpNormalized (docs/math.md §new-activations).

    Exp:       φ(x) = a exp(b x):    T = a² exp(b²(K11 + K22 + 2K12)/2),  Tdot = b² T
    Gaussian:  φ(x) = a exp(b x²):   with D = (1 - 2bK11)(1 - 2bK22) - 4b²K12² = det(I - 2bΣ),
               T = a² D^(-1/2),  Tdot = 4a²b² K12 D^(-3/2)   (finite iff 4b·max K < 1)
    ExpNormalized (kernel map only): with c = K12/√(K11K22),
               T = √(K11K22) exp(γ(c + shift)),  Tdot = γ exp(γ(c + shift))
"""

from __future__ import annotations

import torch

from ..kernel import Kernel
from .activations import Activation, _finite_numbers

__all__ = ["Exp", "Gaussian", "ExpNormalized"]


class Exp(Activation):
    """φ(x) = a·exp(b·x) (NT's `stax.Exp`): T = a² exp(b²(K11 + K22 + 2K12)/2), Tdot = b² T
    (the log-normal moment E[exp(b(u + v))]; docs/math.md §new-activations).

    Args:
        a: scale.
        b: rate.

    Example:
        >>> import torch, widenets as wn
        >>> k = wn.serial(wn.Dense(1), wn.Exp()).kernel(torch.ones(1, 2), get="nngp")
        >>> round(float(k[0, 0]), 6)                 # exp(2 K) at K = 1
        7.389056
    """

    def __init__(self, a: float = 1.0, b: float = 1.0):
        self.a, self.b = _finite_numbers("Exp", a=a, b=b)

    hyperparameter_domains = {"a": "real", "b": "real"}

    def forward(self, x):
        return self.a * torch.exp(self.b * x)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        b2 = self.b ** 2
        t = torch.exp((k11 + k22 + 2 * k12) * (0.5 * b2)) * self.a ** 2
        return t, (torch.mul(t, b2) if want_tdot else None)


class Gaussian(Activation):
    """φ(x) = a·exp(b·x²) (NT's `stax.Gaussian`; b < 0 for a bump).

    Closed forms (the Gaussian integral with the tilt exp(b(u² + v²)); docs/math.md
    §Catalogue activations), with D = det(I - 2bΣ) = (1 - 2bK11)(1 - 2bK22) - 4b²K12²:
        T    = a² D^(-1/2),     Tdot = 4a²b² K12 D^(-3/2),
    on the diagonal D = 1 - 4bK. E[φ(u)²] diverges when 4b·K ≥ 1, so a kernel whose
    pre-activation variances reach 1/(4b) (b > 0) raises ValueError instead of returning inf.

    Args:
        a: scale.
        b: the coefficient of x² (any sign; b > 0 needs small variances, see above).

    Example:
        >>> import torch, widenets as wn
        >>> k = wn.serial(wn.Dense(1), wn.Gaussian()).kernel(torch.ones(1, 2), get="nngp")
        >>> round(float(k[0, 0]), 6)                 # 1/√(1 + 4K) at K = 1
        0.447214
    """

    def __init__(self, a: float = 1.0, b: float = -1.0):
        self.a, self.b = _finite_numbers("Gaussian", a=a, b=b)

    hyperparameter_domains = {"a": "real", "b": "real"}

    def forward(self, x):
        return self.a * torch.exp(self.b * x * x)

    def apply_kernel(self, k: Kernel) -> Kernel:
        if self.b > 0 and not isinstance(k, list):
            v1, v2 = k.position_variances()
            vmax = float(max(v1.max(), v2.max()))
            if 4 * self.b * vmax >= 1:
                raise ValueError(
                    f"Gaussian.kernel: b = {self.b} needs pre-activation variances below "
                    f"1/(4b) = {1 / (4 * self.b):.6g} (E[exp(2b u²)] diverges beyond), got a "
                    f"maximum variance of {vmax:.6g}; use a smaller b, w_std or b_std")
        return super().apply_kernel(k)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        b = self.b
        d = (1 - 2 * b * k11) * (1 - 2 * b * k22) - (4 * b * b) * k12 * k12
        r = torch.rsqrt(d)
        t = r * self.a ** 2
        tdot = None
        if want_tdot:
            tdot = (4 * self.a ** 2 * b * b) * k12 * r * r * r
        return t, tdot

    def t_diag(self, k):
        return self.a ** 2 * torch.rsqrt(1 - 4 * self.b * k)

    def tdot_diag(self, k):
        return 4 * self.a ** 2 * self.b ** 2 * k * torch.rsqrt(1 - 4 * self.b * k) ** 3


class ExpNormalized(Activation):
    """The "Gaussian normalized kernel" of Shankar et al. 2020 (NT's `stax.ExpNormalized`):
    a kernel map only, with no finite network (`module()` raises ValueError).

    With c = K12/√(K11K22) (clipped to [-1, 1] when do_clip):
        T    = √(K11K22) exp(γ(c + shift)),     Tdot = ∂T/∂K12 = γ exp(γ(c + shift))
    On the diagonal (c = 1) with shift = -1: T = K, Tdot = γ. It acts on any kernel (Gaussian
    inputs are not needed) and its output is not Gaussian.

    Args:
        gamma: γ, the exponent's coefficient.
        shift: added to the cosine before exponentiation.
        do_clip: clip the cosine to [-1, 1] (guards rounding).

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> k = wn.serial(wn.Dense(1), wn.ExpNormalized()).kernel(x, get="nngp")
        >>> round(float(k[0, 1]), 6)                 # √(½·½) e^{-1} for orthogonal inputs
        0.18394
    """

    needs_gaussian = False

    def __init__(self, gamma: float = 1.0, shift: float = -1.0, do_clip: bool = False):
        self.gamma, self.shift = _finite_numbers("ExpNormalized", gamma=gamma, shift=shift)
        if not isinstance(do_clip, bool):
            raise TypeError(f"ExpNormalized: do_clip must be a bool, got {do_clip!r}")
        self.do_clip = do_clip

    hyperparameter_domains = {"gamma": "real", "shift": "real"}

    def forward(self, x):
        raise ValueError("ExpNormalized.module: ExpNormalized is a kernel map without a "
                         "finite network; use it in .kernel() only")

    def build(self, in_shape, generator, dtype):
        raise ValueError("ExpNormalized.module: ExpNormalized is a kernel map without a "
                         "finite network (Shankar et al. 2020); use it in .kernel() only")

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        prod = torch.sqrt(torch.clamp(k11 * k22, min=1e-30))
        c = k12 / prod
        if self.do_clip:
            c = c.clamp_(-1.0, 1.0)
        e = torch.exp((c + self.shift) * self.gamma)
        return e * prod, (e * self.gamma if want_tdot else None)

    def _diag_factor(self, k):
        """exp(γ(1 + shift)) in k's dtype (a tensor that keeps tensor hyperparameters' grad)."""
        return torch.exp(torch.as_tensor(self.gamma * (1 + self.shift), dtype=k.dtype))

    def t_diag(self, k):
        return k * self._diag_factor(k)

    def tdot_diag(self, k):
        return torch.ones_like(k) * (self.gamma * self._diag_factor(k))
