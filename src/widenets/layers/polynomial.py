"""Polynomial activations with closed-form kernels: Polynomial, Monomial, Hermite and the
rectified monomials (arc-cosine kernels of every degree). docs/math.md §new-activations.

Polynomials (Hermite expansion, Mehler's formula). Write u = √K11 z with z ~ N(0, 1); then
z^i = Σ_m i!/(m! j! 2^j) He_m(z) over m = i - 2j, so φ(u) = Σ_i coef_i u^i has Hermite
coefficients K11^{m/2} β_m(K11) with the polynomials

    β_m(K) = Σ_j coef_{m+2j} (m+2j)! / (m! j! 2^j) K^j,

and E[He_m(z) He_m'(z')] = δ_mm' m! c^m gives

    T    = Σ_m m! β_m(K11) β_m(K22) K12^m,       Tdot = ∂T/∂K12 = Σ_m m·m! β_m β_m K12^{m-1}

(Tdot by Price's theorem, E[φ'(u)φ'(v)] = ∂E[φ(u)φ(v)]/∂K12): polynomials in (K11, K22, K12)
without square roots, exactly symmetric and exact on the diagonal.

Rectified monomials max(x, 0)^n: the arc-cosine kernels of Cho & Saul 2009,
    T = (K11K22)^{n/2} J_n(θ) / (2π),    Tdot = n² (K11K22)^{(n-1)/2} J_{n-1}(θ) / (2π),
with θ = arccos c and J_n from the recurrence J_0 = π - θ, J_{n+1} = (2n+1) cos θ J_n - sin θ J_n'
(which follows from Cho & Saul's J_n = (-1)^n sin^{2n+1}θ ((1/sin θ) ∂/∂θ)^n ((π-θ)/sin θ)),
kept as polynomials in cos θ and sin θ plus (π - θ) times one: finite for every c in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..kernel import Kernel
from .activations import Activation, _finite_numbers, cosine_limit, needs_grad

__all__ = ["Polynomial", "Monomial", "Hermite", "RectifiedMonomial"]


def _check_degree(value, func: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{func}: degree must be a non-negative int, got {value!r}")
    return value


def _poly(coefs: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    """Σ_j coefs[j] x^j by Horner (a fresh tensor shaped like x). Tensor coefficients (tensor
    hyperparameters, `widenets.hyperparameters`) take an out-of-place path for autograd."""
    if any(isinstance(cf, torch.Tensor) for cf in coefs):
        out = torch.zeros_like(x) + coefs[-1]
        for cf in reversed(coefs[:-1]):
            out = out * x + cf
        return out
    out = torch.full_like(x, float(coefs[-1]))
    for cf in reversed(coefs[:-1]):
        out.mul_(x).add_(float(cf))
    return out


def _hermite_tables(coef: Sequence[float]) -> list[tuple[int, list[float]]]:
    """[(m, B_m)] with β_m(K) = Σ_j B_m[j] K^j (see the module docstring), nonzero m only."""
    deg = len(coef) - 1
    out = []
    for m in range(deg + 1):
        b = [coef[m + 2 * j] * math.factorial(m + 2 * j)
             / (math.factorial(m) * math.factorial(j) * 2 ** j)
             for j in range((deg - m) // 2 + 1)]
        # a tensor coefficient keeps its term even at 0: its gradient there is not 0
        if any(isinstance(v, torch.Tensor) or v != 0 for v in b):
            out.append((m, b))
    return out


def _horner_k12(factors: dict, k12: torch.Tensor) -> torch.Tensor:
    """Σ_m f_m g_m K12^m by Horner, factors[m] = (f_m, g_m) broadcasting against k12 (small
    tensors of K11 and K22: their outer products are never stored). A fresh tensor."""
    if not factors:
        return torch.zeros_like(k12)
    t = None
    for m in range(max(factors), -1, -1):
        fg = factors.get(m)
        if t is None:
            t = torch.mul(*fg)
            t = t if t.shape == k12.shape else t.expand_as(k12).clone()
            continue
        t.mul_(k12)
        if fg is not None:
            t.addcmul_(*fg)
    return t


class Polynomial(Activation):
    """φ(x) = coef[0] + coef[1]·x + ... + coef[n]·xⁿ (NT's `stax.Polynomial`, numpy's order).

    Closed form (Hermite expansion; docs/math.md §new-activations):
        T = Σ_m m! β_m(K11) β_m(K22) K12^m,   Tdot = Σ_m m·m! β_m(K11) β_m(K22) K12^{m-1},
        β_m(K) = Σ_j coef[m+2j] (m+2j)! / (m! j! 2^j) K^j.

    Args:
        coef: a non-empty sequence of finite numbers.

    Example:
        >>> import torch, widenets as wn
        >>> k = wn.serial(wn.Dense(1), wn.Polynomial([1, 0, 1])).kernel(torch.ones(1, 2))
        >>> float(k.nngp[0, 0])                      # E[(1 + u²)²] = 1 + 2K + 3K² at K = 1
        6.0
    """

    def __init__(self, coef: Sequence[float]):
        try:
            vals = list(coef)
        except TypeError:
            raise TypeError(f"{self._fname()}: coef must be a sequence of numbers, got "
                            f"{type(coef).__name__}") from None
        if not vals:
            raise ValueError(f"{self._fname()}: coef must have at least one entry, got "
                             f"{coef!r}")
        vals = list(_finite_numbers(self._fname(), **{f"coef[{i}]": v
                                                      for i, v in enumerate(vals)}))
        self.coef = tuple(vals)
        self._tables = _hermite_tables(vals)

    @property
    def hyperparameter_domains(self) -> dict:
        """Each coefficient is a real hyperparameter named coef_<i> (`wn.hyperparameters`)."""
        return {f"coef_{i}": "real" for i in range(len(self.coef))}

    def __getattr__(self, name):
        # coef_<i> reads coefficient i (for wn.hyperparameters)
        if name.startswith("coef_") and name[5:].isdigit() and "coef" in vars(self):
            i = int(name[5:])
            if i < len(self.coef):
                return self.coef[i]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        # coef_<i> replaces coefficient i (for with_hyperparameters)
        if name.startswith("coef_") and name[5:].isdigit() and "coef" in vars(self):
            coef = list(self.coef)
            coef[int(name[5:])] = value
            object.__setattr__(self, "coef", tuple(coef))
            return
        object.__setattr__(self, name, value)

    def hyperparameters_changed(self) -> None:
        self._tables = _hermite_tables(list(self.coef))

    def _fname(self) -> str:
        return "Polynomial"

    def forward(self, x):
        return _poly(self.coef, x)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        tables = self._tables
        if not tables:                      # φ = 0
            z = torch.zeros_like(k12)
            return z, (torch.zeros_like(k12) if want_tdot else None)
        # γ_m = m! β_m(K11) β_m(K22), kept as two small factors √(m!) β_m(K): the same
        # function of K11 and of K22, so the product is exactly symmetric
        def fac(c):
            return {m: (_poly(b, k11) * math.sqrt(c(m)), _poly(b, k22) * math.sqrt(c(m)))
                    for m, b in tables if c(m) > 0}

        t = _horner_k12(fac(math.factorial), k12)
        tdot = None
        if want_tdot:
            # ∂/∂K12: the coefficient of K12^{m-1} is m γ_m
            tdot = _horner_k12({m - 1: f for m, f in fac(
                lambda m: m * math.factorial(m)).items()}, k12)
        return t, tdot

    def __repr__(self) -> str:
        return f"Polynomial({list(self.coef)})"


class Monomial(Polynomial):
    """φ(x) = x^degree (NT's `stax.Monomial`, there for degrees 0-5; any degree here).

    The kernel is `Polynomial`'s with one coefficient, e.g. degree 2:
    T = K11K22 + 2K12², Tdot = 4K12 (docs/math.md §new-activations).

    Args:
        degree: a non-negative int.

    Example:
        >>> import torch, widenets as wn
        >>> k = wn.serial(wn.Dense(1), wn.Monomial(2)).kernel(torch.ones(1, 2))
        >>> round(float(k.nngp[0, 0]), 12), round(float(k.ntk[0, 0]), 12)  # 3K², 4K·Θ at K = 1
        (3.0, 4.0)
    """

    hyperparameter_domains = {}     # the degree is not continuous

    def __init__(self, degree: int):
        self.degree = _check_degree(degree, "Monomial")
        super().__init__([0.0] * degree + [1.0])

    def _fname(self) -> str:
        return "Monomial"

    def forward(self, x):
        return x ** self.degree

    def __repr__(self) -> str:
        return f"Monomial({self.degree})"


class Hermite(Activation):
    """φ(x) = He_n(x)/√(n!), the probabilists' Hermite polynomial normalized to unit norm under
    N(0, 1), as NT's `stax.Hermite`.

    Needs unit-variance inputs (K11 = K22 = 1 at every position, e.g. Dense(w_std=1, b_std=0)
    on inputs with ‖x‖² = d, or LayerNorm before a bias-free Dense): then Mehler's formula gives
        T = K12^n,   Tdot = n K12^{n-1}
    (docs/math.md §new-activations). Other variances raise ValueError (the formula would
    be wrong there); use `Polynomial` with He_n's coefficients for general inputs.

    Args:
        degree: n, a non-negative int.

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.tensor([[1.0, 1.0], [1.0, -1.0]])     # ‖x‖² = d: unit variance
        >>> k = wn.serial(wn.Dense(1), wn.Hermite(2)).kernel(x, get="nngp")
        >>> k.tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """

    def __init__(self, degree: int):
        self.degree = _check_degree(degree, "Hermite")
        import numpy as np

        self._coef = [float(v) for v in np.polynomial.hermite_e.herme2poly(
            [0] * degree + [1])] if degree else [1.0]
        self._norm = math.sqrt(math.factorial(degree))

    def forward(self, x):
        out = torch.full_like(x, self._coef[-1])
        for cf in reversed(self._coef[:-1]):
            out = out * x + cf
        return out / self._norm

    def apply_kernel(self, k: Kernel) -> Kernel:
        if not isinstance(k, list):
            tol = 1e-6 if k.dtype == torch.float64 else 1e-3
            for v in k.position_variances():
                worst = float((v - 1).abs().max())
                if worst > tol:
                    raise ValueError(
                        f"Hermite.kernel: inputs must have unit variance (K(x, x) = 1 at every "
                        f"position, within {tol:g}), got variances up to {worst:.3g} away from "
                        f"1; normalize the inputs to ‖x‖² = d and use Dense(w_std=1, b_std=0), "
                        f"or use Polynomial for general variances")
        return super().apply_kernel(k)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        n = self.degree
        t = torch.pow(k12, n) if n else torch.ones_like(k12)
        tdot = None
        if want_tdot:
            tdot = torch.pow(k12, n - 1).mul_(n) if n > 1 else torch.full_like(k12, float(n))
        return t, tdot

    def t_diag(self, k):
        return torch.pow(k, self.degree)

    def tdot_diag(self, k):
        n = self.degree
        return torch.pow(k, n - 1) * n if n > 1 else torch.full_like(k, float(n))


# --------------------------------------------------------------------------- arc-cosine
def _reduce(poly: dict) -> dict:
    """Replace s² by 1 - c² until every monomial c^a s^b has b in {0, 1}."""
    out: dict = {}
    stack = list(poly.items())
    while stack:
        (a, b), v = stack.pop()
        if v == 0:
            continue
        if b >= 2:
            stack += [((a, b - 2), v), ((a + 2, b - 2), -v)]
        else:
            out[(a, b)] = out.get((a, b), 0) + v
    return {k: v for k, v in out.items() if v != 0}


def _dtheta(poly: dict) -> dict:
    """d/dθ of Σ v c^a s^b with c = cos θ, s = sin θ."""
    out: dict = {}
    for (a, b), v in poly.items():
        if a:
            out[(a - 1, b + 1)] = out.get((a - 1, b + 1), 0) - a * v
        if b:
            out[(a + 1, b - 1)] = out.get((a + 1, b - 1), 0) + b * v
    return out


def _add(*polys) -> dict:
    out: dict = {}
    for scale, p in polys:
        for key, v in p.items():
            out[key] = out.get(key, 0) + scale * v
    return out


def _shift(poly: dict, da: int, db: int) -> dict:
    return {(a + da, b + db): v for (a, b), v in poly.items()}


def arccos_j_tables(n: int) -> tuple[dict, dict]:
    """(P, Q) with J_n(θ) = P(c, s) + (π - θ) Q(c, s), integer coefficients, s-degree <= 1.

    J_0 = π - θ;  J_{k+1} = (2k+1) c J_k - s J_k'  with (π - θ)' = -1 (module docstring).
    """
    p: dict = {}
    q: dict = {(0, 0): 1}
    for k in range(n):
        dp, dq = _dtheta(p), _dtheta(q)
        p, q = (_reduce(_add((2 * k + 1, _shift(p, 1, 0)), (-1, _shift(dp, 0, 1)),
                             (1, _shift(q, 0, 1)))),
                _reduce(_add((2 * k + 1, _shift(q, 1, 0)), (-1, _shift(dq, 0, 1)))))
    return p, q


def _eval_cs(poly: dict, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Σ v c^a s^b (b in {0, 1}) as A(c) + s B(c), by Horner in c."""
    out = None
    for b in (0, 1):
        coefs = [poly.get((a, b), 0) for a in range(1 + max([a for a, bb in poly if bb == b],
                                                            default=-1))]
        if not coefs:
            continue
        part = _poly(coefs, c)
        if b:
            part.mul_(s)
        out = part if out is None else out.add_(part)
    return torch.zeros_like(c) if out is None else out


def _double_factorial(n: int) -> int:
    return math.prod(range(n, 0, -2)) if n > 0 else 1


class RectifiedMonomial(Activation):
    """φ(x) = max(x, 0)^degree (degree 0: the step x > 0), NT's `stax.RectifiedMonomial`.

    Its kernels are the arc-cosine kernels of Cho & Saul 2009 (docs/math.md §new-activations),
    with θ = arccos(K12/√(K11K22)):
        T    = (K11K22)^{n/2} J_n(θ) / (2π),     Tdot = n² (K11K22)^{(n-1)/2} J_{n-1}(θ) / (2π),
        J_0 = π - θ,  J_1 = sin θ + (π - θ) cos θ,  J_{n+1} = (2n+1) cos θ J_n - sin θ J_n'.
    Diagonal: T = (2n-1)!! K^n / 2, Tdot = n² (2n-3)!! K^{n-1} / 2. Degree 1 is `Relu`.
    Degree 0 (a step) has Tdot = 0 as `Sign`: autograd's derivative, zero almost everywhere
    (see `Sign` for what the NTK means then).

    Args:
        degree: n, a non-negative int.

    Example:
        >>> import torch, widenets as wn
        >>> k = wn.serial(wn.Dense(1), wn.RectifiedMonomial(2)).kernel(torch.ones(1, 2))
        >>> float(k.nngp[0, 0])                      # E[max(u, 0)⁴] = 3K²/2 at K = 1
        1.5
    """

    def __init__(self, degree: int):
        self.degree = _check_degree(degree, "RectifiedMonomial")
        self._j = arccos_j_tables(self.degree)
        self._j_prev = arccos_j_tables(self.degree - 1) if self.degree else None

    def forward(self, x):
        if self.degree == 0:
            return (x > 0).to(x.dtype)
        return torch.clamp(x, min=0) ** self.degree

    @staticmethod
    def _j_value(tables, c, s, theta):
        p, q = tables
        return _eval_cs(p, c, s).add_(_eval_cs(q, c, s).mul_(math.pi - theta))

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        n = self.degree
        r1, r2 = torch.sqrt(torch.clamp(k11, min=0.0)), torch.sqrt(torch.clamp(k22, min=0.0))
        c = torch.mul(torch.rsqrt(torch.clamp(k11, min=1e-30)),
                      torch.rsqrt(torch.clamp(k22, min=1e-30)))
        lim = cosine_limit(k12.dtype, needs_grad(k11, k22, k12))
        c = (c * k12).clamp_(-lim, lim)
        theta = torch.arccos(c)
        s = torch.sqrt(torch.clamp(1 - c * c, min=0.0))
        prod = torch.mul(r1, r2)
        t = self._j_value(self._j, c, s, theta).mul_(1 / (2 * math.pi))
        if n:
            t.mul_(prod ** n)
        tdot = None
        if want_tdot:
            if n == 0:
                tdot = torch.zeros_like(k12)
            else:
                tdot = self._j_value(self._j_prev, c, s, theta).mul_(n * n / (2 * math.pi))
                if n > 1:
                    tdot.mul_(prod ** (n - 1))
        return t, tdot

    def t_diag(self, k):
        n = self.degree
        return torch.pow(k, n) * (_double_factorial(2 * n - 1) / 2)

    def tdot_diag(self, k):
        n = self.degree
        if n == 0:
            return torch.zeros_like(k)
        return torch.pow(k, n - 1) * (n * n * _double_factorial(2 * n - 3) / 2)

    def __repr__(self) -> str:
        return f"RectifiedMonomial({self.degree})"
