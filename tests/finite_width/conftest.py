import pytest
import torch

import widenets as wn


def tanh_net(width: int, depth: int = 1, b_std: float = 0.1):
    """A depth-hidden-layer tanh MLP in NTK parameterization with a scalar output."""
    layers = []
    for _ in range(depth):
        layers += [wn.Dense(width, w_std=1.5, b_std=b_std), wn.Elementwise(torch.tanh)]
    layers.append(wn.Dense(1, w_std=1.5, b_std=b_std))
    return wn.serial(*layers)


def per_sample_grads(model, x):
    """(n, P) Jacobian by a plain loop of torch.autograd.grad (independent of torch.func)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i:i + 1]).sum()
        gs = torch.autograd.grad(out, params)
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


@pytest.fixture
def data16():
    """16 inputs on the sphere of radius sqrt(4) in 4 dimensions, smooth targets."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * 2.0
    return x, torch.sin(x.sum(1))
