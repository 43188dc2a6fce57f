"""Trigonometric activations with closed-form kernels: Cos, Rbf, Gabor.

For φ(x) = a cos(b x + c) the Gaussian expectations follow from E[cos(wᵀz)] = exp(-wᵀΣw/2)
(docs/math.md §new-activations), with S = K11 + K22:

    Cos:   T    = a²/2 (exp(-b²(S - 2K12)/2) + exp(-b²(S + 2K12)/2) cos 2c)
           Tdot = a²b²/2 (exp(-b²(S - 2K12)/2) - exp(-b²(S + 2K12)/2) cos 2c)
    Rbf:   φ(x) = √2 sin(√(2γ) x + π/4):  T = exp(-γ(K11 + K22 - 2K12)),  Tdot = 2γ T
    Gabor: φ(x) = exp(-x²) sin x; with Δ = K11K22 - K12², D = 1 + 2S + 4Δ, q = K12/D,
           E = exp(-(S + 4Δ)/(2D)):
           T    = D^(-1/2) E sinh(q)
           Tdot = ∂T/∂K12 = D^(-1/2) E (4K12 (D + 1 + S) sinh(q) + (D + 8K12²) cosh(q)) / D²

Every formula is a polynomial/exponential of (K11, K22, K12) without √(K11K22), so it is
exactly symmetric and exact on the diagonal (no arccos).
"""

from __future__ import annotations

import math

import torch

from .activations import Activation, _finite_numbers, cos_of, needs_grad

__all__ = ["Cos", "Rbf", "Gabor"]


