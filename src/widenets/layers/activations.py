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

import torch
from torch import nn

from ..kernel import Kernel
from .base import Layer, check_real

__all__ = ["Activation", "ABRelu", "Relu", "LeakyRelu", "Abs", "Identity", "Erf", "Gelu", "Sin",
           "ActivationModule"]

_TINY = 1e-30


def _cos_angle(k11, k22, k12):
    """c = K12 / sqrt(K11 K22), clipped to [-1, 1] (guards arccos), and sqrt(K11 K22)."""
    prod = torch.sqrt(torch.clamp(k11 * k22, min=_TINY))
    return torch.clamp(k12 / prod, -1.0, 1.0), prod


def _finite_numbers(func: str, **values) -> tuple:
    """The activation's parameters as floats; each must be a finite real number. A 0-d
    floating tensor is kept (it may require grad: see `widenets.hyperparameters`)."""
    return tuple(check_real(v, func=func, arg=arg) for arg, v in values.items())


def needs_grad(*tensors) -> bool:
    """True when autograd will differentiate through these (kernels or hyperparameters): the
    closed forms then take out-of-place paths and keep arccos/arcsin strictly inside (-1, 1),
    where their derivative is finite (self pairs get exact values from the diagonal formulas)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in tensors)


def cosine_limit(dtype: torch.dtype, grad: bool) -> float:
    """The clamp of a correlation c before arccos/arcsin: 1, or 1 - eps when differentiating."""
    return 1.0 - torch.finfo(dtype).eps if grad else 1.0


def cos_of(value):
    """cos of a hyperparameter expression: math.cos for numbers, torch.cos for tensors."""
    return torch.cos(value) if isinstance(value, torch.Tensor) else math.cos(value)


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


def _overrides(obj, name: str) -> bool:
    return getattr(type(obj), name) is not getattr(Activation, name)


def _gamma_by_autograd(tdot, k11, k22, k12):
    """E[u v φ'(u) φ'(v)] - K12 E[φ'(u) φ'(v)] from Tdot alone (docs/math.md §layernorm-affine):

        (K11 K22 + K12²) ∂Tdot/∂K12 + 2 K12 (K11 ∂Tdot/∂K11 + K22 ∂Tdot/∂K22),

    the derivatives by autograd through the closed form of Tdot (entrywise: every entry of
    Tdot depends only on its own K11, K22, K12)."""
    shape = torch.broadcast_shapes(k11.shape, k22.shape, k12.shape)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (k11, k22, k12)):
        raise NotImplementedError(
            "kernel: autograd through the NTK term of a LayerNorm(affine=True) γ before an "
            "activation without a closed-form gamma_correction is not supported; compute the "
            "kernel under torch.no_grad()")
    with torch.enable_grad():
        a, b, c = (t.detach().expand(shape).clone().requires_grad_(True)
                   for t in (k11, k22, k12))
        d = tdot(a, b, c)
        grads = torch.autograd.grad(d.sum(), (a, b, c), allow_unused=True)
    g11, g22, g12 = (torch.zeros(shape, dtype=c.dtype, device=c.device) if g is None
                     else g.detach() for g in grads)
    a, b, c = a.detach(), b.detach(), c.detach()
    return (a * b + c * c) * g12 + 2 * c * (a * g11 + b * g22)


def _is_gamma_token(s) -> bool:
    return isinstance(s, tuple) and len(s) == 2 and s[0] == "layernorm-gamma"


def _shares_memory(a, b) -> bool:
    return a is not None and b is not None and (a is b or (
        a.device.type != "meta" and a.untyped_storage().data_ptr()
        == b.untyped_storage().data_ptr()))


class Activation(Layer):
    """Base class: pointwise nonlinearity with infinite-width formulas T and Tdot.

    A subclass defines `forward` and either `t` and `tdot`, or `t_and_tdot` (closed forms that
    broadcast over tensors), optionally `t_diag`/`tdot_diag` (K11 = K22 = K12) and, when
    `LayerNorm(affine=True)` may precede it, `gamma_correction` (a closed form of
    E[u v φ'(u) φ'(v)] - K12 Tdot; the default differentiates `tdot` by autograd).
    """

    #: whether the closed form needs Gaussian inputs (False only for linear maps)
    needs_gaussian: bool = True
    #: whether t/tdot evaluate exactly symmetrically in (K11, K22) (quadrature does not)
    symmetric_formula: bool = True
    #: position-wise: padded positions do not reach the valid ones (`Layer.kernel(mask=)`)
    accepts_mask = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # A subclass overrides either t_and_tdot (closed forms sharing intermediate results) or
    # t and tdot (separate computations); each pair has a default in terms of the other.
    def t(self, k11, k22, k12):
        if not _overrides(self, "t_and_tdot"):
            raise NotImplementedError(f"{self.name}: an Activation subclass must define t and "
                                      f"tdot, or t_and_tdot; it defines neither t nor "
                                      f"t_and_tdot")
        return self.t_and_tdot(k11, k22, k12, False)[0]

    def tdot(self, k11, k22, k12):
        if not _overrides(self, "t_and_tdot"):
            raise NotImplementedError(f"{self.name}: an Activation subclass must define t and "
                                      f"tdot, or t_and_tdot; it defines neither tdot nor "
                                      f"t_and_tdot")
        return self.t_and_tdot(k11, k22, k12, True)[1]

    def t_diag(self, k):
        """T at K11 = K22 = K12 = k (the variance of φ(u))."""
        return self.t(k, k, k)

    def tdot_diag(self, k):
        return self.tdot(k, k, k)

    def t_and_tdot(self, k11, k22, k12, want_tdot: bool):
        """T and (if want_tdot) Tdot at once."""
        if not _overrides(self, "t") or (want_tdot and not _overrides(self, "tdot")):
            raise NotImplementedError(f"{self.name}: an Activation subclass must define t and "
                                      f"tdot, or t_and_tdot")
        return self.t(k11, k22, k12), (self.tdot(k11, k22, k12) if want_tdot else None)

    def gamma_correction(self, k11, k22, k12):
        """E[u v φ'(u) φ'(v)] - K12 Tdot: what the γ of a LayerNorm(affine=True) right before
        this activation adds to the NTK (docs/math.md §layernorm-affine). Default: from Tdot
        by autograd; subclasses with a closed form override it."""
        return _gamma_by_autograd(self.tdot, k11, k22, k12)

    def gamma_correction_diag(self, k):
        return self.gamma_correction(k, k, k)

    def fused_formula(self):
        """The fused engine's form of T and Tdot (`widenets.layers.engine`), or None.

        Returns (name, prep, formula, constants): `prep(v)` maps variances to a tuple of
        per-input factors (eager, n numbers); `formula(u1, u2, k12, p, want_tdot)` computes
        (T, Tdot or None) from the factors of x1 and x2 (broadcasting tensors), the covariance
        and `p`, a 1-D tensor holding `constants` (floats derived from the hyperparameters, so
        that one compiled graph serves every value). It must equal `t_and_tdot` to rounding and
        be exactly symmetric in (u1, u2). None (the default) keeps this activation eager."""
        return None

    # ------------------------------------------------------------- bookkeeping
    def _gamma_weight(self, k: Kernel):
        """g when k's NTK holds g·y y' from LayerNorm γ (see Kernel.gamma_term), else None;
        raises when a γ term reaches this activation in a form the recursion cannot carry."""
        rec = k.gamma_term
        if rec is not None and rec[1] == k.sources and rec[2] == k.channels:
            return rec[0]
        if any(_is_gamma_token(s) for s in k.sources):
            raise ValueError(
                f"{self.name}.kernel: a LayerNorm(affine=True) reaches this activation through "
                f"a layer that mixes its channels with others (FanInSum, FanInConcat, Flatten, "
                f"...); the NTK term of its γ (correlated with the channel value) cannot be "
                f"expressed layer by layer there. Put the activation directly after the "
                f"LayerNorm, or a Dense/Conv between them, or use affine=False")
        return None

    def apply_kernel(self, k: Kernel) -> Kernel:
        if isinstance(k, list):
            raise ValueError(f"{self.name}.kernel: expected one input, got {len(k)} branches; "
                             f"merge them with FanInSum() or FanInConcat() first")
        if self.needs_gaussian and not k.is_gaussian:
            got = "the raw input" if k.is_input else "a non-Gaussian layer output"
            raise ValueError(f"{self.name}.kernel: input must be Gaussian (got {got}); put a "
                             f"Dense or Conv before it")
        gamma = self._gamma_weight(k) if self.needs_gaussian else None
        k11, k22 = k.broadcast_variances()
        nngp, tdot = self.t_and_tdot(k11, k22, k.nngp, k.ntk is not None)
        # the maps below write in place: never into the input's tensors or T into Tdot
        if _shares_memory(nngp, k.nngp) or _shares_memory(nngp, k.ntk):
            nngp = nngp.clone()
        if _shares_memory(tdot, nngp) or _shares_memory(tdot, k.nngp) \
                or _shares_memory(tdot, k.ntk):
            tdot = tdot.clone()
        if torch.is_grad_enabled() and (nngp.requires_grad or (
                tdot is not None and tdot.requires_grad)):
            # the diagonal writes below are in place: keep autograd's saved tensors intact
            nngp = nngp.clone()
            tdot = None if tdot is None else tdot.clone()
        cov1, cov2 = k.map_variances(self.t_diag, self.t)
        tdot_self = None
        if tdot is not None and (k.x1_is_x2 or k.same_input is not None):
            tdot_self = k.map_variances(self.tdot_diag, self.tdot)[0]
        if k.x1_is_x2:  # exact symmetry and diagonal (c = 1), see Kernel.set_batch_diagonal
            if not self.symmetric_formula:
                nngp = k.symmetrize(nngp)
                tdot = None if tdot is None else k.symmetrize(tdot)
            k.set_batch_diagonal(nngp, cov1)
            if tdot is not None:
                k.set_batch_diagonal(tdot, tdot_self)
        # identical inputs in x1 and x2: the exact self-pair values (docs/math.md §near-diagonal
        # for c = 1), not arccos/sqrt of a c that rounding put just below 1
        k.write_same_input(nngp, cov1)
        if tdot is not None:
            k.write_same_input(tdot, tdot_self)
        ntk = None
        if k.ntk is not None:
            grad = torch.is_grad_enabled() and (tdot.requires_grad or k.ntk.requires_grad)
            ntk = tdot * k.ntk if grad else tdot.mul_(k.ntk)       # Θ' = Tdot(K) Θ
            if gamma:
                ntk = ntk + gamma * self._gamma_term(k, k11, k22)
        sources = k.sources
        if self.needs_gaussian and any(_is_gamma_token(s) for s in sources):
            sources = frozenset(s for s in sources if not _is_gamma_token(s))
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2,
                         is_gaussian=k.is_gaussian and not self.needs_gaussian
                         and self._keeps_gaussian(),
                         is_input=False, sources=sources,
                         gamma_term=None if self.needs_gaussian else k.gamma_term)

    def _gamma_term(self, k: Kernel, k11, k22):
        """E[u v φ'(u)φ'(v)] - K12 Tdot on every pair, exact on the self pairs."""
        corr = self.gamma_correction(k11, k22, k.nngp)
        if k.x1_is_x2 or k.same_input is not None:
            corr = corr.clone() if corr.requires_grad else corr
            diag = k.map_variances(self.gamma_correction_diag, self.gamma_correction)[0]
            if k.x1_is_x2:
                if not self.symmetric_formula:
                    corr = k.symmetrize(corr)
                k.set_batch_diagonal(corr, diag)
            k.write_same_input(corr, diag)
        if not torch.isfinite(corr).all():
            raise FloatingPointError(
                f"{self.name}.kernel: the NTK term of the LayerNorm(affine=True) γ before this "
                f"activation is not finite ({type(self).__name__} has no closed form "
                f"gamma_correction and its Tdot is not differentiable there); put a Dense "
                f"between LayerNorm and {self.name}, or use affine=False")
        return corr

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

    hyperparameter_domains = {"a": "real", "b": "real"}

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
            return a * a * k12, (torch.ones_like(k12) * (a * a) if want_tdot else None)
        # Memory-bound: each line below is one pass over the (block of the) kernel, in place
        # on fresh temporaries. With 2π Tdot = (a²+b²)(π - θ) + 2abθ the NNGP is
        # T = √(K11 K22) (c · Tdot + (a - b)² sin θ / (2π)). The variance factors are
        # outer products of small tensors, evaluated symmetrically in (x1, x2).
        s2, ab2 = a * a + b * b, 2 * a * b
        if needs_grad(k11, k22, k12, a, b):
            return self._t_and_tdot_autograd(k11, k22, k12, want_tdot)
        c = torch.mul(torch.rsqrt(torch.clamp(k11, min=_TINY)),
                      torch.rsqrt(torch.clamp(k22, min=_TINY)))
        c = c.mul_(k12) if c.shape == k12.shape else c * k12
        c.clamp_(-1.0, 1.0)                                 # cos θ, guarded for arccos
        theta = torch.arccos(c)
        # sin θ = √((1 - c)(1 + c)): cheaper than sin(arccos c), and 1 ∓ c are exact near
        # c = ±1 (docs/math/native-relu.md)
        sin = torch.rsub(c, 1.0).mul_(torch.add(c, 1.0)).sqrt_()
        tdot = theta.mul_((ab2 - s2) / (2 * math.pi)).add_(s2 / 2)   # Tdot, in place of θ
        t = c.mul_(tdot).add_(sin, alpha=(s2 - ab2) / (2 * math.pi))
        t.mul_(torch.mul(torch.sqrt(torch.clamp(k11, min=0.0)),
                         torch.sqrt(torch.clamp(k22, min=0.0))))
        if not want_tdot:
            tdot = None
        return t, tdot

    def _t_and_tdot_autograd(self, k11, k22, k12, want_tdot):
        """The same formulas out of place, so that autograd can differentiate the kernel
        (e.g. with respect to w_std through a tensor-valued input kernel)."""
        a, b = self.a, self.b
        s2, ab2 = a * a + b * b, 2 * a * b
        root = torch.sqrt(torch.clamp(k11, min=_TINY)) * torch.sqrt(torch.clamp(k22, min=_TINY))
        # clamp strictly inside [-1, 1]: d arccos/dc is infinite at c = ±1 (self pairs get
        # their exact values from the diagonal formulas)
        lim = 1.0 - torch.finfo(k12.dtype).eps
        c = torch.clamp(k12 / root, -lim, lim)
        theta = torch.arccos(c)
        tdot = theta * ((ab2 - s2) / (2 * math.pi)) + s2 / 2
        t = (c * tdot + torch.sin(theta) * ((s2 - ab2) / (2 * math.pi))) * root
        return t, (tdot if want_tdot else None)

    def fused_formula(self):
        a, b = self.a, self.b
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or a == b \
                or type(self).t_and_tdot is not ABRelu.t_and_tdot:
            return None
        s2, ab2 = a * a + b * b, 2 * a * b
        return "abrelu", abrelu_prep, abrelu_formula, (s2 / 2, (ab2 - s2) / (2 * math.pi),
                                          (s2 - ab2) / (2 * math.pi))

    def gamma_correction(self, k11, k22, k12):
        # x φ'(x) = φ(x) (positive homogeneity), so E[uv φ'(u)φ'(v)] = T and the correction
        # T - K12 Tdot = (a-b)² √(K11K22) sin θ / (2π) (docs/math.md §layernorm-affine)
        if self.a == self.b:
            return torch.zeros_like(k12 * k11 * k22)
        root = torch.sqrt(torch.clamp(k11, min=0.0)) * torch.sqrt(torch.clamp(k22, min=0.0))
        c = torch.clamp(k12 / torch.clamp(root, min=_TINY), -1.0, 1.0)
        sin = torch.sqrt(torch.clamp(1 - c * c, min=0.0))
        return ((self.a - self.b) ** 2 / (2 * math.pi)) * root * sin

    def gamma_correction_diag(self, k):  # θ = 0
        return torch.zeros_like(k)

    def t_diag(self, k):  # θ = 0: T = (a²+b²) k / 2
        return 0.5 * (self.a ** 2 + self.b ** 2) * k

    def tdot_diag(self, k):  # θ = 0: Tdot = (a²+b²)/2
        return torch.ones_like(k) * (0.5 * (self.a ** 2 + self.b ** 2))

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

    hyperparameter_domains = {}

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

    hyperparameter_domains = {"alpha": "real"}

    def __init__(self, alpha: float = 0.01):
        super().__init__(alpha, 1.0)
        self.alpha = self.a

    def hyperparameters_changed(self) -> None:
        self.a = self.alpha

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

    hyperparameter_domains = {}

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

    hyperparameter_domains = {}

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

    def fused_formula(self):
        if type(self).t_and_tdot is not Erf.t_and_tdot:
            return None
        return "erf", erf_prep, erf_formula, ()

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        # erf(x) = s(√2 x) with s(y) = erf(y/√2): rescale the covariance by 2.
        f, d, _, _ = _erf_scaled(2 * k11, 2 * k22, 2 * k12)
        return f, (2 * d if want_tdot else None)   # φ'(x) = √2 s'(√2 x)

    def gamma_correction(self, k11, k22, k12):
        # x erf'(x) = (2/√π) x exp(-x²): E[uv exp(-u²-v²)] (4/π) = (4/π) K12 Δ^{-3/2} with
        # Δ = (1+2K11)(1+2K22) - 4K12², so the correction is (4/π) K12 Δ^{-3/2} (1 - Δ)
        # (docs/math.md §layernorm-affine)
        delta = torch.clamp((1 + 2 * k11) * (1 + 2 * k22) - 4 * k12 * k12, min=_TINY)
        return (4 / math.pi) * k12 * (1 - delta) / delta ** 1.5


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

    def fused_formula(self):
        if type(self).t_and_tdot is not Gelu.t_and_tdot:
            return None
        return "gelu", gelu_prep, gelu_formula, ()

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

    hyperparameter_domains = {"a": "real", "b": "real", "c": "real"}

    def forward(self, x):
        return self.a * torch.sin(self.b * x + self.c)

    def fused_formula(self):
        if any(isinstance(v, torch.Tensor) for v in (self.a, self.b, self.c)) \
                or type(self).t_and_tdot is not Sin.t_and_tdot:
            return None
        b2 = self.b ** 2
        return "sin", sin_prep, sin_formula, (-0.5 * b2, math.cos(2 * self.c), 0.5 * self.a ** 2,
                                    0.5 * self.a ** 2 * b2)

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        b2 = self.b ** 2
        s = k11 + k22
        minus = torch.exp(-0.5 * b2 * (s - 2 * k12))
        plus = torch.exp(-0.5 * b2 * (s + 2 * k12)) * cos_of(2 * self.c)
        t = 0.5 * self.a ** 2 * (minus - plus)
        tdot = 0.5 * self.a ** 2 * b2 * (minus + plus) if want_tdot else None
        return t, tdot


# --------------------------------------------------------------------------- fused forms
# The fused engine (widenets.layers.engine) compiles these into one pass per layer. Each is the
# eager formula above, out of place, with the hyperparameters in a tensor `p`. The per-input
# factors (square roots of variances...) come from `prep`, evaluated eagerly on the variances
# (n numbers, not n² pairs); `formula` combines those of x1 (u1) and x2 (u2) only through
# sums and products of two operands, so the result is exactly symmetric in (x1, x2) whatever
# order the compiled code evaluates the rest in.
def abrelu_prep(v):
    return torch.rsqrt(torch.clamp(v, min=_TINY)), torch.sqrt(torch.clamp(v, min=0.0))


def abrelu_formula(u1, u2, k12, p, want_tdot: bool):
    """ABRelu (docs/math.md §relu); p = (s2/2, (2ab - s2)/(2π), (s2 - 2ab)/(2π)), s2 = a²+b².
    sin θ = √((1 - c)(1 + c)) (no cancellation: 1 - c is exact near c = 1)."""
    c = torch.clamp(u1[0] * u2[0] * k12, -1.0, 1.0)
    tdot = torch.arccos(c) * p[1] + p[0]
    t = (c * tdot + torch.sqrt((1 - c) * (1 + c)) * p[2]) * (u1[1] * u2[1])
    return t, (tdot if want_tdot else None)


def erf_prep(v):
    one = 1 + 2 * v
    return one, torch.sqrt(one)


def erf_formula(u1, u2, k12, p, want_tdot: bool):
    """Erf (docs/math.md §erf), as `_erf_scaled` at twice the covariance."""
    k2 = 2 * k12
    t = (2 / math.pi) * torch.arcsin(torch.clamp(k2 / (u1[1] * u2[1]), -1.0, 1.0))
    if not want_tdot:
        return t, None
    det = torch.clamp(u1[0] * u2[0] - k2 * k2, min=_TINY)
    return t, (4 / math.pi) / torch.sqrt(det)


def gelu_prep(v):
    one = 1 + v
    return v, one, 1 / one, torch.sqrt(one)


def gelu_formula(u1, u2, k12, p, want_tdot: bool):
    """Gelu (docs/math.md §gelu), the closed form of `Gelu.t_and_tdot`."""
    prod = u1[1] * u2[1]
    f = (2 / math.pi) * torch.arcsin(torch.clamp(k12 / (u1[3] * u2[3]), -1.0, 1.0))
    det = torch.clamp(prod - k12 * k12, min=_TINY)
    d = (2 / math.pi) / torch.sqrt(det)
    vv = u1[0] * u2[0]
    t = 0.25 * k12 + 0.25 * (k12 * f + d * (vv + k12 * k12 * (1 - vv) / prod))
    if not want_tdot:
        return t, None
    tdot = 0.25 * (1 + f + k12 * d * (u1[2] + u2[2])
                   + (2 / math.pi) * k12 / (det * torch.sqrt(det)))
    return t, tdot


def sin_prep(v):
    return (v,)


def sin_formula(u1, u2, k12, p, want_tdot: bool):
    """Sin (docs/math.md §sin, a sin(bx + c)); p = (-b²/2, cos 2c, a²/2, a²b²/2)."""
    s = u1[0] + u2[0]
    minus = torch.exp(p[0] * (s - 2 * k12))
    plus = torch.exp(p[0] * (s + 2 * k12)) * p[1]
    t = p[2] * (minus - plus)
    return t, (p[3] * (minus + plus) if want_tdot else None)
