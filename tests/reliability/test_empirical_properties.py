"""Issue 17 property tests, empirical side: random torch models (MLPs and small CNNs, with and
without biases, LayerNorm, frozen parameters), random batch sizes, dtypes, NaN positions,
implementations and modes thrown at `wn.empirical_ntk` (seeded generation). Each call must
either raise a widenets error whose message starts with "empirical_ntk", or return a finite
kernel equal to a brute-force reference written here: one `torch.autograd.grad` per input and
output, then explicit dot products of the flattened parameter gradients.
"""

import re

import numpy as np
import pytest
import torch
from torch import nn

import widenets as wn

ERROR = re.compile(r"^empirical_ntk\b")


def _random_model(rng, dtype):
    if rng.random() < 0.5:
        d = int(rng.integers(1, 5))
        layers, width = [], d
        for _ in range(int(rng.integers(1, 3))):
            out = int(rng.integers(1, 6))
            layers += [nn.Linear(width, out, bias=bool(rng.random() < 0.7)),
                       [nn.ReLU, nn.Tanh, nn.GELU][int(rng.integers(0, 3))]()]
            if rng.random() < 0.3:
                layers.append(nn.LayerNorm(out))
            width = out
        layers.append(nn.Linear(width, int(rng.integers(1, 4))))
        shape = (d,)
    else:
        c, s = int(rng.integers(1, 3)), int(rng.integers(3, 6))
        layers = [nn.Conv2d(c, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                  nn.Linear(3 * s * s, int(rng.integers(1, 3)))]
        shape = (c, s, s)
    model = nn.Sequential(*layers).to(dtype)
    if rng.random() < 0.2:
        next(model.parameters()).requires_grad_(False)      # a frozen tensor: not in the NTK
    return model, shape


def _reference(model, x1, x2, mode):
    params = [p for p in model.parameters() if p.requires_grad]

    def jac(x):
        rows = []
        for i in range(x.shape[0]):
            out = model(x[i:i + 1])[0]
            rows.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                out[o], params, retain_graph=True)]) for o in range(out.shape[0])]))
        return torch.stack(rows)                            # (n, O, P)

    j1, j2 = jac(x1), jac(x2)
    if mode == "full":                                      # (n1, n2, O, O)
        return torch.einsum("aop,bqp->aboq", j1, j2)
    diag = torch.einsum("aop,bop->abo", j1, j2)             # (n1, n2, O)
    return diag.mean(-1) if mode == "trace" else diag


@pytest.mark.parametrize("seed", range(6))
def test_empirical_ntk_raises_clearly_or_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        dtype = [torch.float32, torch.float64][int(rng.integers(0, 2))]
        model, shape = _random_model(rng, dtype)
        n1, n2 = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        x1 = torch.from_numpy(rng.standard_normal((n1, *shape))).to(dtype)
        x2 = torch.from_numpy(rng.standard_normal((n2, *shape))).to(dtype)
        if rng.random() < 0.15:
            x1.view(-1)[0] = float("nan")
        impl = ["auto", "jacobian", "ntvp", "structured"][int(rng.integers(0, 4))]
        mode = ["trace", "diagonal", "full"][int(rng.integers(0, 3))]
        try:
            got = wn.empirical_ntk(model, x1, x2, implementation=impl, mode=mode)
        except Exception as exc:                              # noqa: BLE001 - judged below
            assert isinstance(exc, (ValueError, TypeError, FloatingPointError)), repr(exc)
            assert ERROR.match(str(exc)), f"error does not name the function: {exc}"
            continue
        assert torch.isfinite(x1).all(), "a NaN input was accepted"
        ref = _reference(model, x1, x2, mode)
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        scale = max(float(ref.abs().max()), 1.0)
        # a missing 1/O in trace mode, a transposed full block or a frozen tensor counted
        # would each miss by O(1)
        assert got.shape == ref.shape, (got.shape, ref.shape, impl, mode)
        assert float((got - ref).abs().max()) <= tol * scale, (impl, mode)
