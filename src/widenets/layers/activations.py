"""Pointwise activations: each supplies only its formulas.

For a pointwise φ and (u, v) ~ N(0, [[K11, K12], [K12, K22]]) (docs/math.md §activations):

    T(K)    = E[φ(u) φ(v)]            (the new second moment; nngp and both variances)
    Tdot(K) = E[φ'(u) φ'(v)]          (multiplies the NTK:  Θ' = Tdot(K) Θ)

`Activation.apply_kernel` does the bookkeeping once (cross-covariance, both variances, exact
diagonal when x1 is x2, the NTK factor, the Gaussian-input check); a subclass defines
`forward` (the finite function), `t` and `tdot` (closed forms, broadcasting over tensors), and
optionally `t_diag`/`tdot_diag` (K11 = K22 = K12) when a cheaper exact form exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..kernel import Kernel
from .base import Layer

__all__ = ["Activation", "ABRelu", "Relu", "LeakyRelu", "Abs", "Identity", "Erf", "Gelu", "Sin",
           "Elementwise", "ActivationModule"]

_TINY = 1e-30


def _cos_angle(k11, k22, k12):
    """c = K12 / sqrt(K11 K22), clipped to [-1, 1] (guards arccos), and sqrt(K11 K22)."""
    prod = torch.sqrt(torch.clamp(k11 * k22, min=_TINY))
    return torch.clamp(k12 / prod, -1.0, 1.0), prod


def _finite_numbers(func: str, **values) -> tuple[float, ...]:
    """The activation's parameters as floats; each must be a finite real number."""
    for arg, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{func}: {arg} must be a finite number, got {v!r}")
    return tuple(float(v) for v in values.values())


class ActivationModule(nn.Module):
    """The finite view of an activation: applies its torch function elementwise."""

    def __init__(self, layer: Activation):
        super().__init__()
        self.layer_name = layer.name
        self._fn = layer.forward

    def forward(self, x):
        return self._fn(x)

    def extra_repr(self) -> str:
        return self.layer_name


class Activation(Layer):
    """Base class: pointwise nonlinearity with infinite-width formulas T and Tdot."""

    #: whether the closed form needs Gaussian inputs (False only for linear maps)
    needs_gaussian: bool = True
    #: whether t/tdot evaluate exactly symmetrically in (K11, K22) (quadrature does not)
    symmetric_formula: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # A subclass overrides either t_and_tdot (closed forms sharing intermediate results) or
    # t and tdot (separate computations); each pair has a default in terms of the other.
    def t(self, k11, k22, k12):
        return self.t_and_tdot(k11, k22, k12, False)[0]

    def tdot(self, k11, k22, k12):
        return self.t_and_tdot(k11, k22, k12, True)[1]

    def t_diag(self, k):
        """T at K11 = K22 = K12 = k (the variance of φ(u))."""
        return self.t(k, k, k)

    def tdot_diag(self, k):
        return self.tdot(k, k, k)

    def t_and_tdot(self, k11, k22, k12, want_tdot: bool):
        """T and (if want_tdot) Tdot at once."""
        return self.t(k11, k22, k12), (self.tdot(k11, k22, k12) if want_tdot else None)

    # ------------------------------------------------------------- bookkeeping
    def apply_kernel(self, k: Kernel) -> Kernel:
        if isinstance(k, list):
            raise ValueError(f"{self.name}.kernel: expected one input, got {len(k)} branches; "
                             f"merge them with FanInSum() or FanInConcat() first")
        if self.needs_gaussian and not k.is_gaussian:
            got = "the raw input" if k.is_input else "a non-Gaussian layer output"
            raise ValueError(f"{self.name}.kernel: input must be Gaussian (got {got}); put a "
                             f"Dense or Conv before it")
        k11, k22 = k.broadcast_variances()
        nngp, tdot = self.t_and_tdot(k11, k22, k.nngp, k.ntk is not None)
        cov1, cov2 = k.map_variances(self.t_diag, self.t)
        if k.x1_is_x2:  # exact symmetry and diagonal (c = 1), see Kernel.set_batch_diagonal
            if not self.symmetric_formula:
                nngp = k.symmetrize(nngp)
                tdot = None if tdot is None else k.symmetrize(tdot)
            k.set_batch_diagonal(nngp, cov1)
            if tdot is not None:
                k.set_batch_diagonal(tdot, k.map_variances(self.tdot_diag, self.tdot)[0])
        ntk = None if k.ntk is None else tdot.mul_(k.ntk)      # Θ' = Tdot(K) Θ
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2,
                         is_gaussian=k.is_gaussian and not self.needs_gaussian
                         and self._keeps_gaussian(),
                         is_input=False)

    def _keeps_gaussian(self) -> bool:
        return False

    def build(self, in_shape, generator, dtype):
        if isinstance(in_shape, list):
            raise ValueError(f"{self.name}.module: expected one input, got {len(in_shape)} "
                             f"branches")
        return ActivationModule(self), in_shape