class Cos(Activation):
    """φ(x) = a·cos(b·x + c) (NT's `stax.Cos`).

    Closed forms (docs/math.md §new-activations), S = K11 + K22:
        T    = a²/2 (exp(-b²(S - 2K12)/2) + exp(-b²(S + 2K12)/2) cos 2c)
        Tdot = a²b²/2 (exp(-b²(S - 2K12)/2) - exp(-b²(S + 2K12)/2) cos 2c)

    Args:
        a: amplitude.
        b: frequency.
        c: phase.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(1), wn.Cos())
        >>> k = net.kernel(torch.ones(1, 2), get="nngp")    # K12 = 1: (1 + e^{-2})/2
        >>> round(float(k[0, 0]), 6)
        0.567668
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a, self.b, self.c = _finite_numbers("Cos", a=a, b=b, c=c)

    hyperparameter_domains = {"a": "real", "b": "real", "c": "real"}

    def forward(self, x):
        return self.a * torch.cos(self.b * x + self.c)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        b2 = self.b ** 2
        s = k11 + k22
        minus = torch.exp(-0.5 * b2 * (s - 2 * k12))
        plus = torch.exp(-0.5 * b2 * (s + 2 * k12)) * cos_of(2 * self.c)
        half = 0.5 * self.a ** 2
        tdot = (minus - plus) * (half * b2) if want_tdot else None
        return (minus + plus) * half, tdot


class Rbf(Activation):
    """φ(x) = √2·sin(√(2γ)·x + π/4), whose NNGP is the RBF kernel of its inputs (NT's
    `stax.Rbf`): T = exp(-γ(K11 + K22 - 2K12)), Tdot = 2γ·T (docs/math.md §new-activations).
    After Dense(w_std=1, b_std=0) on inputs x this is exp(-γ‖x - x'‖²/d).

    Args:
        gamma: γ > 0, the RBF's inverse length scale.

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> k = wn.serial(wn.Dense(1), wn.Rbf(0.5)).kernel(x, get="nngp")
        >>> round(float(k[0, 1]), 6)                 # exp(-0.5 · ‖x - x'‖² / 2)
        0.606531
    """

    def __init__(self, gamma: float = 1.0):
        (self.gamma,) = _finite_numbers("Rbf", gamma=gamma)
        if self.gamma <= 0:
            raise ValueError(f"Rbf: gamma must be > 0, got {gamma!r}")

    hyperparameter_domains = {"gamma": "positive"}

    def forward(self, x):
        return math.sqrt(2) * torch.sin((2 * self.gamma) ** 0.5 * x + math.pi / 4)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        t = torch.exp((2 * k12 - (k11 + k22)) * self.gamma)
        return t, (torch.mul(t, 2 * self.gamma) if want_tdot else None)

    def t_diag(self, k):
        return torch.ones_like(k)

    def tdot_diag(self, k):
        return torch.ones_like(k) * (2 * self.gamma)


class Gabor(Activation):
    """φ(x) = exp(-x²)·sin(x) (NT's `stax.Gabor`).

    With Δ = K11K22 - K12², S = K11 + K22, D = det(I + 2Σ) = 1 + 2S + 4Δ, q = K12/D and
    E = exp(-(S + 4Δ)/(2D)) (docs/math.md §new-activations, Gaussian tilt):
        T    = D^(-1/2) E sinh(q)
        Tdot = ∂T/∂K12 = D^(-1/2) E (4K12 (D + 1 + S) sinh q + (D + 8K12²) cosh q) / D²

    Example:
        >>> import torch, widenets as wn
        >>> k = wn.serial(wn.Dense(1), wn.Gabor()).kernel(torch.ones(1, 2), get="nngp")
        >>> round(float(k[0, 0]), 6)                 # (1 - e^{-2/5}) / (2√5) at K = 1
        0.073719
    """

    def forward(self, x):
        return torch.exp(-x * x) * torch.sin(x)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        # In place on fresh temporaries (memory-bound, as ABRelu). With A = 1 + S and r = 1/D:
        # D = 2A - 1 + 4Δ, the exponent x = -(S + 4Δ)/(2D) = (A r - 1)/2, q = K12 r, and
        # E sinh q, E cosh q = (e^{x+q} ∓ e^{x-q})/2: two exponentials instead of four
        # transcendental passes (exp, sinh, cosh).
        if needs_grad(k11, k22, k12):
            return self._t_and_tdot_autograd(k11, k22, k12, want_tdot)
        a = (k11 + k22).add_(1)                              # 1 + S (an outer sum, symmetric)
        r = torch.mul(k11, k22).sub_(k12 * k12).mul_(4).add_(a).add_(a).sub_(1).reciprocal_()
        x = torch.mul(a, r).sub_(1).mul_(0.5)
        q = torch.mul(k12, r)
        ep = torch.add(x, q).exp_()
        em = x.sub_(q).exp_()
        half_root = r.sqrt().mul_(0.5)                       # D^(-1/2) / 2
        tdot = None
        if want_tdot:
            # Tdot = D^(-1/2) r² (4K12 (D + A) E sinh q + (D + 8K12²) E cosh q)
            inv = r.reciprocal()
            lhs = torch.add(inv, a).mul_(k12).mul_(4).mul_(ep - em)
            rhs = torch.mul(k12, k12).mul_(8).add_(inv).mul_(ep + em)
            tdot = lhs.add_(rhs).mul_(r).mul_(r).mul_(half_root)
        return ep.sub_(em).mul_(half_root), tdot

    @staticmethod
    def _t_and_tdot_autograd(k11, k22, k12, want_tdot):
        """The same formulas out of place, for autograd."""
        a = k11 + k22 + 1
        r = 1 / (4 * (k11 * k22 - k12 * k12) + 2 * a - 1)
        x = (a * r - 1) * 0.5
        q = k12 * r
        ep, em = torch.exp(x + q), torch.exp(x - q)
        half_root = torch.sqrt(r) * 0.5
        tdot = None
        if want_tdot:
            tdot = ((1 / r + a) * k12 * 4 * (ep - em) + (8 * k12 * k12 + 1 / r) * (ep + em)) \
                * r * r * half_root
        return (ep - em) * half_root, tdot
