"""Discrete-time Neural Tangent Hierarchy: one gradient-descent step, Taylor-expanded (seed 000,
end of §2 "discrete time gradient descent", eq. 29; docs/math.md §nth-discrete).

One GD step is θ' = θ + δ with δ = -Σ_b u_b g_b, u = c r (c = η/n for the "mean" loss, η for
"sum"; g_b = ∇θ f(x_b)). Every quantity q(θ) moves by the Taylor series
q(θ + δ) = q + Dq[δ] + ½ D²q[δ, δ] + ..., whose coefficients are derivatives of q along FIXED
gradient directions. With the primitives (a, e over train+test rows, b, c, d over train rows)

    J_a = g_a,   HG[c, a] = H_a g_c (H_a = ∇²θ f_a),   TG[b, c, a] = D³f_a[g_b, g_c, ·],
    A(a; b, c)      = g_bᵀ H_a g_c = D²f_a[g_b, g_c]
    B(a; e, b, c)   = D³f_a[g_e, g_b, g_c]                    (symmetric in e, b, c)
    Q(i, j; k, l)   = (H_j g_i)·(H_l g_k)

the kernels and their one-step coefficients are
    K2(a, b)        = g_a·g_b
    K3(a, b, c)     = A(a; b, c) + A(b; a, c)                 (= DK2(a, b)[g_c])
    A'(a; b, c, d)  = DA(a; b, c)[g_d]   = Q(d, b; c, a) + Q(b, a; d, c) + B(a; b, c, d)
    K4(a, b, c, d)  = DK3(a, b, c)[g_d]  = A'(a; b, c, d) + A'(b; a, c, d)
    M(a, e, b, c)   = D²K2(a, e)[g_b, g_c] = B(a; e, b, c) + B(e; a, b, c) + Q(b, a; c, e)
                                            + Q(c, a; b, e)
and one GD step is, exactly up to terms with four or more derivatives of f,
    f'  = f  - K2·u + ½ A[u, u] - ⅙ B[u, u, u]
    K2' = K2 - K3·u + ½ M[u, u]
    K3' = K3 - K4·u,        A' = A - A'·u.
Truncation at order p keeps the objects with at most p - 2 derivatives beyond the first
(K_r and A are O(m^{-(r/2-1)}) in the width m, like the continuous hierarchy's K_r):
    p = 2: f' = f - K2_0·u                                     (the linearized model under GD)
    p = 3: f' = f - K2·u + ½ A_0[u, u],  K2' = K2 - K3_0·u
    p = 4: all four lines above, with B, M, A', K4 frozen at their initial values.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vmap

from . import _core

__all__ = ["step_kernels", "iterate"]


def _unflatten(v: torch.Tensor, params: dict) -> dict:
    out, s = {}, 0
    for k, p in params.items():
        out[k] = v[s:s + p.numel()].reshape(p.shape)
        s += p.numel()
    return out


def step_kernels(model, params: dict, x: torch.Tensor, xt: torch.Tensor | None, order: int,
                 batch_size: int | None) -> dict:
    """The tensors of the discrete hierarchy at θ = params, rows over z = [x; xt] (float64).

    Returns a dict with "k2" (nz, n), and for order >= 3 "k3", "f2" (= A) (nz, n, n), and for
    order 4 "k4", "f3" (= B), "k2_second" (= M), "f2_drift" (= A') (nz, n, n, n).
    Cost: nz Hessian-vector products (one jvp of the Jacobian each) and, for order 4, n² second
    forward derivatives of the Jacobian, plus an (nz²·P) Gram matrix of the HG rows.
    """
    n = x.shape[0]
    z = x if xt is None else torch.cat([x, xt])
    nz = z.shape[0]

    def jac(p):
        return torch.cat([v.reshape(nz, -1) for v in _core.jacobian(model, p, z).values()], 1)

    jz = jac(params)                                               # (nz, P)
    out = {"k2": (jz @ jz[:n].T).double()}
    if order < 3:
        return out
    m = batch_size or nz

    def hg(v):                                                     # v (P,) -> (nz, P) rows H_a v
        return jvp(jac, (params,), (_unflatten(v, params),))[1]

    hgz = torch.cat([vmap(hg)(jz[s:s + m]) for s in range(0, nz, m)])   # (dir i, row a, P)
    hgx = hgz[:n]
    # A(a; b, c) = g_b·(H_a g_c)
    a = torch.einsum("caP,bP->abc", hgx, jz[:n]).double()
    k3 = a + torch.einsum("aP,cbP->abc", jz, hgx[:, :n]).double()   # + g_a·(H_b g_c)
    out.update(k3=k3, f2=a)
    if order < 4:
        return out
    flat = hgz.reshape(nz * nz, -1)
    q = (flat @ flat.T).double().reshape(nz, nz, nz, nz)           # Q(i, j; k, l)

    def tg(v1, v2):                                                # D²(jac)[v1, v2]: (nz, P)
        u1 = _unflatten(v1, params)
        return jvp(lambda p: jvp(jac, (p,), (u1,))[1], (params,), (_unflatten(v2, params),))[1]

    bfull = torch.empty(nz, nz, n, n, dtype=torch.float64)         # B(h; e, b, c)
    for b in range(n):
        rows = torch.cat([vmap(lambda v2, v1=jz[b]: tg(v1, v2))(jz[s:min(s + m, n)])
                          for s in range(0, n, m)])                  # (c, h, P)
        bfull[:, :, b, :] = torch.einsum("chP,eP->hec", rows, jz).double()
    X = slice(0, n)
    bx = bfull[:, X, :, :]                                         # B(a; b, c, d), a over z
    # A'(a; b, c, d) = Q(d, b; c, a) + Q(b, a; d, c) + B(a; b, c, d)
    q_dbca = q[X, X, X, :].permute(3, 1, 2, 0)                     # [a, b, c, d] = Q(d, b, c, a)
    q_badc = q[X, :, X, X].permute(1, 0, 3, 2)                     # [a, b, c, d] = Q(b, a, d, c)
    a_prime = q_dbca + q_badc + bx
    # A'(b; a, c, d) = Q(d, a; c, b) + Q(a, b; d, c) + B(b; a, c, d), a over z, b over x
    q_dacb = q[X, :, X, X].permute(1, 3, 2, 0)                     # [a, b, c, d] = Q(d, a, c, b)
    q_abdc = q[:, X, X, X].permute(0, 1, 3, 2)                     # [a, b, c, d] = Q(a, b, d, c)
    b_swap = bfull[X, :, :, :].permute(1, 0, 2, 3)                 # [a, b, c, d] = B(b; a, c, d)
    k4 = a_prime + q_dacb + q_abdc + b_swap
    # M(a, e, b, c) = B(a; e, b, c) + B(e; a, b, c) + Q(b, a; c, e) + Q(c, a; b, e), e over x
    q_baec = q[X, :, X, X].permute(1, 3, 0, 2)                     # [a, e, b, c] = Q(b, a, c, e)
    m2 = bx + b_swap + q_baec + q_baec.transpose(2, 3)
    out.update(k4=k4, f3=bx, k2_second=m2, f2_drift=a_prime)
    return out


def iterate(f0: torch.Tensor, y: torch.Tensor, kern: dict, order: int, c: float,
            steps: list[int], n: int):
    """Run the truncated one-step map (module docstring) and record at the given step counts.

    f0: (nz,) outputs on [train; test]; y: (n,) targets; kern: `step_kernels` tensors (rows
    over z); steps: sorted nonnegative ints. Returns (outputs (T, nz), ntk (T, nz, n)).
    """
    f = f0.clone()
    k2 = kern["k2"].clone()
    k3 = kern["k3"].clone() if order >= 4 else kern.get("k3")
    a = kern["f2"].clone() if order >= 4 else kern.get("f2")
    outs, ntks = [], []
    want = iter(steps)
    nxt = next(want, None)
    k = 0
    while nxt is not None:
        while nxt == k:
            outs.append(f.clone())
            ntks.append(k2.clone())
            nxt = next(want, None)
        if nxt is None:
            break
        u = c * (f[:n] - y)
        if order == 2:
            f = f - k2 @ u
        else:
            df = -(k2 @ u) + 0.5 * torch.einsum("abc,b,c->a", a, u, u)
            dk2 = -torch.einsum("abc,c->ab", k3, u)
            if order == 4:
                df = df - torch.einsum("abcd,b,c,d->a", kern["f3"], u, u, u) / 6
                dk2 = dk2 + 0.5 * torch.einsum("abcd,c,d->ab", kern["k2_second"], u, u)
                k3 = k3 - torch.einsum("abcd,d->abc", kern["k4"], u)
                a = a - torch.einsum("abcd,d->abc", kern["f2_drift"], u)
            f = f + df
            k2 = k2 + dk2
        k += 1
        if not torch.isfinite(f).all():
            raise FloatingPointError(f"truncated_nth: the discrete hierarchy diverged at step "
                                     f"{k}; the step is above 2/λ_max of the NTK (lower "
                                     f"learning_rate) or the truncation breaks down")
    return torch.stack(outs), torch.stack(ntks)