# --------------------------------------------------------------------------- ReLU family
class ABRelu(Activation):
    """φ(x) = a·min(x, 0) + b·max(x, 0). LeakyRelu, Relu, Abs and Identity are special cases.

    docs/math.md §relu (Cho & Saul 2009 arc-cosine kernels), θ = arccos c:
        T    = (a²+b²) √(K11K22) (sin θ + (π-θ) cos θ)/(2π) - 2ab √(K11K22) (sin θ - θ cos θ)/(2π)
        Tdot = ((a²+b²)(π-θ) + 2abθ) / (2π)

    Example:
        >>> x = torch.randn(3, 4)
        >>> k1 = wn.serial(wn.Dense(1), wn.ABRelu(0.0, 1.0)).kernel(x, get="nngp")
        >>> k2 = wn.serial(wn.Dense(1), wn.Relu()).kernel(x, get="nngp")
        >>> bool(torch.allclose(k1, k2))
        True
    """

    def __init__(self, a: float = 0.0, b: float = 1.0):
        self.a, self.b = _finite_numbers(type(self).__name__, a=a, b=b)

    @property
    def needs_gaussian(self) -> bool:  # a linear map is exact on any input
        return self.a != self.b

    def _keeps_gaussian(self) -> bool:
        return self.a == self.b

    def forward(self, x):
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        a, b = self.a, self.b
        if a == b:
            return a * a * k12, (torch.full_like(k12, a * a) if want_tdot else None)
        # Memory-bound: each line below is one pass over the (block of the) kernel, in place
        # on fresh temporaries. With 2π Tdot = (a²+b²)(π - θ) + 2abθ the NNGP is
        # T = √(K11 K22) (c · Tdot + (a - b)² sin θ / (2π)). The variance factors are
        # outer products of small tensors, evaluated symmetrically in (x1, x2).
        s2, ab2 = a * a + b * b, 2 * a * b
        c = torch.mul(torch.rsqrt(torch.clamp(k11, min=_TINY)),
                      torch.rsqrt(torch.clamp(k22, min=_TINY)))
        c = c.mul_(k12) if c.shape == k12.shape else c * k12
        c.clamp_(-1.0, 1.0)                                 # cos θ, guarded for arccos
        theta = torch.arccos(c)
        sin = torch.sin(theta)
        tdot = theta.mul_((ab2 - s2) / (2 * math.pi)).add_(s2 / 2)   # Tdot, in place of θ
        t = c.mul_(tdot).add_(sin, alpha=(s2 - ab2) / (2 * math.pi))
        t.mul_(torch.mul(torch.sqrt(torch.clamp(k11, min=0.0)),
                         torch.sqrt(torch.clamp(k22, min=0.0))))
        if not want_tdot:
            tdot = None
        return t, tdot

    def t_diag(self, k):  # θ = 0: T = (a²+b²) k / 2
        return 0.5 * (self.a ** 2 + self.b ** 2) * k

    def tdot_diag(self, k):  # θ = 0: Tdot = (a²+b²)/2
        return torch.full_like(k, 0.5 * (self.a ** 2 + self.b ** 2))

    def __repr__(self) -> str:
        return f"ABRelu(a={self.a}, b={self.b})"


