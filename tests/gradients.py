"""One check shared by the hyperparameter-gradient tests: autograd against central differences."""

import torch


def assert_grad_matches_central_differences(f, start: torch.Tensor, *, h: float = 1e-6,
                                            rtol: float = 1e-6, atol: float = 1e-9):
    """∇f(start) by autograd equals (f(start + h e_i) − f(start − h e_i)) / 2h for every unit
    vector e_i, within rtol/atol; returns the autograd gradient for further assertions."""
    v = start.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(v), v)
    fd = torch.stack([(f(start + h * e) - f(start - h * e)) / (2 * h)
                      for e in torch.eye(len(start), dtype=start.dtype)])
    torch.testing.assert_close(g, fd, rtol=rtol, atol=atol)
    return g
