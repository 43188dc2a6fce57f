"""Step-like activations with closed-form kernels: Sign and SigmoidLike
(docs/math.md §new-activations).

    Sign:        T = (2/π) arcsin(c),  c = K12/√(K11K22);  Tdot = 0
    SigmoidLike: φ(x) = (1 + erf(x/s))/2 with s = 2.4020563531719796; with a = 1/s,
                 T = 1/4 + (1/(2π)) arcsin(2a²K12 / √((1 + 2a²K11)(1 + 2a²K22))),
                 Tdot = (a²/π) / √((1 + 2a²K11)(1 + 2a²K22) - 4a⁴K12²)
"""

from __future__ import annotations

import math

import torch

from .activations import Activation, cosine_limit, needs_grad

__all__ = ["Sign", "SigmoidLike"]

#: NT's constant: erf(x / s) matches the logistic sigmoid's slope at 0 in 0.5 erf(x/s) + 0.5
SIGMOID_LIKE_SCALE = 2.4020563531719796


class Sign(Activation):
    """φ(x) = sign(x) (NT's `stax.Sign`).

    NNGP: T = (2/π) arcsin(K12/√(K11K22)) = 1 - 2θ/π, and 1 on the diagonal (0 where the
    variance is 0, as sign(0) = 0).

    NTK: Tdot = 0. The derivative of sign is zero wherever it is defined (autograd's
    derivative too), so gradients do not flow through a Sign layer: the NTK of a network with
    a Sign counts only the parameters after it, exactly what gradient descent on the finite
    network (torch's autograd) sees. The distributional derivative 2δ would give
    E[φ'(u)φ'(v)] = 2/(π√(K11K22 - K12²)) off the diagonal and +∞ on it; that is not used.
    docs/math.md §new-activations.

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> k = wn.serial(wn.Dense(1), wn.Sign()).kernel(x)
        >>> k.nngp.tolist(), k.ntk.tolist()          # orthogonal inputs: uncorrelated signs
        ([[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])
    """

    def forward(self, x):
        return torch.sign(x)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        c = torch.mul(torch.rsqrt(torch.clamp(k11, min=1e-30)),
                      torch.rsqrt(torch.clamp(k22, min=1e-30)))
        lim = cosine_limit(k12.dtype, needs_grad(k11, k22, k12))
        c = (c * k12).clamp_(-lim, lim)
        t = torch.arcsin(c).mul_(2 / math.pi)
        return t, (torch.zeros_like(k12) if want_tdot else None)

    def t_diag(self, k):
        return (k > 0).to(k.dtype)

    def tdot_diag(self, k):
        return torch.zeros_like(k)


class SigmoidLike(Activation):
    """φ(x) = 0.5·erf(x/2.4020563531719796) + 0.5, a sigmoid with an Erf kernel (NT's
    `stax.SigmoidLike`).

    With a = 1/2.4020563531719796 (the Erf kernel at covariance a²K; docs/math.md §new-activations):
        T    = 1/4 + (1/(2π)) arcsin(2a²K12 / √((1 + 2a²K11)(1 + 2a²K22)))
        Tdot = (a²/π) / √((1 + 2a²K11)(1 + 2a²K22) - 4a⁴K12²)

    Example:
        >>> import torch, widenets as wn
        >>> k = wn.serial(wn.Dense(1, w_std=0.0), wn.SigmoidLike()).kernel(torch.ones(1, 2))
        >>> float(k.nngp[0, 0])                      # φ(0)² = 1/4
        0.25
    """

    def forward(self, x):
        return 0.5 * torch.erf(x / SIGMOID_LIKE_SCALE) + 0.5

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        a2 = 1.0 / SIGMOID_LIKE_SCALE ** 2
        p = (1 + 2 * a2 * k11) * (1 + 2 * a2 * k22)
        t = torch.arcsin(torch.clamp(2 * a2 * k12 * torch.rsqrt(p), -1.0, 1.0)).mul_(
            1 / (2 * math.pi)).add_(0.25)
        tdot = None
        if want_tdot:
            det = torch.clamp(p - 4 * a2 * a2 * k12 * k12, min=1e-30)
            tdot = torch.rsqrt(det) * (a2 / math.pi)
        return t, tdot