class Relu(ABRelu):
    """φ(x) = max(x, 0) (ABRelu(0, 1)).

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> k = wn.serial(wn.Dense(1), wn.Relu()).kernel(x, get="nngp")   # K11 = 1/2, K12 = 0
        >>> round(k[0, 0].item(), 4), round(k[0, 1].item(), 4)            # 1/4 and 1/(4π)
        (0.25, 0.0796)
    """

    def __init__(self):
        super().__init__(0.0, 1.0)

    def forward(self, x):
        return torch.relu(x)

    def __repr__(self) -> str:
        return "Relu()"


class LeakyRelu(ABRelu):
    """φ(x) = x for x > 0, alpha·x otherwise (ABRelu(alpha, 1)).

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5, b_std=0.1), wn.LeakyRelu(0.1), wn.Dense(1))
        >>> k = net.kernel(torch.randn(3, 4))
        >>> k.ntk.shape
        torch.Size([3, 3])
    """

    def __init__(self, alpha: float = 0.01):
        super().__init__(alpha, 1.0)
        self.alpha = self.a

    def __repr__(self) -> str:
        return f"LeakyRelu(alpha={self.alpha})"


class Abs(ABRelu):
    """φ(x) = |x| (ABRelu(-1, 1)).

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5, b_std=0.1), wn.Abs(), wn.Dense(1))
        >>> k = net.kernel(torch.randn(3, 4))
        >>> k.ntk.shape
        torch.Size([3, 3])
    """

    def __init__(self):
        super().__init__(-1.0, 1.0)

    def forward(self, x):
        return torch.abs(x)

    def __repr__(self) -> str:
        return "Abs()"


class Identity(ABRelu):
    """φ(x) = x: T = K12, Tdot = 1; exact on any input, keeps Gaussianity.

    Example:
        >>> x = torch.randn(3, 4)
        >>> k1 = wn.serial(wn.Dense(8), wn.Identity(), wn.Dense(1)).kernel(x, get="nngp")
        >>> k2 = wn.serial(wn.Dense(8), wn.Dense(1)).kernel(x, get="nngp")
        >>> bool(torch.allclose(k1, k2))
        True
    """

    def __init__(self):
        super().__init__(1.0, 1.0)

    def forward(self, x):
        return x

    def __repr__(self) -> str:
        return "Identity()"


# --------------------------------------------------------------------------- smooth closed forms
def _erf_scaled(k11, k22, k12):
    """E[s(u) s(v)] and E[s'(u) s'(v)] for s(x) = erf(x/√2) = 2Φ(x) - 1:
    F = (2/π) arcsin(K12 / √((1+K11)(1+K22))),  D = (2/π) / √((1+K11)(1+K22) - K12²)."""
    p = (1 + k11) * (1 + k22)
    f = (2 / math.pi) * torch.arcsin(torch.clamp(k12 / torch.sqrt(p), -1.0, 1.0))
    det = torch.clamp(p - k12 * k12, min=_TINY)
    d = (2 / math.pi) / torch.sqrt(det)
    return f, d, p, det


class Erf(Activation):
    """φ(x) = erf(x) (Williams 1997; docs/math.md §erf):
        T    = (2/π) arcsin(2K12 / √((1+2K11)(1+2K22)))
        Tdot = (4/π) / √((1+2K11)(1+2K22) - 4K12²)

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5, b_std=0.1), wn.Erf(), wn.Dense(1))
        >>> k = net.kernel(torch.randn(3, 4))
        >>> k.ntk.shape
        torch.Size([3, 3])
    """

    def forward(self, x):
        return torch.erf(x)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        # erf(x) = s(√2 x) with s(y) = erf(y/√2): rescale the covariance by 2.
        f, d, _, _ = _erf_scaled(2 * k11, 2 * k22, 2 * k12)
        return f, (2 * d if want_tdot else None)   # φ'(x) = √2 s'(√2 x)


