"""Monte Carlo kernels per position pair, for networks whose modules take a graph or a mask.

`wn.monte_carlo_kernel` averages over the flattened outputs; the attention and graph tests
compare every position pair (p, p') and pass `pattern` / `mask` to the finite modules, so they
use this small independent estimator: outer products of the outputs (NNGP) and products of
autograd gradients over all parameters (NTK), averaged over freshly seeded networks.
"""

import torch


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def mc_kernels(net, x, *, n_seeds: int, pattern=None, mask=None, want_ntk=True, seed=0):
    """(nngp, ntk) estimates shaped like `net.kernel(x, ...)` in the full layout:
    (n, n, P, P) for outputs (n, O, P), or (n, n) for flat outputs (n, O).

    NNGP: mean over seeds and output channels of f_o(x_a, p) f_o(x_b, q). NTK: mean over seeds
    of Σ_θ ∂f_0(x_a, p)/∂θ ∂f_0(x_b, q)/∂θ (output channel 0 only: the hidden layers
    self-average)."""
    in_shape = tuple(x.shape[1:])
    nngp = ntk = None
    for s in range(n_seeds):
        mod = net.module(in_shape, seed=seed + s, dtype=torch.float64)
        out = mod(x, pattern, mask=mask) if (pattern is not None or mask is not None) \
            else mod(x)
        n, o = out.shape[:2]
        f = out.reshape(n, o, -1).detach()
        est = torch.einsum("aop,boq->abpq", f, f) / o
        nngp = est if nngp is None else nngp + est
        if want_ntk:
            params = [p for p in mod.parameters() if p.requires_grad]
            rows = out.reshape(n, o, -1)[:, 0].reshape(-1)
            jac = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                r, params, retain_graph=True, allow_unused=False)]) for r in rows])
            t = (jac @ jac.T).reshape(n, -1, n, rows.numel() // n).permute(0, 2, 1, 3)
            ntk = t if ntk is None else ntk + t
    nngp = nngp / n_seeds
    ntk = None if ntk is None else ntk / n_seeds
    if nngp.shape[-1] == 1:           # flat outputs
        nngp = nngp[..., 0, 0]
        ntk = None if ntk is None else ntk[..., 0, 0]
    return nngp, ntk


def rel_error(a, b) -> float:
    """Relative Frobenius error |a - b| / |b|."""
    return _rel(a, b)
