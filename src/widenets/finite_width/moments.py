"""Depth-to-width statistics of the NTK diagonal (Hanin & Nica, seed 003; docs/math.md §hanin-nica).

For a fully connected network with hidden widths n_1..n_L, scalar linear output, no biases and
He initialization (weights of variance w_std²/fan_in, w_std² = 2 for ReLU), at one input x:

    K(x, x) = Σ_{l=1}^{L+1} c_l ||x^{l-1}||² ||δ^l||²,     δ^l = ∂f/∂h^l,

with c_l = 1 when the weights themselves are trained ("standard" parameterization, as in the
seed) and c_l = w_std²/n_{l-1} when the unit-variance variables are ("ntk"). Theorem 1 of the
seed: E[K²]/E[K]² ≍ exp(5β), β = Σ_l 1/n_l (up to universal constants); Theorem 2: the mean
first SGD update satisfies E[ΔK]/E[K] ≍ (β-dependent prefactor) · exp(5β).

`ntk_moments` draws many networks at once (batched matrix products, one sample = one network),
computes K by the forward/backward recursion above and ΔK by taking the actual SGD step on the
single-example loss (1/2)(f(x) - y)² and recomputing K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..layers.activations import Activation, Erf, Relu
from ..layers.base import as_input_tensor
from ..layers.elementwise import Elementwise

__all__ = ["ntk_moments", "NTKMoments"]

_ACTIVATIONS = ("relu", "tanh", "erf")


@dataclass(frozen=True)
class NTKMoments:
    """Monte Carlo moments of the on-diagonal NTK K(x, x) over random networks (floats).

    Fields:
        mean, mean_se: E[K(x, x)] and its standard error.
        ratio, ratio_se: E[K²] / E[K]² and its standard error (delta method).
        dk_rel, dk_rel_se: E[ΔK(x, x)] / E[K(x, x)] after one SGD step of size learning_rate
            on (1/2)(f(x) - target)², and its standard error (delta method).
        beta: Σ_l 1/n_l over the hidden widths.
        exp5beta: exp(5 β), the scaling of `ratio` predicted by seed 003 Thm. 1 (up to
            universal constants: compare slopes of log(ratio) in β, not values).
        analytic_mean: the infinite-width NTK diagonal from `net.kernel` (None for activations
            without a widenets layer).
        samples: (n_samples,) the sampled K(x, x).
        n_samples: number of networks.

    Example:
        >>> mom = wn.finite_width.ntk_moments(depth=3, width=10, x=torch.ones(4), n_samples=200)
        >>> mom.ratio > 1, round(mom.beta, 2)                  # E[K²]/E[K]² > 1, β = 3 / 10
        (True, 0.3)
        >>> isinstance(mom, wn.finite_width.NTKMoments)
        True
    """

    mean: float
    mean_se: float
    ratio: float
    ratio_se: float
    dk_rel: float
    dk_rel_se: float
    beta: float
    exp5beta: float
    analytic_mean: float | None
    samples: torch.Tensor
    n_samples: int


def _activation(activation, func):
    """(φ, φ', widenets layer or None)."""
    if isinstance(activation, str):
        if activation == "relu":
            return torch.relu, lambda h: (h > 0).to(h.dtype), Relu()
        if activation == "tanh":
            return torch.tanh, lambda h: 1 - torch.tanh(h) ** 2, Elementwise(torch.tanh,
                                                                            name="tanh")
        if activation == "erf":
            lay = Erf()
            return lay.forward, lambda h: 2 / math.sqrt(math.pi) * torch.exp(-h * h), lay
    elif isinstance(activation, Activation):
        def dphi(h):
            with torch.enable_grad():
                hh = h.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(activation.forward(hh).sum(), hh)
            return g
        return activation.forward, dphi, activation
    raise ValueError(f"{func}: activation must be one of {_ACTIVATIONS} or a widenets activation "
                     f"layer (e.g. wn.Gelu()), got {activation!r}")


def _forward_backward(ws, x, phi, dphi, scales, rank1=None):
    """Outputs f (S,), per-layer inputs x^{l-1} and backprops δ^l for S networks at once.

    ws: list of (S, n_l, n_{l-1}) trainable variables; the weights are scales[l] * ws[l].
    rank1: optional list of (u_l, v_l), (S, n_l) and (S, n_{l-1}): use ws[l] + u_l v_lᵀ
        instead (the SGD update is rank one per layer), without forming it.
    """
    xs, hs = [x], []
    a = x
    last = len(ws) - 1
    for l, w in enumerate(ws):
        wa = torch.einsum("sij,sj->si", w, a)
        if rank1 is not None:
            u, v = rank1[l]
            wa = wa + u * (v * a).sum(1, keepdim=True)
        h = scales[l] * wa
        hs.append(h)
        if l < last:
            a = phi(h)
            xs.append(a)
    f = hs[-1][:, 0]
    deltas = [torch.ones_like(hs[-1])]
    for l in range(last, 0, -1):
        b = deltas[0]
        wtb = torch.einsum("sij,si->sj", ws[l], b)
        if rank1 is not None:
            u, v = rank1[l]
            wtb = wtb + v * (u * b).sum(1, keepdim=True)
        deltas.insert(0, dphi(hs[l - 1]) * (scales[l] * wtb))
    return f, xs, deltas


def _k_and_grads(ws, x, phi, dphi, scales, coef, rank1=None):
    """K(x, x) (S,), f (S,) and ∂f/∂ws as rank-one factors [(scale δ^l, x^{l-1})]."""
    f, xs, deltas = _forward_backward(ws, x, phi, dphi, scales, rank1)
    k = torch.zeros_like(f)
    for l in range(len(ws)):
        # Σ_l c_l ||x^{l-1}||² ||δ^l||²  (docs/math.md §hanin-nica; ∂h^l/∂W^l = x^{l-1})
        k = k + coef[l] * (xs[l] ** 2).sum(1) * (deltas[l] ** 2).sum(1)
    grads = [(scales[l] * deltas[l], xs[l]) for l in range(len(ws))]
    return k, f, grads


def ntk_moments(depth: int, width: int | Sequence[int], x, *, n_samples: int,
                activation="relu", w_std: float = math.sqrt(2.0),
                parameterization: str = "standard", learning_rate: float = 1e-3,
                target: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float64,
                chunk_size: int | None = None) -> NTKMoments:
    """Monte Carlo statistics of the on-diagonal NTK of deep, finite, bias-free networks.

    Args:
        depth: L, the number of hidden layers (>= 1).
        width: one hidden width for all layers, or a sequence of L widths.
        x: (d,) or (1, d) one input.
        n_samples: number of random networks.
        activation: "relu" (the seed's case), "tanh", "erf", or a widenets activation layer.
        w_std: weight standard deviation times sqrt(fan_in) for every layer (sqrt(2): He).
        parameterization: "standard" (the weights are trained, as in the seed) or "ntk".
        learning_rate: SGD step size for ΔK (the result is linear in it to first order).
        target: the label y of the single-example loss (1/2)(f(x) - y)².
        seed: seeds the generator of the weights.
        dtype: computation dtype.
        chunk_size: networks per batch (None: about 64 MB of weights per batch).

    Returns:
        An `NTKMoments`.

    Example:
        >>> mom = wn.finite_width.ntk_moments(depth=3, width=10, x=torch.ones(4), n_samples=200)
        >>> mom.ratio > 1, round(mom.beta, 2)                  # E[K²]/E[K]² > 1, β = 3 / 10
        (True, 0.3)
    """
    func = "ntk_moments"
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"{func}: depth must be an int >= 1 (hidden layers), got {depth!r}")
    widths = [width] * depth if isinstance(width, int) and not isinstance(width, bool) \
        else list(width)
    if len(widths) != depth or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                                   for w in widths):
        raise ValueError(f"{func}: width must be a positive int or {depth} positive ints, got "
                         f"{width!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"{func}: n_samples must be an int >= 2, got {n_samples!r}")
    if parameterization not in ("standard", "ntk"):
        raise ValueError(f"{func}: parameterization must be 'standard' or 'ntk', got "
                         f"{parameterization!r}")
    phi, dphi, layer = _activation(activation, func)
    xt = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if xt.ndim == 1:
        xt = xt[None]
    xt = as_input_tensor(xt, func=func, arg="x", dtype=dtype).cpu()   # weights drawn on CPU
    if xt.shape[0] != 1 or xt.ndim != 2:
        raise ValueError(f"{func}: x must be one input of shape (d,) or (1, d), got "
                         f"{tuple(xt.shape)}")
    d = xt.shape[1]
    dims = [d] + widths + [1]
    scales = [w_std / math.sqrt(dims[i]) for i in range(depth + 1)]
    if parameterization == "standard":
        coef = [1.0] * (depth + 1)              # trained W: ∂f/∂W = δ xᵀ
        wscale = [1.0] * (depth + 1)
    else:
        coef = [s * s for s in scales]          # trained ω: ∂f/∂ω = (σ/√n) δ xᵀ
        wscale = scales
    per_net = sum(dims[i] * dims[i + 1] for i in range(depth + 1))
    itemsize = torch.finfo(dtype).bits // 8
    chunk = chunk_size or max(1, min(n_samples, (32 * 2 ** 20) // (per_net * itemsize)))
    gen = torch.Generator().manual_seed(int(seed))
    ks, dks = [], []
    for s0 in range(0, n_samples, chunk):
        s = min(chunk, n_samples - s0)
        ws = [torch.randn(s, dims[i + 1], dims[i], generator=gen, dtype=dtype)
              for i in range(depth + 1)]
        if parameterization == "standard":     # trainable variables are the weights themselves
            ws = [sc * w for sc, w in zip(scales, ws, strict=True)]
        xb = xt.expand(s, d)
        k, f, grads = _k_and_grads(ws, xb, phi, dphi, wscale, coef)
        # One SGD step on (1/2)(f - y)²: θ ← θ - η (f - y) ∂f/∂θ   (seed 003, Thm. 2)
        step = (learning_rate * (f - target))[:, None]
        update = [(-step * gu, gv) for gu, gv in grads]
        k2, _, _ = _k_and_grads(ws, xb, phi, dphi, wscale, coef, rank1=update)
        ks.append(k)
        dks.append(k2 - k)
    k = torch.cat(ks).double()
    dk = torch.cat(dks).double()
    if not (torch.isfinite(k).all() and torch.isfinite(dk).all()):
        raise FloatingPointError(f"{func}: non-finite kernels; the network is too deep for "
                                 f"{dtype} or learning_rate too large")
    n = k.numel()
    m1, m2 = k.mean(), (k * k).mean()
    cov = torch.cov(torch.stack([k, k * k]))
    g = torch.stack([-2 * m2 / m1 ** 3, 1 / m1 ** 2])
    ratio_se = torch.sqrt(g @ cov @ g / n)
    md = dk.mean()
    cov2 = torch.cov(torch.stack([dk, k]))
    g2 = torch.stack([1 / m1, -md / m1 ** 2])
    dk_se = torch.sqrt(g2 @ cov2 @ g2 / n)
    beta = sum(1.0 / w for w in widths)
    analytic = None
    if layer is not None:
        from ..layers.combinators import serial
        from ..layers.dense import Dense

        layers = []
        for w in widths:
            layers += [Dense(w, w_std=w_std, b_std=None, parameterization=parameterization),
                       layer]
        layers.append(Dense(1, w_std=w_std, b_std=None, parameterization=parameterization))
        analytic = float(serial(*layers).kernel(xt.double(), get="ntk")[0, 0])
    return NTKMoments(mean=float(m1), mean_se=float(k.std() / math.sqrt(n)),
                      ratio=float(m2 / m1 ** 2),
                      ratio_se=float(ratio_se), dk_rel=float(md / m1), dk_rel_se=float(dk_se),
                      beta=beta, exp5beta=math.exp(5 * beta), analytic_mean=analytic,
                      samples=k, n_samples=n)