class Gelu(Activation):
    """φ(x) = x Φ(x) (exact GELU, torch's default), closed form.

    With s(x) = erf(x/√2), x Φ(x) = x/2 + x s(x)/2, and Stein's lemma (E[u g] = K11 E[∂u g] +
    K12 E[∂v g]) reduces E[uv s(u)s(v)] to F and D of the erf kernel (derivation in
    docs/math.md §gelu: x Φ is odd + even, odd cross terms vanish):
        T    = K12/4 + (K12 F + D (K11K22 + K12²(1 - K11K22)/P)) / 4
        Tdot = (1 + F + K12 D/(1+K11) + K12 D/(1+K22) + (2/π) K12 / det^{3/2}) / 4
    with P = (1+K11)(1+K22), det = P - K12². Checked against quadrature in the tests.

    Example:
        >>> x = torch.randn(3, 4)
        >>> exact = wn.serial(wn.Dense(1), wn.Gelu()).kernel(x, get="nngp")
        >>> gelu = wn.Elementwise(torch.nn.functional.gelu)
        >>> quad = wn.serial(wn.Dense(1), gelu).kernel(x, get="nngp")
        >>> bool(torch.allclose(exact, quad, atol=1e-6))
        True
    """

    def forward(self, x):
        return torch.nn.functional.gelu(x)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        f, d, p, det = _erf_scaled(k11, k22, k12)
        t = 0.25 * k12 + 0.25 * (k12 * f + d * (k11 * k22 + k12 * k12 * (1 - k11 * k22) / p))
        tdot = None
        if want_tdot:
            # (1/(1+K11) + 1/(1+K22)) grouped so that the formula is exactly symmetric
            tdot = 0.25 * (1 + f + k12 * d * (1 / (1 + k11) + 1 / (1 + k22))
                           + (2 / math.pi) * k12 / det ** 1.5)
        return t, tdot


