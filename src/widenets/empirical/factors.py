"""Layer-wise factors of the NTK and the two exact ways to contract them.

For a parameter W of a layer that is linear in W, the derivative of output a at input i is

    ∂f_a(x_i)/∂W[g, o, k] = s Σ_t C[a, i, g, t, o] A[i, g, t, k]                        (1)

with A the layer's input features at position t (the input vector of a dense layer, the patch
of a convolution, the one-hot token of an embedding, the constant 1 of a bias), C the cotangent
∂f_a/∂y at the layer's output position t, g the group (conv groups) and s the forward
multiplier. Hence the layer's NTK contribution

    Θ_W[i, j, a, b] = s s' Σ_g Σ_{t,t'} (A_i,g,t · A'_j,g,t') (C_a,i,g,t · C'_b,j,g,t')    (2)

is a product of the Gram matrix of the inputs and the Gram matrix of the cotangents (Novak et
al. 2022, "Fast finite width neural tangent kernel", structured derivatives). Two exact ways to
evaluate it, with costs in multiply-adds (m = O² for mode "full", O for "trace"/"diagonal"):

* "gram" (eq. 2):      n1 n2 G T1 T2 (d_in + m d_out)  (a layer's weight and bias share
                       the cotangent Gram, paid once)
* "jacobian" (eq. 1):  (n1 + n2) O G T d_in d_out to form the per-sample Jacobians,
                       plus n1 n2 m G d_in d_out to contract them (done as 3/4 of
                       that for trace with x2 = x1 and n1 >= 128, `row_products`, but
                       counted in full when choosing the form).

Dense layers (T = 1) are cheapest in "gram" form (the cost no longer has the product
d_in d_out); convolutions with many positions (T² ≫ d_in d_out) in "jacobian" form.
`choose_form` picks per layer with these formulas. Elementwise-affine layers (normalization
scales, kind "diag": ∂f_a/∂W[k] = s Σ_t C[a, i, t, k] z[i, t, k]) have only the Jacobian form,
which is cheap: (n1 + n2) O T d + n1 n2 m d.

Embeddings (kind "index") have a third, sparse form (`index_contract`): the Jacobian of input i
has one row per distinct token v of the input, R_i[v] = s Σ_{t: idx_t = v} C[a, i, t, :], and
Θ_W[i, j] = Σ_v R_i[v] · R'_j[v] runs over the tokens the two inputs share. With m_v the number
of inputs that contain token v, the pairs number Σ_v m_v m'_v ≤ n1 T1 n2, so the cost is at most
n1 n2 T1 m d (usually far less: only shared tokens meet), against n1 n2 T1 T2 (1 + m d) for
"gram" and n1 n2 m V d for "jacobian".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .structure import LayerStructure

__all__ = ["Factor", "factors_for_call", "concat_calls", "gram_contract", "jacobian_form",
           "jacobian_contract", "row_products", "trace_rows", "index_contract", "choose_form",
           "form_costs", "conv_patches"]


@dataclass
class Factor:
    """One parameter's factors for a batch of n inputs (eq. 1).

    Attributes:
        kind: "dense" (a holds features), "ones" (bias: a is the constant 1), "index"
            (embedding: a holds token ids, -1 where no gradient flows), "diag" (elementwise
            affine: ∂f_a/∂W[k] = s Σ_t C[a, i, 0, t, k] z[i, t, k]; Jacobian form only).
        a: dense: (n, G, T, d_in); index: (n, T) int64; diag: (n, T, d_out); ones: None.
        c: (O, n, G, T, d_out) output cotangents.
        scale: forward multiplier s.
        d_in: feature size (1 for ones, the vocabulary size for index).
    """

    kind: str
    a: torch.Tensor | None
    c: torch.Tensor
    scale: float
    d_in: int

    @property
    def n(self) -> int:
        return self.c.shape[1]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(O, G, T, d_out)."""
        o, _, g, t, d = self.c.shape
        return o, g, t, d

    def nbytes(self) -> int:
        extra = 0 if self.a is None else self.a.numel() * self.a.element_size()
        return extra + self.c.numel() * self.c.element_size()


