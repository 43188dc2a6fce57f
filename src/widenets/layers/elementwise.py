"""`Elementwise`: the infinite-width kernel of any pointwise activation φ.

T(K) = E[φ(u) φ(v)] and Tdot(K) = E[φ'(u) φ'(v)] over (u, v) ~ N(0, [[K11, K12], [K12, K22]])
(docs/math.md §activations), computed in one of two ways:

* Hermite series (docs/math.md §hermite-series): with σ1 = √K11, σ2 = √K22 and the
  correlation ρ = K12/(σ1σ2), E[φ(σ1 z1) φ(σ2 z2)] = Σ_k a_k(σ1) a_k(σ2) ρ^k, where a_k(σ) are
  the coefficients of z ↦ φ(σz) in the orthonormal Hermite polynomials. The coefficients cost
  one 1-D rule per distinct variance; each pair costs a polynomial in ρ. The truncation error
  after order K is at most |ρ|^(K+1) r_K(σ1) r_K(σ2) (Cauchy-Schwarz), with r_K(σ)² = E[φ(σz)²]
  - Σ_{k≤K} a_k(σ)², known per variance: a pair is accepted when this bound is below
  _HERMITE_TOL·‖f1‖‖f2‖.
* 2-D quadrature (docs/math.md §quadrature-accuracy): a composite Gauss-Legendre rule, for the
  pairs the series does not certify (|ρ| near 1 with a slowly converging series: kinks, or
  saturating activations at large variance) and for `implementation="quadrature"`.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_choice
from .activations import Activation, _cos_angle, _gamma_by_autograd

__all__ = ["Elementwise"]

# --------------------------------------------------------------------------- quadrature rules
#: the quadrature rule of `Elementwise` (docs/math.md §quadrature-accuracy): composite
#: Gauss-Legendre in z ~ N(0, 1) over |z| <= _Z, with panel breakpoints at
#: * _GAUSS_PANELS equal panels of z (resolve the Gaussian weight at any variance),
#: * _FEATURE_PANELS equal panels of the pre-activation x over |x| <= _FEATURE_HALF, and
#:   x = ±_FEATURE_HALF·2^k, k = 1.._GEOMETRIC (resolve φ's unit-scale features wherever the
#:   variance puts them: tanh at K = 1000 is a step in z, at K = 1e-3 almost linear),
#: mapped to z through the mean and standard deviation of x; max(2, ⌈degree / 25⌉) nodes per
#: panel (relative error for erf, any variance: 8 nodes ~1e-9, 6 ~3e-6, 4 ~4e-4, 10 ~1e-12).
_Z = 8.5
_GAUSS_PANELS = 8
_FEATURE_HALF = 6.0
_FEATURE_PANELS = 8
_GEOMETRIC = 4
#: panels per dimension: the Gaussian ones, the feature ones, 2·_GEOMETRIC far ones, and the
#: one the two grids' union adds
_PANELS = _GAUSS_PANELS + _FEATURE_PANELS + 2 * _GEOMETRIC + 1

#: the 2-D rule's extra outer breakpoints, in units of s/|c| (see `Elementwise._quadrature`)
_OUTER_EXTRA = torch.tensor([s * 2.0 ** j for s in (-1, 1) for j in range(-2, 5)],
                            dtype=torch.float64)

#: the Hermite series (docs/math.md §hermite-series). Coefficients a_k = E[f(z) h_k(z)] by the
#: same composite rule on |z| <= _H_Z (the integrand is below |f(z)| e^(-z²/4) there: e^-36 at
#: the edge) with _H_PANELS equal panels of z (width 0.375: about 1.7 panels per oscillation of
#: h_255) plus the feature panels, _H_NODES Gauss-Legendre nodes each.
_H_Z = 12.0
_H_PANELS = 64
_H_NODES = 10
#: highest order of the series, and the orders a pair may use: the smallest one whose bound
#: certifies it (a function of the pair alone, so that the kernel does not depend on how it is
#: cut into blocks)
_H_ORDER = 255
_H_ORDERS = (7, 15, 31, 63, 127, 255)
#: orders per batched matmul of the coefficient computation
_H_CHUNK = 32
#: a pair is computed by the series when |ρ|^(K+1) r1 r2 <= _HERMITE_TOL ‖f1‖ ‖f2‖
_HERMITE_TOL = 1e-10
#: the tail r² is never taken below this fraction of ‖f‖² (the coefficients' own rounding)
_H_FLOOR = 1e-14
#: coefficient rows cached per (functions, variance) across the row blocks of one kernel
_H_CACHE_MAX = 8192


def _breakpoints_x(dtype, device):
    inner = torch.linspace(-_FEATURE_HALF, _FEATURE_HALF, _FEATURE_PANELS + 1, dtype=dtype,
                           device=device)
    far = _FEATURE_HALF * 2.0 ** torch.arange(1, _GEOMETRIC + 1, dtype=dtype, device=device)
    return torch.cat([inner, far, -far])


def _panel_rule(mean, std, gl_x, gl_w, z_max: float = _Z, z_panels: int = _GAUSS_PANELS,
                extra=None):
    """Nodes z and weights w, shaped (*mean.shape, P·q), with Σ w g(z) ≈ E[g(z)] over
    z ~ N(0, 1) for g(z) = f(mean + std·z), f smooth at unit scale in its argument
    (z_panels equal panels on |z| <= z_max, plus the feature breakpoints, plus `extra`
    breakpoints in z shaped (*mean.shape, E) if given)."""
    dtype, device = std.dtype, std.device
    gz = torch.linspace(-z_max, z_max, z_panels + 1, dtype=dtype, device=device)
    bx = _breakpoints_x(dtype, device)
    safe = torch.clamp(std, min=torch.finfo(dtype).tiny)[..., None]
    fz = torch.clamp((bx - mean[..., None]) / safe, -z_max, z_max)
    if extra is not None:
        fz = torch.cat([fz, torch.clamp(extra, -z_max, z_max)], -1)
    b = torch.sort(torch.cat([gz.expand(*fz.shape[:-1], -1), fz], -1), -1).values
    lo, hi = b[..., :-1, None], b[..., 1:, None]
    half = 0.5 * (hi - lo)
    z = (lo + hi) * 0.5 + half * gl_x
    w = half * gl_w * torch.exp(-0.5 * z * z) * (1 / math.sqrt(2 * math.pi))
    return z.flatten(-2), w.flatten(-2)


def _gauss_legendre(q: int):
    x, w = np.polynomial.legendre.leggauss(q)
    return torch.from_numpy(x), torch.from_numpy(w)


_H_GL = _gauss_legendre(_H_NODES)


def hermite_coefficients(funcs, sd: torch.Tensor, order: int = _H_ORDER):
    """Coefficients of z ↦ f(sd·z) in the orthonormal Hermite polynomials h_k = He_k/√k!.

    docs/math.md §hermite-series: a_k = E[f(sd z) h_k(z)], z ~ N(0, 1), by a composite
    Gauss-Legendre rule, and the tails r_K² = E[f(sd z)²] - Σ_{k≤K} a_k².

    Args:
        funcs: functions f (torch, elementwise).
        sd: 1-D tensor of standard deviations (>= 0).
        order: highest order K.

    Returns:
        (a, norm2, tail2): a of shape (F, V, K + 1), the E[f²] of shape (F, V), and the
        tails r_k² (floored at _H_FLOOR·E[f²]) of shape (F, V, K + 1).

    Example:
        >>> import torch
        >>> from widenets.layers.elementwise import hermite_coefficients
        >>> a, norm2, tail2 = hermite_coefficients((lambda x: x ** 3,),
        ...                                        torch.tensor([2.0], dtype=torch.float64))
        >>> [round(abs(float(c)), 6) for c in a[0, 0, :4]]     # 8 (3 h_1 + √6 h_3)
        [0.0, 24.0, 0.0, 19.595918]
    """
    gl_x, gl_w = (t.to(sd) for t in _H_GL)
    z, w = _panel_rule(torch.zeros_like(sd), sd, gl_x, gl_w, _H_Z, _H_PANELS)   # (V, M)
    x = sd[:, None] * z
    vals = torch.stack([f(x) for f in funcs])                                   # (F, V, M)
    fw = vals * w
    norm2 = torch.linalg.vecdot(vals, fw)
    n_f, n_v, n_m = fw.shape
    a = torch.empty(n_v, n_f, order + 1, dtype=sd.dtype, device=sd.device)
    fw = fw.transpose(0, 1)                                                     # (V, F, M)
    # h_k for _H_CHUNK orders at a time, then one batched matmul (V, F, M) @ (V, M, chunk)
    buf = torch.empty(_H_CHUNK + 2, n_v, n_m, dtype=sd.dtype, device=sd.device)
    buf[0], buf[1] = 1.0, z
    floor = _H_FLOOR * norm2
    done = 0                    # orders below `done` are in `a`; buf[0], buf[1] = h_done, h_done+1
    while done <= order:
        last = min(order, done + _H_CHUNK - 1)
        for k in range(done + 1, last):
            # h_{k+1} = (z h_k - √k h_{k-1}) / √(k+1)  (docs/math.md §hermite-series)
            j = k - done
            torch.mul(buf[j - 1], -math.sqrt(k / (k + 1)), out=buf[j + 1])
            buf[j + 1].addcmul_(z, buf[j], value=1 / math.sqrt(k + 1))
        m = last - done + 1
        hk = buf[:m].permute(1, 2, 0)
        for f in range(n_f):       # one product per function: the same whatever the others
            a[:, f:f + 1, done:last + 1] = torch.bmm(fw[:, f:f + 1], hk)
        if last == order:
            break
        # h_last+1 and h_last+2 to the front
        for k in (last, last + 1):
            j = k - done
            torch.mul(buf[j - 1], -math.sqrt(k / (k + 1)), out=buf[j + 1])
            buf[j + 1].addcmul_(z, buf[j], value=1 / math.sqrt(k + 1))
        j = last - done
        buf[0], buf[1] = buf[j + 1].clone(), buf[j + 2].clone()
        done = last + 1
    a = a.transpose(0, 1)
    tail2 = torch.clamp(norm2[..., None] - torch.cumsum(a * a, -1), min=0.0) + floor[..., None]
    return a, norm2, tail2


def _call_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _describe_value(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return type(x).__name__


class Elementwise(Activation):
    """Any pointwise activation: T and Tdot by a certified Hermite series and 2-D quadrature,
    or from a closed-form T.

    Hermite series (docs/math.md §hermite-series, the default `implementation="auto"`): with
    σ1 = √K11, σ2 = √K22 and ρ = K12/(σ1σ2), E[φ(u) φ(v)] = Σ_k a_k(σ1) a_k(σ2) ρ^k (Mehler's
    formula), where a_k(σ) are the coefficients of z ↦ φ(σz) in the orthonormal Hermite
    polynomials, computed once per distinct variance by a 1-D rule; a pair then costs a
    polynomial in ρ of order at most 255 (the smallest of 7, 15, ..., 255 that
    certifies the pair). Its truncation error is bounded per pair by
    |ρ|^(K+1) r(σ1) r(σ2), r² the part of E[φ(σz)²] the first K+1 coefficients leave out; pairs
    where this bound exceeds 1e-10·√(E[φ(u)²] E[φ(v)²]) (|ρ| close to 1 for kinks and for
    saturating activations at large variance) go to the quadrature below. So do Tdot = E[φ'φ']
    and the LayerNorm γ term, with φ' and x φ'(x).

    2-D quadrature (docs/math.md §quadrature-accuracy): with u = √K11 z1 and
    v = √K22 (c z1 + √(1-c²) z2), z ~ N(0, I), a composite Gauss-Legendre rule in z1 and, for
    each node, in z2 given z1, whose panels follow both the Gaussian weight and the unit scale
    of φ's argument. Accuracy (measured against scipy.integrate.quad, tests/reliability):
    relative error below 1e-8 for activations analytic in a strip |Im x| < 1 around the real
    axis (tanh, sigmoid, erf, softplus, GELU, SiLU) at every variance 1e-3 ... 1e3 with the
    default degree; kinks at x = 0 (ReLU, |x|) fall on a panel edge and are exact in one
    dimension. Features at a much smaller scale than 1 in x (tanh(100 x)) need a larger degree.
    Cost: 200² evaluations of φ per kernel entry at the default degree (100 inputs, two
    layers: about a minute), which is why it only takes the pairs the series leaves.

    With `nngp_fn` (a closed form T(K11, K22, K12)), T is that function and
    Tdot = ∂T/∂K12 comes from autograd (Price's theorem), exact to rounding; neither the series
    nor the quadrature is used except once, at construction, to check `nngp_fn` against `fn`.

    Args:
        fn: the activation, a torch function applied elementwise (tensor in, same-shape
            tensor out).
        dfn: its derivative; None computes φ' by autograd (refused for functions whose
            autograd derivative is zero almost everywhere, such as steps).
        nngp_fn: optional closed form T(k11, k22, k12) = E[φ(u) φ(v)] over tensors.
        degree: nodes per dimension of the 2-D quadrature (and of the 1-D rule of the
            variances): 25 panels of max(2, ⌈degree/25⌉) Gauss-Legendre nodes. The default
            200 (8 per panel) gives the stated accuracy; 150 gives ~3e-6, 100 ~4e-4, 250
            ~1e-12 (erf, any variance). It does not change the Hermite series.
        implementation: "auto" (the Hermite series where its bound certifies the pair, the
            quadrature elsewhere) or "quadrature" (the quadrature for every pair).
        name: shown in errors and repr.

    Returns:
        The layer (`net.kernel` and `net.module` as for any activation).

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(8), wn.Elementwise(torch.tanh), wn.Dense(1))
        >>> net.kernel(torch.ones(2, 3), get="ntk").shape
        torch.Size([2, 2])
        >>> x = torch.randn(5, 3)
        >>> k = wn.serial(wn.Dense(1), wn.Elementwise(torch.relu)).kernel(x, get="nngp")
        >>> exact = wn.serial(wn.Dense(1), wn.Relu()).kernel(x, get="nngp")
        >>> bool(torch.allclose(k, exact, rtol=1e-8, atol=0))
        True
    """

    @property
    def symmetric_formula(self) -> bool:
        # the series is a sum of products a_k(σ1) a_k(σ2) ρ^k and the quadrature puts the
        # larger variance outside: exactly symmetric in (K11, K22); a user's closed form need
        # not be
        return self.nngp_fn is None

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *,
                 dfn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 nngp_fn: Callable | None = None, degree: int = 200,
                 implementation: str = "auto", name: str | None = None):
        if not callable(fn):
            raise TypeError(f"Elementwise: fn must be callable, got {type(fn).__name__}")
        if dfn is not None and not callable(dfn):
            raise TypeError(f"Elementwise: dfn must be callable or None, got "
                            f"{type(dfn).__name__}")
        if nngp_fn is not None and not callable(nngp_fn):
            raise TypeError(f"Elementwise: nngp_fn must be callable or None, got "
                            f"{type(nngp_fn).__name__}")
        if isinstance(degree, bool) or not isinstance(degree, int) or not 2 <= degree <= 1600:
            raise ValueError(f"Elementwise: degree must be an int in [2, 1600] (quadrature "
                             f"nodes per dimension), got {degree!r}")
        check_choice(implementation, ("auto", "quadrature"), func="Elementwise",
                     arg="implementation")
        self.fn, self.dfn, self.nngp_fn, self.degree = fn, dfn, nngp_fn, degree
        self.implementation = implementation
        self._name = name or _call_name(fn)
        self._per_panel = max(2, -(-degree // _PANELS))
        self._gl = _gauss_legendre(self._per_panel)
        self._constant = False
        # Hermite coefficient rows per (functions, variance, dtype, device): the row blocks of
        # one kernel (several threads) share the variances of x2; filling it twice is harmless
        self._h_cache: dict = {}
        self._h_lock = threading.Lock()
        self._check_fn("fn", fn)
        if dfn is not None:
            self._check_fn("dfn", dfn)
        else:
            self._check_derivative()
        if nngp_fn is not None:
            self._check_nngp_fn()

    # ------------------------------------------------------------- input checks
    def _check_fn(self, arg: str, fn) -> None:
        """The shape contract: a tensor of the same shape, each entry a function of the same
        entry only (checked by perturbing one entry)."""
        x = torch.linspace(-2.5, 2.5, 15, dtype=torch.float64).reshape(3, 5)
        what = f"{arg}={_call_name(fn)}"
        x2 = x.clone()
        x2[1, 1] += 0.375
        try:
            with warnings.catch_warnings():       # numpy's __array_wrap__ deprecation on
                warnings.simplefilter("ignore", DeprecationWarning)   # np.* of a tensor
                y = fn(x.clone())
                y2 = fn(x2)
        except Exception as e:
            raise TypeError(f"Elementwise: {arg} must map a torch.Tensor to a torch.Tensor "
                            f"elementwise; {what} on a float64 tensor of shape (3, 5) raised "
                            f"{type(e).__name__}: {e} (math.* functions take one number: use "
                            f"the torch function, e.g. torch.tanh)") from e
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"Elementwise: {arg} must return a torch.Tensor, got "
                            f"{type(y).__name__} from {what} on a float64 tensor of shape "
                            f"(3, 5) (numpy/math functions and constants do not work on "
                            f"tensors: use the torch function, e.g. torch.tanh, or "
                            f"torch.full_like(z, c) for a constant)")
        if tuple(y.shape) != (3, 5):
            raise ValueError(f"Elementwise: {arg} must be elementwise (output shape = input "
                             f"shape), got output shape {tuple(y.shape)} from {what} for input "
                             f"shape (3, 5)")
        if not torch.is_floating_point(y):
            raise TypeError(f"Elementwise: {arg} must return floating-point values, got dtype "
                            f"{y.dtype} from {what}")
        changed = (y2 != y) & ~(torch.isnan(y2) & torch.isnan(y))
        changed[1, 1] = False
        if bool(changed.any()):
            raise ValueError(f"Elementwise: {arg} must be elementwise: changing input entry "
                             f"(1, 1) of a (3, 5) tensor changed {int(changed.sum())} other "
                             f"output entries of {what} (a reduction such as z.sum(), "
                             f"z - z.mean() or softmax is not an activation)")

    def _check_derivative(self) -> None:
        x = torch.linspace(-2.5, 2.5, 15, dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            y = self.fn(x)
        if bool((y == y[0]).all()):
            self._constant = True         # φ' = 0 everywhere
            return
        try:
            g = self._autograd_dphi(x)
        except Exception as e:
            msg = str(e)
            if "numpy" in msg:
                why = ("it converts the tensor to numpy (a numpy function such as np.tanh): use "
                       "the torch function, e.g. torch.tanh")
            elif "does not require grad" in msg:
                why = ("its output does not depend differentiably on its input (a comparison or "
                       "step function? its derivative is zero almost everywhere and a Dirac "
                       "delta at the jumps, which quadrature cannot integrate): pass dfn= "
                       "explicitly")
            else:
                why = "pass dfn= explicitly"
            raise TypeError(f"Elementwise: fn={self._name} has no autograd derivative, which "
                            f"the NTK needs ({type(e).__name__}: {msg[:120]}); {why}") from e
        if not bool((g != 0).any()):
            raise ValueError(f"Elementwise: fn={self._name} varies but its autograd derivative "
                             f"is zero at every probe point (a step function?): φ' is zero "
                             f"almost everywhere and a Dirac delta at the jumps, which "
                             f"quadrature cannot integrate; pass dfn= explicitly (e.g. "
                             f"dfn=torch.zeros_like to accept an NTK without the jump terms)")

    def _check_nngp_fn(self) -> None:
        """nngp_fn against the quadrature of fn at three covariances (catches a wrong
        closed form, a wrong scale, or one that does not broadcast)."""
        k = torch.tensor([[1.0, 1.0, 0.5], [0.3, 2.0, -0.4], [4.0, 0.5, 1.2]],
                         dtype=torch.float64)
        k11, k22, k12 = k.unbind(1)
        try:
            got = self.nngp_fn(k11, k22, k12)
        except Exception as e:
            raise TypeError(f"Elementwise: nngp_fn must map tensors (k11, k22, k12) to a "
                            f"tensor; on shape (3,) it raised {type(e).__name__}: {e}") from e
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (3,):
            raise TypeError(f"Elementwise: nngp_fn must return a tensor shaped like its "
                            f"inputs, got {_describe_value(got)} for inputs of shape (3,)")
        (want,) = self._quadrature(("fn",), k11, k22, k12)
        err = (got - want).abs() / want.abs().clamp(min=1e-3)
        if not bool((err < 1e-5).all()):
            raise ValueError(f"Elementwise: nngp_fn disagrees with the quadrature of fn="
                             f"{self._name}: at (K11, K22, K12) = {k.tolist()} it gives "
                             f"{got.tolist()}, quadrature {want.tolist()}")

    @property
    def name(self) -> str:
        return f"Elementwise[{self._name}]"

    def forward(self, x):
        return self.fn(x)

    def _autograd_dphi(self, x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.fn(x).sum(), x)
        return g.detach()

    def _dphi(self, x: torch.Tensor) -> torch.Tensor:
        if self.dfn is not None:
            return self.dfn(x)
        if self._constant:
            return torch.zeros_like(x)
        return self._autograd_dphi(x)

    def _psi(self, x):
        """x φ'(x): E[ψ(u)ψ(v)] = E[uv φ'(u)φ'(v)] (the LayerNorm γ term)."""
        return x * self._dphi(x)

    def _funcs(self, tags):
        table = {"fn": self.fn, "dfn": self._dphi, "psi": self._psi}
        return tuple(table[t] for t in tags)

    def _finite(self, out, what: str):
        if not torch.isfinite(out).all():
            raise FloatingPointError(
                f"{self.name}.kernel: {what} is NaN or infinite although its inputs are finite: "
                f"fn={self._name} (or its derivative) returns NaN/inf at some pre-activation "
                f"within ±{_H_Z:g} standard deviations (a domain error, e.g. log or sqrt of a "
                f"negative number, not an overflow of the kernel)")
        return out

    def _no_grad_through_quadrature(self, *ts):
        if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
            raise NotImplementedError(
                f"{self.name}.kernel: autograd through the quadrature is not supported (the "
                f"result would silently miss these gradients); pass nngp_fn= (a closed form, "
                f"differentiated by autograd) or compute the kernel under torch.no_grad()")

    def _expect2(self, tags, k11, k22, k12):
        """(E[f(u) f(v)] for f in tags), entrywise over broadcast (k11, k22, k12): the Hermite
        series where certified, the quadrature elsewhere (or everywhere, per
        `implementation`)."""
        self._no_grad_through_quadrature(k11, k22, k12)
        if self.implementation == "quadrature":
            return self._quadrature(tags, k11, k22, k12)
        return self._series(tags, k11, k22, k12)

    # ------------------------------------------------------------- Hermite series
    def _coefficients(self, tags, v):
        """Hermite coefficients, E[f²] and tails for the 1-D float64 variances v (unique),
        per function of `tags`: tensors (F, V, K+1), (F, V), (F, V, K+1); rows cached per
        (function, variance)."""
        dev, vals = str(v.device), v.tolist()
        with self._h_lock:
            rows = {t: [self._h_cache.get((t, dev, x)) for x in vals] for t in tags}
        missing = sorted({i for t in tags for i, r in enumerate(rows[t]) if r is None})
        if missing:
            sd = torch.sqrt(torch.clamp(v[missing], min=0.0))
            a, n2, t2 = hermite_coefficients(self._funcs(tags), sd)
            for f, what in ((a, "the Hermite coefficients"), (n2, "the 1-D rule")):
                self._finite(f, what)
            with self._h_lock:
                if len(self._h_cache) + len(missing) * len(tags) > _H_CACHE_MAX:
                    self._h_cache.clear()
                for f, t in enumerate(tags):
                    for j, i in enumerate(missing):
                        rows[t][i] = (a[f, j], n2[f, j], t2[f, j])
                        self._h_cache[(t, dev, vals[i])] = rows[t][i]
        return tuple(torch.stack([torch.stack([r[j] for r in rows[t]]) for t in tags])
                     for j in range(3))

    def _series(self, tags, k11, k22, k12):
        """docs/math.md §hermite-series: Σ_k a_k(σ1) a_k(σ2) ρ^k on the pairs whose truncation
        bound |ρ|^(K+1) r1 r2 <= _HERMITE_TOL ‖f1‖‖f2‖, the quadrature on the others."""
        dtype = k12.dtype
        shape = torch.broadcast_shapes(k11.shape, k22.shape, k12.shape)
        k11, k22, k12 = (t.detach().to(torch.float64) for t in (k11, k22, k12))
        k11, k22 = torch.clamp(k11, min=0.0), torch.clamp(k22, min=0.0)
        v, inv = torch.unique(torch.cat([k11.reshape(-1), k22.reshape(-1)]),
                              return_inverse=True)
        i1 = inv[:k11.numel()].reshape(k11.shape)
        i2 = inv[k11.numel():].reshape(k22.shape)
        a, n2, t2 = self._coefficients(tags, v)
        rho, _ = _cos_angle(k11, k22, k12)
        rho = rho.expand(shape)
        log_rho = torch.log(torch.abs(rho))                     # -inf at ρ = 0: |ρ|^(K+1) = 0
        norm1, norm2 = torch.sqrt(n2[:, i1]), torch.sqrt(n2[:, i2])       # (F, *k11/k22)
        tail1, tail2 = torch.sqrt(t2[:, i1]), torch.sqrt(t2[:, i2])       # (F, *, K+1)
        top = a.shape[-1] - 1

        if math.prod(shape) == 0:
            return tuple(torch.zeros(shape, dtype=dtype, device=k12.device) for _ in tags)
        outs, fallback = [], torch.zeros(shape, dtype=torch.int64, device=k12.device)
        for f in range(len(tags)):
            # each function on its own (T alone is then bitwise T of T and Tdot together):
            # the pair's order is the smallest of _H_ORDERS whose bound certifies it (the
            # bound decreases with the order), -1 for the quadrature
            scale = _HERMITE_TOL * (norm1[f] * norm2[f])
            order_of = torch.full(shape, -1, dtype=torch.int16, device=k12.device)
            for o in reversed(_H_ORDERS):
                if o <= top:
                    bound = torch.exp(log_rho * (o + 1)) * tail1[f, ..., o] * tail2[f, ..., o]
                    order_of.masked_fill_(bound <= scale, o)
            fallback += (order_of < 0).to(torch.int64) << f
            last = int(order_of.max())
            starts = [o for o in _H_ORDERS if o < last and bool((order_of == o).any())]
            c1 = a[f][i1].movedim(-1, 0)                       # (K+1, *k11.shape)
            c2 = a[f][i2].movedim(-1, 0)
            t = torch.zeros(shape, dtype=torch.float64, device=k12.device)
            for k in range(last, -1, -1):                      # Horner in ρ
                if k in starts:
                    # the pairs of order k start here: bitwise the Horner sum of order k
                    t.masked_fill_(order_of == k, 0.0)
                t.mul_(rho).addcmul_(c1[k], c2[k])
            outs.append(t)
        # the quadrature for the pairs (and functions) the series leaves, one shared rule for
        # the functions a pair needs it for
        # (|ρ| = 1: v = ±√(K22/K11) u, a 1-D integral: the self pairs of x1 = x2 among them)
        one = (rho.abs() == 1).to(torch.int64) << len(tags)
        for pattern in torch.unique(fallback + one * (fallback > 0)).tolist():
            if pattern == 0:
                continue
            fs = [f for f in range(len(tags)) if pattern >> f & 1]
            idx = (fallback + one == pattern).nonzero(as_tuple=True)
            args = [t.expand(shape)[idx] for t in (k11, k22, rho)]
            if pattern >> len(tags):
                got = self._collinear(tuple(tags[f] for f in fs), *args)
            else:
                args[2] = k12.expand(shape)[idx]
                got = self._quadrature(tuple(tags[f] for f in fs), *args)
            for f, g in zip(fs, got):
                outs[f][idx] = g
        return tuple(self._finite(o.to(dtype), "the Hermite series") for o in outs)

    def _collinear(self, tags, k11, k22, rho):
        """(E[f(σ1 z) f(±σ2 z)] for f in tags), z ~ N(0, 1), at ρ = ±1 (1-D vectors): the 1-D
        rule of the coefficients with the feature breakpoints of both variances."""
        funcs = self._funcs(tags)
        s1, s2 = torch.sqrt(k11), torch.sqrt(k22) * torch.sign(rho)
        gl_x, gl_w = (t.to(s1) for t in _H_GL)
        safe = torch.clamp(s2.abs(), min=torch.finfo(s2.dtype).tiny)[:, None]
        extra = _breakpoints_x(s1.dtype, s1.device) / safe
        z, w = _panel_rule(torch.zeros_like(s1), s1, gl_x, gl_w, _H_Z, _H_PANELS, extra=extra)
        return tuple(torch.linalg.vecdot(f(s1[:, None] * z) * f(s2[:, None] * z), w)
                     for f in funcs)

    # ------------------------------------------------------------- 2-D quadrature
    def _quadrature(self, tags, k11, k22, k12):
        """(E[f(u) f(v)] for f in tags) entrywise over broadcast (k11, k22, k12) by the 2-D
        rule, chunked to bound memory, all functions on one shared rule (building the rule
        costs more than evaluating φ)."""
        self._no_grad_through_quadrature(k11, k22, k12)
        funcs = self._funcs(tags)
        shape = torch.broadcast_shapes(k11.shape, k22.shape, k12.shape)
        k11, k22, k12 = (t.detach().expand(shape).reshape(-1) for t in (k11, k22, k12))
        gl_x, gl_w = (t.to(k12) for t in self._gl)
        outs = [torch.empty_like(k12) for _ in funcs]
        per = (_PANELS + len(_OUTER_EXTRA)) * self._per_panel
        chunk = max(1, (1 << 18) // (per * per))     # cache-sized temporaries
        for s in range(0, k12.numel(), chunk):
            a = torch.clamp(k11[s:s + chunk], min=0.0)
            b = torch.clamp(k22[s:s + chunk], min=0.0)
            # outer variable = the larger variance: the inner expectation then varies with
            # z1 no faster than the outer rule resolves (E[φ(u)φ(v)] is symmetric in u, v)
            a, b = torch.maximum(a, b), torch.minimum(a, b)
            c, _ = _cos_angle(a, b, k12[s:s + chunk])
            sa, sb = torch.sqrt(a), torch.sqrt(b)
            # outer breakpoints at z1 = ±(s/|c|)·2^j as well: E[φ(v) | z1] is φ smoothed at
            # width √K22 s around √K22 c z1, so a kink of φ at 0 is a transition of width
            # s/|c| in z1 (near-identical inputs: s = √(1-c²) small)
            scale = torch.sqrt(torch.clamp(1 - c * c, min=0.0)) / torch.clamp(c.abs(), min=1e-300)
            extra = scale[:, None] * _OUTER_EXTRA.to(scale)
            z1, w1 = _panel_rule(torch.zeros_like(sa), sa, gl_x, gl_w, extra=extra)  # (m, i)
            mean = (sb * c)[:, None] * z1                                      # v | z1
            std = (sb * torch.sqrt(torch.clamp(1 - c * c, min=0.0)))[:, None].expand_as(mean)
            z2, w2 = _panel_rule(mean, std, gl_x, gl_w)                        # (m, i, j)
            v = z2.mul_(std[..., None]).add_(mean[..., None])
            u = sa[:, None] * z1
            for f, out in zip(funcs, outs):
                inner = torch.linalg.vecdot(f(v), w2)                         # (m, i)
                out[s:s + chunk] = torch.linalg.vecdot(f(u) * inner, w1)
        return tuple(self._finite(o.reshape(shape), "the quadrature") for o in outs)

    def _expect1(self, phi, k):
        """E[φ(u)²], u ~ N(0, k): the 1-D rule of the Hermite coefficients (finer) or, for
        implementation="quadrature", that of the 2-D rule."""
        self._no_grad_through_quadrature(k)
        sd = torch.sqrt(torch.clamp(k.detach(), min=0.0))
        if self.implementation == "quadrature":
            gl_x, gl_w = (t.to(k) for t in self._gl)
            z, w = _panel_rule(torch.zeros_like(sd), sd, gl_x, gl_w)
        else:
            gl_x, gl_w = (t.to(k) for t in _H_GL)
            z, w = _panel_rule(torch.zeros_like(sd), sd, gl_x, gl_w, _H_Z, _H_PANELS)
        return self._finite((phi(sd[..., None] * z) ** 2 * w).sum(-1), "the quadrature")

    # ------------------------------------------------------------- closed form T given
    def _t_closed(self, k11, k22, k12):
        out = self.nngp_fn(k11, k22, k12)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{self.name}.kernel: nngp_fn must return a tensor, got "
                            f"{type(out).__name__}")
        return self._finite(out, "nngp_fn")

    def _tdot_closed(self, k11, k22, k12):
        """Tdot = ∂T/∂K12 by autograd through nngp_fn (Price's theorem, docs/math.md
        §activations); keeps the graph when the caller differentiates further (the LayerNorm
        γ term)."""
        shape = torch.broadcast_shapes(k11.shape, k22.shape, k12.shape)
        graph = torch.is_grad_enabled() and any(
            t.requires_grad for t in (k11, k22, k12))
        with torch.enable_grad():
            c = k12.expand(shape) * 1.0 if graph else \
                k12.detach().expand(shape).clone().requires_grad_(True)
            a, b = (k11, k22) if graph else (k11.detach(), k22.detach())
            t = self.nngp_fn(a, b, c)
            (g,) = torch.autograd.grad(t.sum(), c, create_graph=graph)
        return self._finite(g if graph else g.detach(), "∂nngp_fn/∂K12")

    # ------------------------------------------------------------- formulas
    def t_and_tdot(self, k11, k22, k12, want_tdot):
        if self.nngp_fn is not None or not want_tdot:
            return self.t(k11, k22, k12), (self.tdot(k11, k22, k12) if want_tdot else None)
        return self._expect2(("fn", "dfn"), k11, k22, k12)

    def t(self, k11, k22, k12):
        if self.nngp_fn is not None:
            return self._t_closed(k11, k22, k12)
        return self._expect2(("fn",), k11, k22, k12)[0]

    def tdot(self, k11, k22, k12):
        if self.nngp_fn is not None:
            return self._tdot_closed(k11, k22, k12)
        return self._expect2(("dfn",), k11, k22, k12)[0]

    def t_diag(self, k):
        if self.nngp_fn is not None:
            return self._t_closed(k, k, k)
        return self._expect1(self.fn, k)

    def tdot_diag(self, k):
        if self.nngp_fn is not None:
            return self._tdot_closed(k, k, k)
        return self._expect1(self._dphi, k)

    def gamma_correction(self, k11, k22, k12):
        if self.nngp_fn is not None:
            return _gamma_by_autograd(self.tdot, k11, k22, k12)
        psi, tdot = self._expect2(("psi", "dfn"), k11, k22, k12)
        return psi - k12 * tdot

    def gamma_correction_diag(self, k):
        if self.nngp_fn is not None:
            return _gamma_by_autograd(self.tdot, k, k, k)
        return self._expect1(self._psi, k) - k * self._expect1(self._dphi, k)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_h_lock", None)
        state["_h_cache"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._h_lock = threading.Lock()

    def __repr__(self) -> str:
        extra = "" if self.nngp_fn is None else f", nngp_fn={_call_name(self.nngp_fn)}"
        if self.implementation != "auto":
            extra += f", implementation={self.implementation!r}"
        return f"Elementwise({self._name}, degree={self.degree}{extra})"