class Sin(Activation):
    """φ(x) = a sin(b x + c). With S = K11 + K22:
        T    = a²/2 (exp(-b²(S - 2K12)/2) - exp(-b²(S + 2K12)/2) cos 2c)
        Tdot = a²b²/2 (exp(-b²(S - 2K12)/2) + exp(-b²(S + 2K12)/2) cos 2c)

    Example:
        >>> net = wn.serial(wn.Dense(64, w_std=1.5, b_std=0.1), wn.Sin(1.0, 2.0, 0.5), wn.Dense(1))
        >>> k = net.kernel(torch.randn(3, 4))
        >>> k.ntk.shape
        torch.Size([3, 3])
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a, self.b, self.c = _finite_numbers("Sin", a=a, b=b, c=c)

    def forward(self, x):
        return self.a * torch.sin(self.b * x + self.c)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        b2 = self.b ** 2
        s = k11 + k22
        minus = torch.exp(-0.5 * b2 * (s - 2 * k12))
        plus = torch.exp(-0.5 * b2 * (s + 2 * k12)) * math.cos(2 * self.c)
        t = 0.5 * self.a ** 2 * (minus - plus)
        tdot = 0.5 * self.a ** 2 * b2 * (minus + plus) if want_tdot else None
        return t, tdot


# --------------------------------------------------------------------------- any φ by quadrature
class Elementwise(Activation):
    """Any pointwise activation by 2-D Gauss-Hermite quadrature (docs/math.md §quadrature).

    With u = √K11 z1, v = √K22 (c z1 + √(1-c²) z2), z ~ N(0, I):
        E[φ(u) φ(v)] ≈ Σ_i Σ_j w_i w_j φ(u_i) φ(v_ij),
    exact when φ(u)φ(v) is a polynomial of degree < 2·degree in each variable. Smooth
    activations converge fast once the nodes resolve φ(√K z): at variances K ≈ 3, degree 64
    gives ~1e-8 for erf and ~1e-6 for tanh (degree 24: ~1e-3). Kinks converge like 1/degree
    (ReLU: ~1.5e-3 at degree 128), so prefer a closed form where one exists.

    Args:
        fn: the activation, a torch function applied elementwise.
        dfn: its derivative; None computes φ' by autograd.
        degree: number of Gauss-Hermite nodes per dimension (cost ∝ degree² per entry).
        name: shown in errors and repr.

    Example:
        >>> x = torch.randn(3, 5)
        >>> quad = wn.serial(wn.Dense(1), wn.Elementwise(torch.erf)).kernel(x, get="nngp")
        >>> exact = wn.serial(wn.Dense(1), wn.Erf()).kernel(x, get="nngp")
        >>> bool(torch.allclose(quad, exact, atol=1e-8))
        True
    """

    symmetric_formula = False

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *,
                 dfn: Callable[[torch.Tensor], torch.Tensor] | None = None, degree: int = 64,
                 name: str | None = None):
        if not callable(fn):
            raise TypeError(f"Elementwise: fn must be callable, got {type(fn).__name__}")
        if dfn is not None and not callable(dfn):
            raise TypeError(f"Elementwise: dfn must be callable or None, got "
                            f"{type(dfn).__name__}")
        if isinstance(degree, bool) or not isinstance(degree, int) or not 2 <= degree <= 256:
            raise ValueError(f"Elementwise: degree must be an int in [2, 256], got {degree!r}")
        self.fn, self.dfn, self.degree = fn, dfn, degree
        self._name = name or getattr(fn, "__name__", "fn")
        nodes, weights = np.polynomial.hermite_e.hermegauss(degree)   # weight exp(-z²/2)
        self._nodes = torch.from_numpy(nodes)
        self._weights = torch.from_numpy(weights / weights.sum())     # E over N(0, 1)

    @property
    def name(self) -> str:
        return f"Elementwise[{self._name}]"

    def forward(self, x):
        return self.fn(x)

    def _dphi(self, x: torch.Tensor) -> torch.Tensor:
        if self.dfn is not None:
            return self.dfn(x)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.fn(x).sum(), x)
        return g.detach()

    def _expect2(self, phi, k11, k22, k12):
        """E[φ(u) φ(v)] entrywise over broadcast (k11, k22, k12), chunked to bound memory."""
        shape = torch.broadcast_shapes(k11.shape, k22.shape, k12.shape)
        k11, k22, k12 = (t.expand(shape).reshape(-1) for t in (k11, k22, k12))
        z = self._nodes.to(k12)
        w = self._weights.to(k12)
        deg = z.numel()
        out = torch.empty_like(k12)
        chunk = max(1, (1 << 22) // (deg * deg))
        for s in range(0, k12.numel(), chunk):
            a, b, c12 = k11[s:s + chunk], k22[s:s + chunk], k12[s:s + chunk]
            c, _ = _cos_angle(a, b, c12)
            sa, sb = torch.sqrt(a)[:, None], torch.sqrt(b)[:, None, None]
            r = torch.sqrt(torch.clamp(1 - c * c, min=0.0))[:, None, None]
            u = sa * z                                                     # (m, i)
            v = sb * (c[:, None, None] * z[None, :, None] + r * z[None, None, :])  # (m, i, j)
            inner = (phi(v) * w).sum(-1)                                   # (m, i)
            out[s:s + chunk] = (phi(u) * inner * w).sum(-1)
        return out.reshape(shape)

    def _expect1(self, phi, k):
        z = self._nodes.to(k)
        w = self._weights.to(k)
        return (phi(torch.sqrt(k)[..., None] * z) ** 2 * w).sum(-1)

    def t(self, k11, k22, k12):
        return self._expect2(self.fn, k11, k22, k12)

    def tdot(self, k11, k22, k12):
        return self._expect2(self._dphi, k11, k22, k12)

    def t_diag(self, k):
        return self._expect1(self.fn, k)

    def tdot_diag(self, k):
        return self._expect1(self._dphi, k)

    def __repr__(self) -> str:
        return f"Elementwise({self._name}, degree={self.degree})"