# ------------------------------------------------------------------------- factor extraction
def _conv_pads(st: LayerStructure, ksize, nd: int) -> list[tuple[int, int]]:
    if st.padding == "valid":
        return [(0, 0)] * nd
    if st.padding == "same":
        out = []
        for d, k in zip(st.dilation, ksize, strict=True):
            total = d * (k - 1)               # as torch's _ConvNd: extra padding on the right
            out.append((total // 2, total - total // 2))
        return out
    return [tuple(p) if isinstance(p, (tuple, list)) else (p, p) for p in st.padding]


def conv_patches(x: torch.Tensor, st: LayerStructure, ksize) -> torch.Tensor:
    """(n, C_in, *spatial) -> patches (n, G, P, C_in/G · prod(ksize)), ordered as the weight
    (1-d and 2-d: a non-contiguous view of F.unfold's im2col)."""
    nd = len(ksize)
    pads = _conv_pads(st, ksize, nd)
    if any(p for pair in pads for p in pair):
        flat = [p for pair in reversed(pads) for p in pair]   # F.pad wants the last axis first
        if st.padding_mode == "zeros":
            x = F.pad(x, flat)
        else:
            x = F.pad(x, flat, mode=st.padding_mode)
    if nd <= 2:
        # im2col: (n, C k, P), channels outer as in the weight; returned as a transposed view
        # (the Jacobian form multiplies by its transpose, which is then contiguous)
        x2 = x if nd == 2 else x[:, :, None]
        k2 = tuple(ksize) if nd == 2 else (1, ksize[0])
        dil = tuple(st.dilation) if nd == 2 else (1, st.dilation[0])
        stride = tuple(st.stride) if nd == 2 else (1, st.stride[0])
        cols = F.unfold(x2, k2, dilation=dil, stride=stride)
        n, ck, p = cols.shape
        return cols.reshape(n, st.groups, ck // st.groups, p).transpose(2, 3)
    for d in range(nd):
        span = st.dilation[d] * (ksize[d] - 1) + 1
        x = x.unfold(2 + d, span, st.stride[d])
        if st.dilation[d] > 1:
            x = x[..., ::st.dilation[d]]
    n, c = x.shape[:2]
    p = math.prod(x.shape[2:2 + nd])
    k = math.prod(ksize)
    g = st.groups
    x = x.reshape(n, g, c // g, p, k).permute(0, 1, 3, 2, 4)
    return x.reshape(n, g, p, (c // g) * k)


def factors_for_call(st: LayerStructure, roles: tuple[str, ...], x: torch.Tensor,
                     grad: torch.Tensor, *, ksize=None, vocab: int = 0) -> dict[str, Factor]:
    """Factors of one call of a layer.

    Args:
        st: the layer's description.
        roles: which of "weight" / "bias" are trainable.
        x: the layer's input, batch axis first, (n, ...).
        grad: (O, n, *output_shape) cotangents at the layer's output.
        ksize: conv kernel size (conv); the parameter's shape (affine).
        vocab: number of embedding rows (embedding only).
    """
    o, n = grad.shape[:2]
    out: dict[str, Factor] = {}
    if st.kind == "linear":
        d_out = grad.shape[-1]
        c = grad.reshape(o, n, 1, -1, d_out)
        if "weight" in roles:
            a = x.reshape(n, 1, -1, x.shape[-1])
            out["weight"] = Factor("dense", a, c, st.weight_scale, a.shape[-1])
        if "bias" in roles:
            out["bias"] = Factor("ones", None, c, st.bias_scale, 1)
    elif st.kind == "conv":
        g = st.groups
        c_out = grad.shape[2]
        cg = grad.reshape(o, n, c_out, -1)                  # (O, n, C_out, P)
        if "weight" in roles:
            a = conv_patches(x, st, ksize)
            c = cg.reshape(o, n, g, c_out // g, -1).transpose(3, 4)
            out["weight"] = Factor("dense", a, c, st.weight_scale, a.shape[-1])
        if "bias" in roles:
            c = cg.reshape(o, n, 1, c_out, -1).transpose(3, 4)
            out["bias"] = Factor("ones", None, c, st.bias_scale, 1)
    elif st.kind == "affine":
        d = math.prod(ksize)                     # ksize: the parameter's shape
        if st.param_layout == "channel":         # parameters index axis 1
            c = grad.movedim(2, -1).reshape(o, n, 1, -1, d)
        else:                                    # parameters cover the trailing axes
            c = grad.reshape(o, n, 1, -1, d)
        if "weight" in roles:
            z = st.transform(x)
            z = z.movedim(1, -1) if st.param_layout == "channel" else z
            out["weight"] = Factor("diag", z.reshape(n, -1, d), c, st.weight_scale, 1)
        if "bias" in roles:
            out["bias"] = Factor("ones", None, c, st.bias_scale, 1)
    elif st.kind == "embedding":
        idx = x.reshape(n, -1).long()
        if st.padding_idx is not None:
            idx = torch.where(idx == st.padding_idx, torch.full_like(idx, -1), idx)
        c = grad.reshape(o, n, 1, idx.shape[1], -1)
        out["weight"] = Factor("index", idx, c, st.weight_scale, vocab)
    else:  # pragma: no cover - LayerStructure validates kind
        raise ValueError(f"unknown layer kind {st.kind!r}")
    return out


def concat_calls(factors: list[Factor]) -> Factor:
    """A module called several times: its calls are extra positions t (eq. 1 sums over them)."""
    f0 = factors[0]
    if len(factors) == 1:
        out = f0
    else:
        c = torch.cat([f.c for f in factors], dim=3)
        if f0.kind == "dense":
            a = torch.cat([f.a for f in factors], dim=2)
        elif f0.kind in ("index", "diag"):
            a = torch.cat([f.a for f in factors], dim=1)
        else:
            a = None
        out = Factor(f0.kind, a, c, f0.scale, f0.d_in)
    return out


# ---------------------------------------------------------------------------- contractions
def _input_gram(f1: Factor, f2: Factor, rows: slice) -> torch.Tensor | None:
    """(G, r, T1, n2, T2) Gram matrix of the input features of rows `rows` of f1 with all of
    f2, times s s'; None for ones x ones (a constant)."""
    if f1.kind == "dense":
        a1 = f1.a[rows]
        g, r, t1, t2 = a1.shape[1], a1.shape[0], a1.shape[2], f2.a.shape[2]
        a1 = a1.transpose(0, 1).reshape(g, -1, a1.shape[-1])
        a2 = f2.a.transpose(0, 1).reshape(g, -1, f2.a.shape[-1])
        k = torch.bmm(a1, a2.transpose(1, 2)).reshape(g, r, t1, f2.n, t2)
        s = f1.scale * f2.scale
        return k if s == 1.0 else k * s
    if f1.kind == "index":
        a1 = f1.a[rows]
        valid = (a1 >= 0)[:, :, None, None]
        eq = (a1[:, :, None, None] == f2.a[None, None, :, :]) & valid
        return (eq.to(f1.c.dtype) * (f1.scale * f2.scale))[None]
    return None


def _group_input_gram(f1s: list[Factor], f2s: list[Factor], rows: slice):
    """Σ over a group's parameters of their input Grams (rows `rows` of x1): a
    (G, r, T1, n2, T2) tensor, or a float when all members are bias-like ("ones")."""
    kx, scalar = None, 0.0
    for f1, f2 in zip(f1s, f2s, strict=True):
        k = _input_gram(f1, f2, rows)
        if k is None:
            scalar += f1.scale * f2.scale
        else:
            kx = k if kx is None else kx + k
    if kx is None:
        return scalar
    return kx + scalar if scalar else kx


def gram_contract(f1s: list[Factor], f2s: list[Factor], mode: str, budget: int) -> torch.Tensor:
    """Eq. 2 for a group of parameters sharing one cotangent (a layer's weight and bias): the
    cotangent Gram is formed once and multiplied by the sum of the input Grams.

    Returns (n1, n2, O, O) for full, (n1, n2) summed over outputs for trace, (n1, n2, O) for
    diagonal. Works in blocks of rows of x1 so intermediates stay under `budget` elements.
    """
    f1, f2 = f1s[0], f2s[0]
    o, g, t1, d = f1.shape
    t2 = f2.shape[2]
    n1, n2 = f1.n, f2.n
    m = o * o if mode == "full" else o
    rows = max(1, budget // max(1, g * t1 * n2 * t2 * (m + 1)))
    # (O, n, G, T, d) -> the batched-matmul layouts used below (one copy when x2 is x1)
    same = f1.c is f2.c
    if mode == "diagonal":
        c1 = f1.c.permute(2, 0, 1, 3, 4).reshape(g * o, n1, t1, d)
        c2 = c1.reshape(g * o, n1 * t1, d) if same else \
            f2.c.permute(2, 0, 1, 3, 4).reshape(g * o, n2 * t2, d)
    elif mode == "trace":
        c1 = f1.c.permute(2, 1, 3, 0, 4).reshape(g, n1, t1, o * d)
        c2 = c1.reshape(g, n1 * t1, o * d) if same else \
            f2.c.permute(2, 1, 3, 0, 4).reshape(g, n2 * t2, o * d)
    else:
        c1 = f1.c.permute(2, 1, 3, 0, 4).reshape(g, n1, t1 * o, d)
        c2 = c1.reshape(g, n1 * t1 * o, d) if same else \
            f2.c.permute(2, 1, 3, 0, 4).reshape(g, n2 * t2 * o, d)
    c2t = c2.transpose(1, 2)
    inner = o * d if mode == "trace" else d
    parts = []
    for start in range(0, n1, rows):
        stop = min(n1, start + rows)
        r = stop - start
        kx = _group_input_gram(f1s, f2s, slice(start, stop))
        const = not isinstance(kx, torch.Tensor)
        kc = torch.matmul(c1[:, start:stop].reshape(c1.shape[0], -1, inner), c2t)
        if mode == "trace":
            kc = kc.reshape(g, r, t1, n2, t2)
            if const:
                part = kc.sum(dim=(0, 2, 4)) * kx
            elif g == 1 and t1 == 1 and t2 == 1:
                part = kc.reshape(r, n2).mul_(kx.reshape(r, n2))
            else:
                part = (kc * kx).sum(dim=(0, 2, 4))
        elif mode == "diagonal":
            kc = kc.reshape(g, o, r, t1, n2, t2)
            if const:
                part = kc.sum(dim=(0, 3, 5)) * kx
            else:
                part = (kc * kx[:, None]).sum(dim=(0, 3, 5))
            part = part.permute(1, 2, 0)
        else:
            kc = kc.reshape(g, r, t1, o, n2, t2, o)
            if const:
                part = kc.sum(dim=(0, 2, 5)) * kx
            else:
                part = (kc * kx[:, :, :, None, :, :, None]).sum(dim=(0, 2, 5))
            part = part.permute(0, 2, 1, 3)
        parts.append(part)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def jacobian_form(f: Factor) -> torch.Tensor:
    """Eq. 1: per-sample Jacobian (n, O, P), P in the parameter's own memory layout."""
    o, g, t, d = f.shape
    n = f.n
    if f.kind == "dense":
        # one batched matrix product over (input, group): (O d_out, T) @ (T, d_in)
        k = f.a.shape[-1]
        c = f.c.permute(1, 2, 0, 4, 3).reshape(n * g, o * d, t)
        j = torch.bmm(c, f.a.reshape(n * g, t, k)).reshape(n, g, o, d * k)
        j = j.transpose(1, 2).reshape(n, o, -1)
    elif f.kind == "ones":
        j = f.c.sum(dim=3).permute(1, 0, 2, 3).reshape(n, o, -1)
    elif f.kind == "diag":
        j = torch.einsum("aitk,itk->iak", f.c[:, :, 0], f.a)
    else:
        v = f.d_in
        valid = f.a >= 0
        rows = (torch.arange(n, device=f.a.device)[:, None] * v + f.a.clamp(min=0))[valid]
        src = f.c[:, :, 0][:, valid]                            # (O, n_valid, d)
        j = torch.zeros(o, n * v, d, dtype=f.c.dtype, device=f.c.device)
        j.index_add_(1, rows, src)
        j = j.reshape(o, n, v * d).transpose(0, 1)
    return j if f.scale == 1.0 else j * f.scale


#: Fewest rows for which `row_products` splits a symmetric product (below it the product of a
#: few rows with a long K is memory-bound, and the split saves no time: measured on CPU,
#: 1 thread, K = 2e4 ... 7e5: n = 32 1.0-1.15x slower, n = 128 1.07x, n = 256 1.24x faster).
SYMMETRIC_SPLIT_MIN = 128


def row_products(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """r1 r2ᵀ for rows (n1, K), (n2, K). When r2 is r1 (and n1 >= SYMMETRIC_SPLIT_MIN) the
    result is symmetric: the products of the second half of the rows with the first are taken
    from the first half's (the transpose), so 3/4 of the multiply-adds are done (3/4 rather
    than 1/2: smaller blocks would turn the long-K products memory-bound)."""
    if r2 is not r1 or r1.shape[0] < SYMMETRIC_SPLIT_MIN:
        return r1 @ r2.T
    n = r1.shape[0]
    h = n // 2
    out = torch.empty((n, n), dtype=r1.dtype, device=r1.device)
    torch.matmul(r1[:h], r1.T, out=out[:h])
    out[h:, :h] = out[:h, h:].T
    out[h:, h:] = r1[h:] @ r1[h:].T
    return out


def jacobian_contract(j1: torch.Tensor, j2: torch.Tensor, mode: str) -> torch.Tensor:
    """Θ from per-sample Jacobians (n1, O, P), (n2, O, P); trace is the sum over outputs
    (`row_products`: 3/4 of the work when j2 is j1)."""
    n1, o, p = j1.shape
    n2 = j2.shape[0]
    if mode == "trace":
        r1 = j1.reshape(n1, o * p)
        return row_products(r1, r1 if j2 is j1 else j2.reshape(n2, o * p))
    if mode == "diagonal":
        return torch.bmm(j1.transpose(0, 1), j2.permute(1, 2, 0)).permute(1, 2, 0)
    return (j1.reshape(n1 * o, p) @ j2.reshape(n2 * o, p).T).reshape(n1, o, n2, o) \
        .permute(0, 2, 1, 3)


def _cotangent_matrices(f: Factor) -> torch.Tensor:
    """The cotangents as (n G, O d_out, T) matrices C_iᵀ, each input's (O, d_out) entries
    adjacent. Memory: per input either (O, d_out, T) or (T, O, d_out) row-major, whichever
    keeps the factor's own fastest axis (T for a convolution's (C_out, positions) cotangent,
    d_out for a linear layer's (positions, features) or a channels-last convolution's), so the
    copy moves contiguous runs instead of single elements; a matrix product takes either as
    it is (one is the transpose of the other). The values do not depend on the choice."""
    o, g, t, d = f.shape
    n = f.n
    c = f.c
    if c.stride(3) < c.stride(4):                    # positions are the fast axis
        return c.permute(1, 2, 0, 4, 3).reshape(n * g, o * d, t)
    c = c.permute(1, 2, 3, 0, 4).contiguous()        # (n, G, T, O, d_out)
    return c.reshape(n * g, t, o * d).transpose(1, 2)


def trace_rows(f: Factor) -> torch.Tensor:
    """Eq. 1 as (n, O P) rows for mode "trace": Σ_a J_a J'_aᵀ only needs each input's Jacobian
    entries in one fixed order, so the order is the cheapest to produce (for a dense factor
    the batched product C_iᵀ (O d_out x T) A_i (T x d_in), entries ordered (G, O, d_out,
    d_in), with no copy of the Jacobian). Both sides of a contraction must come from this
    function."""
    o, g, t, d = f.shape
    n = f.n
    if f.kind == "dense":
        k = f.a.shape[-1]
        j = torch.bmm(_cotangent_matrices(f), f.a.reshape(n * g, t, k)).reshape(n, -1)
    elif f.kind == "ones":
        j = f.c.sum(dim=3).movedim(1, 0).reshape(n, -1)
    else:
        j = jacobian_form(f).reshape(n, -1)
        return j
    return j if f.scale == 1.0 else j * f.scale


def _token_rows(f: Factor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows (R, O, d), input of each row (R,), token of each row (R,)): one row per distinct
    (input, token) pair, the sum of the cotangents at the positions holding that token."""
    n, t = f.a.shape
    v = f.d_in
    valid = f.a >= 0
    keys = (torch.arange(n, device=f.a.device)[:, None] * v + f.a.clamp(min=0))[valid]
    uniq, inverse = torch.unique(keys, return_inverse=True)
    src = f.c[:, :, 0][:, valid]                                  # (O, n_valid, d)
    rows = torch.zeros((uniq.shape[0], f.c.shape[0], f.c.shape[-1]), dtype=f.c.dtype,
                       device=f.c.device)
    rows.index_add_(0, inverse, src.transpose(0, 1))
    return rows, uniq // v, uniq % v


def index_contract(f1: Factor, f2: Factor, mode: str, budget: int) -> torch.Tensor:
    """The sparse form of an embedding's contribution (module docstring): Σ over pairs of
    (input, token) rows of x1 and x2 with the same token of their dot products.

    Returns (n1, n2, O, O) for full, (n1, n2) summed over outputs for trace, (n1, n2, O) for
    diagonal. Pairs are found and contracted in chunks of at most `budget` elements."""
    r1, i1, v1 = _token_rows(f1)
    r2, i2, v2 = (r1, i1, v1) if f1 is f2 else _token_rows(f2)
    n1, n2 = f1.n, f2.n
    o, d = r1.shape[1], r1.shape[2]
    shape = {"trace": (), "diagonal": (o,), "full": (o, o)}[mode]
    out = torch.zeros((n1 * n2, *shape), dtype=r1.dtype, device=r1.device)
    order = torch.argsort(v2)
    v2s = v2[order]
    # rows of x2 with the token of each row of x1: the run [lo, hi) of the sorted tokens
    lo = torch.searchsorted(v2s, v1)
    hi = torch.searchsorted(v2s, v1, right=True)
    counts = hi - lo
    per_pair = o * d * (o if mode == "full" else 1) + o * d
    step = max(1, budget // max(1, per_pair))
    starts = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    for p0 in range(0, total, step):
        p = torch.arange(p0, min(total, p0 + step), device=r1.device)
        a = torch.searchsorted(starts, p, right=True) - 1          # row of x1 of each pair
        b = order[lo[a] + (p - starts[a])]                          # row of x2 of each pair
        x, y = r1[a], r2[b]
        if mode == "trace":
            val = (x * y).sum(dim=(1, 2))
        elif mode == "diagonal":
            val = (x * y).sum(dim=2)
        else:
            val = torch.bmm(x, y.transpose(1, 2))
        out.index_add_(0, i1[a] * n2 + i2[b], val)
    s = f1.scale * f2.scale
    out = out.reshape(n1, n2, *shape)
    return out if s == 1.0 else out * s


def form_costs(shape1, shape2, kind: str, d_in: int, n1: int, n2: int, mode: str,
               symmetric: bool) -> tuple[float, float, float, float]:
    """Costs of one parameter's factor pair, in multiply-adds and elements.

    shape1/shape2: (O, G, T, d_out) of the factors; see the module docstring for the formulas.

    Returns:
        (input-Gram MACs, cotangent-Gram MACs, jacobian-form MACs, jacobian-form elements).
        A group of parameters sharing a cotangent pays the cotangent Gram once.
    """
    o, g, t1, d = shape1
    t2 = shape2[2]
    m = o * o if mode == "full" else o
    if kind == "index":                        # the sparse form: at most n1 n2 T pairs
        sparse = n1 * n2 * min(t1, t2) * (m * d + m)
        return 0.0, float(sparse), math.inf, 0.0
    if kind == "diag":                         # no Gram form: Jacobian (n, O, d_out) only
        jac = (n1 + (0 if symmetric else n2)) * o * t1 * d + n1 * n2 * m * d
        return math.inf, 0.0, float(jac), float((n1 + (0 if symmetric else n2)) * o * d)
    din_gram = d_in if kind == "dense" else 0
    kx = n1 * n2 * g * t1 * t2 * din_gram
    kc = n1 * n2 * g * t1 * t2 * (m * d + m)
    p = g * d_in * d
    form_din = d_in if kind == "dense" else 1
    form = n1 * o * g * t1 * form_din * d + (0 if symmetric else n2 * o * g * t2 * form_din * d)
    # counted in full even where `row_products` does 3/4 of the pairs (trace, x2 = x1, n1 >=
    # SYMMETRIC_SPLIT_MIN): with the discount the MLP of benchmarks/empirical_ntk.py at N = 256
    # switched a layer to the Jacobian form and ran 1.25x slower (1 and 2 threads)
    jac = form + n1 * n2 * m * p
    mem = (n1 + (0 if symmetric else n2)) * o * p
    return float(kx), float(kc), float(jac), float(mem)


def choose_form(f1s: list[Factor], f2s: list[Factor], mode: str, symmetric: bool,
                budget: int) -> str:
    """"gram" or "jacobian" for a group sharing a cotangent, whichever costs fewer
    multiply-adds; "sparse" for an embedding (`index_contract`). (Memory does not constrain
    the choice: the jacobian form of a dense factor is built a slice of its output features
    at a time within the budget; the other kinds' Jacobians are no larger than their
    cotangents.)"""
    if all(f.kind == "index" for f in f1s):
        return "sparse"
    gram = jac = 0.0
    for f1, f2 in zip(f1s, f2s, strict=True):
        kx, kc, j, _ = form_costs(f1.shape, f2.shape, f1.kind, f1.d_in, f1.n, f2.n, mode,
                                  symmetric)
        gram, jac = gram + kx, jac + j
    gram += kc
    if any(f.kind == "diag" for f in f1s):
        return "jacobian"
    return "jacobian" if jac < gram else "gram"
