"""Pieces several experiments share: fully connected nets by name, full-batch GD in torch."""

from __future__ import annotations

import torch

from .. import layers as L
from .base import ConfigError

__all__ = ["ACTIVATIONS", "fc_net", "train_gd", "log_steps"]

ACTIVATIONS = {"relu": L.Relu, "erf": L.Erf, "gelu": L.Gelu, "identity": L.Identity,
               "abs": L.Abs}


def fc_net(width: int, depth: int, *, activation: str = "relu", w_std: float = 2 ** 0.5,
           b_std: float | None = 0.1, out: int = 1, parameterization: str = "ntk"):
    """`depth` hidden Dense(width) + activation layers and a Dense(out) readout."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                          f"got {activation!r}")
    if depth < 1 or width < 1:
        raise ConfigError(f"depth and width must be >= 1, got depth={depth}, width={width}")
    kw = dict(w_std=w_std, b_std=b_std, parameterization=parameterization)
    layers = []
    for _ in range(depth):
        layers += [L.Dense(width, **kw), ACTIVATIONS[activation]()]
    layers.append(L.Dense(out, **kw))
    return L.serial(*layers)


def log_steps(steps: int, n: int) -> list[int]:
    """About `n` distinct integers from 0 to `steps`, log-spaced (0 and `steps` included)."""
    import numpy as np

    pts = np.unique(np.round(np.logspace(0, np.log10(max(steps, 1)), n)).astype(int))
    return [0] + [int(p) for p in pts if 0 < p <= steps]


def train_gd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, learning_rate: float,
             steps: int, record_at: list[int], x_test: torch.Tensor | None = None,
             center: bool = False, on_step=None) -> dict:
    """Full-batch gradient descent on the loss (1/2n) Σ_i ||f(x_i) - y_i||².

    Args:
        model: a torch module; x: (n, d) float inputs of its dtype; y: (n, k) targets.
        learning_rate: η; the function-space dynamics are df = -(η/n) Θ (f - y) per step.
        steps: number of GD steps; record_at: steps at which outputs are recorded.
        x_test: (m, d) inputs whose outputs are also recorded.
        center: train f(x) - f_0(x) (the initial outputs subtracted), whose linearization has
            the ensemble mean of eq. 14 as its exact prediction.
        on_step: optional callable(step) (progress bars).

    Returns:
        dict with "steps" (recorded steps), "train" (len, n, k) and "test" (len, m, k) outputs,
        "loss" (len,) training losses. Raises FloatingPointError when training diverges.
    """
    with torch.no_grad():
        f0 = model(x).detach() if center else None
        f0_test = model(x_test).detach() if (center and x_test is not None) else None
    opt = torch.optim.SGD(model.parameters(), lr=learning_rate)
    want = set(record_at)
    rec = {"steps": [], "train": [], "test": [], "loss": []}

    def outputs(inputs, base):
        out = model(inputs)
        return out - base if base is not None else out

    for step in range(steps + 1):
        if step in want:
            with torch.no_grad():
                ft = outputs(x, f0)
                rec["steps"].append(step)
                rec["train"].append(ft.detach().clone())
                rec["loss"].append(float(0.5 * ((ft - y) ** 2).sum(1).mean()))
                if x_test is not None:
                    rec["test"].append(outputs(x_test, f0_test).detach().clone())
            if not torch.isfinite(ft).all():
                raise FloatingPointError(f"train_gd: training diverged at step {step} "
                                         f"(learning_rate={learning_rate}); lower it")
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((outputs(x, f0) - y) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step)
    rec["train"] = torch.stack(rec["train"])
    rec["test"] = torch.stack(rec["test"]) if rec["test"] else None
    return rec


def train_ensemble(modules: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                   learning_rate: float, steps: int, record_at: list[int],
                   x_eval: torch.Tensor, on_step=None) -> torch.Tensor:
    """Train independent copies of one architecture at once (torch.func.vmap over their stacked
    parameters) by full-batch GD on (1/2n) Σ ||f(x_i) - y_i||².

    Args:
        modules: E modules of the same architecture (different initializations).
        x: (n, d) training inputs; y: (n, k) targets; x_eval: (m, d) inputs to record.
        learning_rate: η; steps: GD steps; record_at: steps at which outputs are recorded.
        on_step: optional callable(step).

    Returns:
        (len(record_at), E, m, k) outputs on x_eval. Raises FloatingPointError on divergence.
    """
    from torch.func import functional_call, grad, stack_module_state, vmap

    params, buffers = stack_module_state(modules)
    params = {k: v.detach() for k, v in params.items()}
    base = modules[0]

    def f(p, b, inputs):
        return functional_call(base, (p, b), (inputs,))

    def loss(p, b):
        return 0.5 * ((f(p, b, x) - y) ** 2).sum(1).mean()

    grads = vmap(grad(loss), in_dims=(0, 0))
    evaluate = vmap(f, in_dims=(0, 0, None))
    want = set(record_at)
    out = []
    for step in range(steps + 1):
        if step in want:
            with torch.no_grad():
                fe = evaluate(params, buffers, x_eval)
            if not torch.isfinite(fe).all():
                raise FloatingPointError(f"train_ensemble: training diverged at step {step} "
                                         f"(learning_rate={learning_rate}); lower it")
            out.append(fe)
        if step == steps:
            break
        g = grads(params, buffers)
        params = {k: v - learning_rate * g[k] for k, v in params.items()}
        if on_step is not None:
            on_step(step)
    return torch.stack(out)
