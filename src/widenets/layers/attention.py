"""Global self-attention over the positions of channels-first inputs (Hron et al. 2020,
"Infinite attention"; NT's `stax.GlobalSelfAttention`).

Finite layer (NTK parameterization, all weights N(0, 1)), for an input x with C channels at P
positions (sequences (n, C, L), images (n, C, H, W) with P = H·W), heads h = 1..H, per-head key
width d = key_channels / H and value width d_v = value_channels / H:

    keys       k_h(p) = x_k(p) ω_K^h                      (C_k -> d)
    logits     Λ_h(p, q) = σ_Q σ_K / (C_k d) · k_h(p)·k_h(q)     (linear_scaling=True: the query
               weights are the key weights, ω_Q = ω_K)
               Λ_h(p, q) = σ_Q σ_K / (C_k √d) · (x_k(p) ω_Q^h)·k_h(q)  (linear_scaling=False)
    weights    G_h = mechanism(Λ_h) over the keys q (softmax, identity, abs, relu); padded keys
               (mask) get weight 0
    output     f(p) = σ_O σ_V / √(H d_v C_v) Σ_{h, v} ω_O[h v] Σ_q G_h(p, q) (x_v(q) ω_V^h)_v
               + σ_b β

x_k = x_v = x without positional embeddings; with pos_emb="sum", x_k = x + e, with "concat"
x_k = [x; e] (C_k = 2C), and x_v likewise when value_pos_emb (else x_v = x). The embedding
e = z Lᵀ has trainable z ~ N(0, 1) (C x P) and covariance R = L Lᵀ over positions,
R(p, q) = pos_emb_decay(|p - q|) (Euclidean distance of the position coordinates; None: R = I).

Infinite width (key_channels, value_channels -> ∞; docs/math.md §attention), linear_scaling=True:
the logits converge to the deterministic Λ(p, q) = σ_Q σ_K K̃(x, x)(p, q), the input's own
kernel with the embedding (K̃ = K + R for "sum", (K + R)/2 for "concat"), the same for every
head, so with G1, G2 the weights of x1, x2 and K_v the value-input kernel (K, or K̃ with
value_pos_emb):

    K'(p, p') = σ_O² σ_V² Σ_{q, q'} G1(p, q) K_v(q, q') G2(p', q') + σ_b²
    Θ'(p, p') = σ_O² σ_V² [G1 Θ_v G2ᵀ + 2 G1 K_v G2ᵀ](p, p') + σ_b²

(Θ_v = Θ, or Θ + R ("sum") / (Θ + R)/2 ("concat") with value_pos_emb, the trainable z adding R;
the factor 2 counts the value and output weights; the key weights' gradient vanishes as 1/d).
The layer needs all position pairs of its input (full layout), like pooling.

Standard parameterization (docs/math.md §attention-standard): the weights carry their scales,
W_QK ~ N(0, σQσK/C_k) (tied; untied W_K ~ N(0, σK²/C_k), W_Q ~ N(0, σQ²/C_k)),
W_V ~ N(0, σV²/C_v), W_O ~ N(0, σO²/V) with V = value_channels, b ~ N(0, σb²), logits
(x W_QK)(x W_QK)ᵀ/d. Same function at initialization, hence the same NNGP; the NTK reported at
the declared widths (as for Dense, C_v = the input's channels, doubled by "concat" with
value_pos_emb):

    Θ'(p, p') = σO²σV² G1 Θ_v G2ᵀ + (C_v σO² + V σV²) G1 K_v G2ᵀ + 1[bias]

The tied key/query weights contribute O(C_k·heads/key_channels) (not growing with the width,
like the finite-key-width corrections of the other terms): dropped, as the O(1/d) key term is
in the NTK parameterization.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..kernel import Kernel
from .base import FULL, Layer, as_number, check_parameterization, check_std, new_source, normal_
from .patterns import check_mask

__all__ = ["GlobalSelfAttention", "GlobalSelfAttentionModule", "MECHANISMS", "POS_EMB"]

MECHANISMS = ("softmax", "identity", "abs", "relu")
POS_EMB = ("none", "sum", "concat")


def attention_weights(logits: torch.Tensor, mask: torch.Tensor | None, mechanism: str):
    """mechanism(logits) over the last axis (the keys); padded keys get weight 0."""
    keep = None if mask is None else mask.reshape(mask.shape[0], *([1] * (logits.ndim - 2)),
                                                  mask.shape[-1])
    if mechanism == "softmax":
        if keep is not None:
            logits = logits.masked_fill(~keep, -math.inf)
        return torch.softmax(logits, dim=-1)
    g = {"identity": lambda t: t, "abs": torch.abs, "relu": torch.relu}[mechanism](logits)
    return g if keep is None else g.masked_fill(~keep, 0.0)


def position_covariance(spatial: tuple[int, ...], decay: Callable | None,
                        func: str) -> torch.Tensor:
    """R(p, q) = decay(|p - q|) over the positions of `spatial` (row-major), float64; the
    identity when decay is None. Raises ValueError unless R is symmetric positive semidefinite
    with a finite result."""
    p = math.prod(spatial)
    if decay is None:
        return torch.eye(p, dtype=torch.float64)
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in spatial),
                           indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids], 1)
    dist = torch.cdist(coords, coords)
    r = decay(dist)
    if not isinstance(r, torch.Tensor) or r.shape != dist.shape:
        raise ValueError(f"{func}: pos_emb_decay must map a float64 tensor of distances to a "
                         f"tensor of the same shape (e.g. lambda d: torch.exp(-d)), got "
                         f"{type(r).__name__}")
    r = r.to(torch.float64)
    if not torch.isfinite(r).all():
        raise ValueError(f"{func}: pos_emb_decay gave non-finite covariances")
    lam = torch.linalg.eigvalsh(0.5 * (r + r.T))
    if lam.min() < -1e-8 * max(float(lam.abs().max()), 1.0):
        raise ValueError(f"{func}: pos_emb_decay must give a positive semidefinite covariance "
                         f"of the positions (a valid covariance function of the distance), "
                         f"got an eigenvalue {float(lam.min()):.3g}")
    return 0.5 * (r + r.T)


def _square_root(r: torch.Tensor) -> torch.Tensor:
    """L with L Lᵀ = R for a PSD R (eigendecomposition; exact for singular R too)."""
    lam, v = torch.linalg.eigh(r)
    return v * lam.clamp_min(0).sqrt()


class GlobalSelfAttentionModule(nn.Module):
    """The finite attention layer of `GlobalSelfAttention` (see the module docstring);
    forward(x, pattern=None, mask=None) with x (n, C, *S) and mask (n, P) boolean."""

    takes_graph = True

    def __init__(self, layer: GlobalSelfAttention, in_shape, generator, dtype):
        super().__init__()
        c, spatial = in_shape[0], tuple(in_shape[1:])
        self.in_channels, self.spatial = c, spatial
        self.positions = math.prod(spatial)
        self.heads, self.mechanism = layer.heads, layer.mechanism
        self.linear_scaling, self.pos_emb = layer.linear_scaling, layer.pos_emb
        self.value_pos_emb = layer.value_pos_emb and layer.pos_emb != "none"
        self.d_key = layer.key_channels // layer.heads
        self.d_value = layer.value_channels // layer.heads
        self.c_key = 2 * c if layer.pos_emb == "concat" else c
        self.c_value = self.c_key if self.value_pos_emb else c
        q_std, k_std = as_number(layer.w_query_std), as_number(layer.w_key_std)
        v_std, o_std = as_number(layer.w_value_std), as_number(layer.w_out_std)
        self.b_std = as_number(layer.b_std)
        self.parameterization = layer.parameterization
        h, v_width = layer.heads, layer.heads * self.d_value
        new = lambda *shape, std=1.0: nn.Parameter(normal_(  # noqa: E731
            torch.empty(*shape, dtype=dtype), generator, std))
        if layer.parameterization == "ntk":
            # N(0, 1) weights; every σ and 1/√fan-in is a multiplier in forward
            self.qk, self.ov, self.b_scale = q_std * k_std, o_std * v_std, self.b_std
            stds = dict(key=1.0, query=1.0, value=1.0, out=1.0, bias=1.0)
        else:
            # standard: the weights carry their scales (docs/math.md §attention-standard);
            # tied keys/queries W ~ N(0, σQσK/C_k), or W_K ~ N(0, σK²/C_k), W_Q ~ N(0, σQ²/C_k)
            self.qk = self.ov = self.b_scale = 1.0
            tied = math.sqrt(q_std * k_std / self.c_key)
            stds = dict(key=tied if layer.linear_scaling else k_std / math.sqrt(self.c_key),
                        query=q_std / math.sqrt(self.c_key),
                        value=v_std / math.sqrt(self.c_value),
                        out=o_std / math.sqrt(v_width), bias=self.b_std)
        self.w_key = new(h, self.c_key, self.d_key, std=stds["key"])
        self.w_query = None if layer.linear_scaling else new(h, self.c_key, self.d_key,
                                                             std=stds["query"])
        self.w_value = new(h, self.c_value, self.d_value, std=stds["value"])
        self.w_out = new(v_width, layer.out_channels, std=stds["out"])
        self.bias = None if layer.b_std is None else new(layer.out_channels, std=stds["bias"])
        if layer.pos_emb != "none":
            r = position_covariance(spatial, layer.pos_emb_decay, "GlobalSelfAttention.module")
            self.register_buffer("pos_root", _square_root(r).to(dtype))
            self.pos_z = new(c, self.positions)
        else:
            self.pos_root = self.pos_z = None

    def forward(self, x: torch.Tensor, pattern=None, mask=None) -> torch.Tensor:
        n, spatial = x.shape[0], tuple(x.shape[2:])
        # any positions of the built rank; the embedding fixes them to those it was built for
        if x.ndim != 2 + len(self.spatial) or x.shape[1] != self.in_channels or (
                self.pos_z is not None and spatial != self.spatial):
            want = ", ".join(map(str, self.spatial)) if self.pos_z is not None else \
                ", ".join("*" for _ in self.spatial)
            raise ValueError(f"GlobalSelfAttention.module: expected inputs (n, "
                             f"{self.in_channels}, {want}), got {tuple(x.shape)}")
        positions = math.prod(spatial)
        if mask is not None:
            mask = check_mask(mask, n=n, spatial=spatial, func="GlobalSelfAttention.module",
                              arg="mask")
        xv = xk = x.reshape(n, self.in_channels, positions)
        if self.pos_z is not None:
            e = (self.pos_z @ self.pos_root.T)[None]                 # (1, C, P), cov R
            xk = xk + e if self.pos_emb == "sum" else torch.cat([xk, e.expand_as(xk)], 1)
            if self.value_pos_emb:
                xv = xk
        keys = torch.einsum("ncp,hcd->nhpd", xk, self.w_key)
        ntk = self.parameterization == "ntk"     # else the fan-ins are in the weights
        if self.linear_scaling:
            queries, norm = keys, (self.c_key if ntk else 1) * self.d_key
        else:
            queries = torch.einsum("ncp,hcd->nhpd", xk, self.w_query)
            norm = (self.c_key if ntk else 1) * math.sqrt(self.d_key)
        logits = queries @ keys.transpose(-1, -2) * (self.qk / norm)   # (n, H, P, P)
        g = attention_weights(logits, mask, self.mechanism)
        values = torch.einsum("ncp,hcd->nhpd", xv, self.w_value)
        heads = (g @ values).permute(0, 2, 1, 3).reshape(n, positions, -1)
        out = heads @ self.w_out
        if ntk:
            out = out * (self.ov / math.sqrt(heads.shape[-1] * self.c_value))
        if self.bias is not None:
            out = out + self.b_scale * self.bias
        return out.transpose(1, 2).reshape(n, -1, *spatial)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, heads={self.heads}, d_key={self.d_key}, "
                f"d_value={self.d_value}, mechanism={self.mechanism!r}, "
                f"linear_scaling={self.linear_scaling}, pos_emb={self.pos_emb!r}, "
                f"parameterization={self.parameterization!r}")


def _positive_int(v, func: str, arg: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{func}: {arg} must be a positive int, got {v!r}")
    return v


class GlobalSelfAttention(Layer):
    """Multi-head self-attention over all positions of channels-first inputs (Hron et al.
    2020), with its infinite-width NNGP and NTK (see the module docstring for the formulas).

    Args:
        out_channels: output channels.
        key_channels: total key (= query) channels over all heads; each head has
            key_channels / heads (NT's n_chan_key is the per-head number).
        value_channels: total value channels over all heads (value_channels / heads per head).
        heads: number of heads; must divide key_channels and value_channels.
        w_key_std, w_query_std: σ_K, σ_Q; only their product enters (logit scale).
        w_value_std, w_out_std: σ_V, σ_O; only their product enters.
        b_std: σ_b of the output bias; None (default) for no bias.
        mechanism: "softmax", "identity", "abs" or "relu", applied to the logits.
        pos_emb: "none", "sum" (added to the inputs of keys and queries) or "concat"
            (appended as C extra channels).
        pos_emb_decay: covariance of the embeddings as a function of the Euclidean distance
            between positions, called on a float64 tensor of distances (e.g.
            `lambda d: torch.exp(-d)`); None for independent positions (R = I).
        value_pos_emb: also feed the embeddings to the values.
        linear_scaling: True (default) for the variant with a closed-form kernel: logits scaled
            by 1/(C·d) with tied query and key weights (NT's definition). False for standard
            1/√d scaling with independent queries and keys: `module()` builds it, `kernel`
            raises (estimate it with `wn.monte_carlo_kernel`).
        parameterization: "ntk" (default; all weights N(0, 1) scaled in forward, as NT) or
            "standard" (the weights carry σ/√fan-in, as `Dense`): the same NNGP; the
            standard NTK is reported at the declared widths, with the value and output
            weights' terms multiplied by their fan-ins (the input channels and
            value_channels; see the module docstring).

    Inputs are (n, C, L) sequences or (n, C, H, W) images; `mask=` (n, P) excludes padded
    positions as keys. The kernel needs all position pairs (quadratic in positions).

    Example:
        >>> import torch, widenets as wn
        >>> x = torch.randn(4, 3, 6)                           # 4 sequences, 3 channels, length 6
        >>> net = wn.serial(wn.GlobalSelfAttention(8, 8, 8, 2), wn.Relu(), wn.GlobalAvgPool(),
        ...                 wn.Dense(1))
        >>> net.kernel(x, get="nngp").shape
        torch.Size([4, 4])
        >>> mask = torch.arange(6) < torch.tensor([[6], [4], [5], [6]])   # valid positions
        >>> net.kernel(x, mask=mask, get="ntk").shape
        torch.Size([4, 4])
        >>> net.module((3, 6), seed=0)(x.float(), mask=mask).shape
        torch.Size([4, 1])
        >>> std = wn.GlobalSelfAttention(8, 8, 8, 2, parameterization="standard")
        >>> bool(torch.allclose(std.kernel(x, get="nngp"),
        ...                     wn.GlobalSelfAttention(8, 8, 8, 2).kernel(x, get="nngp")))
        True
    """

    accepts_mask = True
    hyperparameter_domains = {"w_key_std": "positive", "w_value_std": "positive",
                              "w_query_std": "positive", "w_out_std": "positive",
                              "b_std": "positive"}

    @property
    def may_zero_outputs(self) -> bool:
        # relu / abs / identity weights can all vanish (e.g. every logit negative under relu):
        # an exactly zero output for a nonzero input is then the right answer
        return self.mechanism != "softmax"

    def __init__(self, out_channels: int, key_channels: int, value_channels: int, heads: int,
                 *, w_key_std: float = 1.0, w_value_std: float = 1.0, w_query_std: float = 1.0,
                 w_out_std: float = 1.0, b_std: float | None = None, mechanism: str = "softmax",
                 pos_emb: str = "none", pos_emb_decay: Callable | None = None,
                 value_pos_emb: bool = False, linear_scaling: bool = True,
                 parameterization: str = "ntk"):
        func = "GlobalSelfAttention"
        self.out_channels = _positive_int(out_channels, func, "out_channels")
        self.key_channels = _positive_int(key_channels, func, "key_channels")
        self.value_channels = _positive_int(value_channels, func, "value_channels")
        self.heads = _positive_int(heads, func, "heads")
        for arg, v in (("key_channels", key_channels), ("value_channels", value_channels)):
            if v % heads:
                raise ValueError(f"{func}: heads={heads} must divide {arg}={v} (each head gets "
                                 f"{arg} / heads channels)")
        self.w_key_std = check_std(w_key_std, func=func, arg="w_key_std")
        self.w_value_std = check_std(w_value_std, func=func, arg="w_value_std")
        self.w_query_std = check_std(w_query_std, func=func, arg="w_query_std")
        self.w_out_std = check_std(w_out_std, func=func, arg="w_out_std")
        self.b_std = check_std(b_std, func=func, arg="b_std", allow_none=True)
        if mechanism not in MECHANISMS:
            raise ValueError(f"{func}: mechanism must be one of {MECHANISMS}, got {mechanism!r}")
        if pos_emb not in POS_EMB:
            raise ValueError(f"{func}: pos_emb must be one of {POS_EMB}, got {pos_emb!r}")
        if pos_emb_decay is not None and not callable(pos_emb_decay):
            raise TypeError(f"{func}: pos_emb_decay must be a function of the distance or None, "
                            f"got {type(pos_emb_decay).__name__}")
        for arg, v in (("value_pos_emb", value_pos_emb), ("linear_scaling", linear_scaling)):
            if not isinstance(v, bool):
                raise TypeError(f"{func}: {arg} must be True or False, got {v!r}")
        check_parameterization(parameterization, func=func)
        self.mechanism, self.pos_emb, self.pos_emb_decay = mechanism, pos_emb, pos_emb_decay
        self.value_pos_emb, self.linear_scaling = value_pos_emb, linear_scaling
        self.parameterization = parameterization
        self._pos_cache: dict = {}

    def layout_need(self, need):
        return FULL

    def _position_covariance(self, spatial, dtype, device) -> torch.Tensor:
        key = (spatial, dtype, device)
        if key not in self._pos_cache:
            self._pos_cache = {key: position_covariance(
                spatial, self.pos_emb_decay, "GlobalSelfAttention.kernel").to(dtype=dtype,
                                                                              device=device)}
        return self._pos_cache[key]

    def apply_kernel(self, k: Kernel) -> Kernel:
        func = "GlobalSelfAttention.kernel"
        if isinstance(k, list):
            raise ValueError(f"{func}: expected one input, got {len(k)} branches; merge them "
                             f"with FanInSum() or FanInConcat() first")
        if not self.linear_scaling:
            raise ValueError(f"{func}: linear_scaling=False (1/√d logits with independent "
                             f"queries and keys) has no closed-form kernel; estimate it with "
                             f"wn.monte_carlo_kernel(net, x1, x2, in_shape=..., n_samples=...) "
                             f"over net.module(...), or use linear_scaling=True")
        if not k.is_spatial:
            raise ValueError(f"{func}: inputs must be channels-first (n, C, L) or (n, C, H, W) "
                             f"with positions that attend to each other, got flat features")
        if not k.is_full_spatial:
            raise ValueError(f"{func}: attention needs all position pairs but got the "
                             f"diagonal layout; call net.kernel(..., layout='auto' or 'full')")
        shape, cov_shape = k.nngp.shape, k.cov1.shape
        p = math.prod(k.spatial_shape)
        flat = lambda t, nb: None if t is None else t.reshape(  # noqa: E731
            *t.shape[:nb], p, p)
        nngp, ntk, cov1, cov2 = flat(k.nngp, 2), flat(k.ntk, 2), flat(k.cov1, 1), \
            flat(k.cov2, 1)
        m1, m2 = k.masks()

        if self.pos_emb == "none":
            interp = lambda t: t  # noqa: E731
        else:
            r = self._position_covariance(k.spatial_shape, k.dtype, k.nngp.device)
            half = 0.5 if self.pos_emb == "concat" else 1.0
            interp = lambda t: None if t is None else (t + r) * half  # noqa: E731
        qk = self.w_query_std * self.w_key_std
        g1 = attention_weights(qk * interp(cov1), m1, self.mechanism)      # (n1, P, P)
        # cov2 is None only for x2 = x1 (a row block of a symmetric kernel carries cov2)
        g2 = g1 if cov2 is None else attention_weights(qk * interp(cov2), m2, self.mechanism)
        values = (lambda t: interp(t)) if self.value_pos_emb else (lambda t: t)
        ov2 = (self.w_out_std * self.w_value_std) ** 2
        b2 = (self.b_std or 0.0) ** 2

        n1, n2 = nngp.shape[:2]

        def cross(t):           # G1 t G2ᵀ over (n1, n2, P, P), as two large batched products
            left = g1 @ t.transpose(1, 2).reshape(n1, p, n2 * p)          # (n1, P, n2 P)
            left = left.reshape(n1, p, n2, p).permute(2, 3, 0, 1).reshape(n2, p, n1 * p)
            both = g2 @ left                                              # (n2, P', n1 P)
            return both.reshape(n2, p, n1, p).permute(2, 0, 3, 1)         # (n1, n2, P, P')

        def own(t, g):
            return g @ t @ g.transpose(-1, -2)

        kv = values(nngp)
        gkg = cross(kv)
        out_nngp = (gkg * ov2 + b2).reshape(shape)
        out_cov1 = (own(values(cov1), g1) * ov2 + b2).reshape(cov_shape)
        out_cov2 = None if k.cov2 is None else (own(values(cov2), g2) * ov2 + b2).reshape(
            k.cov2.shape)
        out_ntk = None
        if ntk is not None:
            theta = cross(values(ntk)) if (not k.is_input or self.value_pos_emb) else 0.0
            if self.parameterization == "ntk":
                # Θ' = σO²σV² (G1 Θ_v G2ᵀ + 2 G1 K_v G2ᵀ) + σb²  (docs/math.md §attention)
                out_ntk = ((theta + 2 * gkg) * ov2 + b2).reshape(shape)
            else:
                # Θ' = σO²σV² G1 Θ_v G2ᵀ + (C_v σO² + V σV²) G1 K_v G2ᵀ + 1[bias]
                # (docs/math.md §attention-standard): the value weights' fan-in C_v and the
                # output weights' fan-in V = value_channels multiply their own terms
                c_v = k.channels * (2 if self.value_pos_emb and self.pos_emb == "concat"
                                    else 1)
                own = c_v * self.w_out_std ** 2 + self.value_channels * self.w_value_std ** 2
                bias = 0.0 if self.b_std is None else 1.0
                out_ntk = (theta * ov2 + gkg * own + bias).reshape(shape)
        out = k.replace(nngp=out_nngp, ntk=out_ntk, cov1=out_cov1, cov2=out_cov2,
                        is_gaussian=True, is_input=False, channels=self.out_channels,
                        sources=new_source())
        if k.x1_is_x2:
            if k.n1 == k.n2 and k.row_offset == 0:
                out = out.replace(nngp=out.symmetrize(out.nngp),
                                  ntk=None if out.ntk is None else out.symmetrize(out.ntk))
            out.set_batch_diagonal(out.nngp, out.cov1)
        return out

    def build(self, in_shape, generator, dtype):
        if isinstance(in_shape, list) or not 2 <= len(in_shape) <= 4:
            raise ValueError(f"GlobalSelfAttention.module: in_shape must be channels-first "
                             f"(C, L) or (C, H, W), got {in_shape!r}")
        mod = GlobalSelfAttentionModule(self, tuple(in_shape), generator, dtype)
        return mod, (self.out_channels, *in_shape[1:])
