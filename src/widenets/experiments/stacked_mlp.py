"""Full-batch gradient descent of several fully connected nets of one architecture at once.

`fc_net(...).module(...)` builds Dense / elementwise-activation stacks. `StackedMLP` takes E such
modules (e.g. E initialization seeds), stacks their weights on a leading axis and runs each GD
step on the loss (1/2n) Σ_i ||f(x_i) - y_i||² of every member as a few batched matrix products,
with the backward pass written out (no autograd graph, no per-member Python loop):

    z_l = w_l · h_{l-1} W_lᵀ + b_l β_l,   h_l = φ(z_l),   g_L = (f - y) / n,
    ∂L/∂W_l = w_l · g_lᵀ h_{l-1},   ∂L/∂b_l = β_l Σ_i g_l,
    g_{l-1} = (w_l · g_l W_l) ⊙ φ'(z_{l-1}),

where w_l, β_l are the layer's weight and bias multipliers (docs/math.md §parameterization).
φ' is written out for the activations `fc_net` names (ReLU, erf, GELU, identity, |·|: autograd's
conventions at the kinks, φ'(0) = 0 for ReLU and |·|) once the activation's values on a probe
match the closed form; any other elementwise activation gets φ' by forward-mode autograd of its
own torch function (correct, a few times slower on small nets). Where the time goes on a CPU
(measured for lee-fig1, 128 points): at width ≥ 256 the six width x width products per step
(two forward, two weight gradients, two input gradients) take all of it; at width ≤ 64 torch's
per-operation overhead does, which the stacking divides by E.
"""

from __future__ import annotations

import math

import torch
from torch.func import jvp

from ..layers.activations import ActivationModule
from ..layers.dense import DenseModule

__all__ = ["StackedMLP"]


class StackedMLP:
    """E fully connected nets of one architecture, their parameters stacked, trained together.

    Args:
        modules: a non-empty list of modules built by `fc_net(...).module(...)` with the same
            widths, multipliers and activations (e.g. one per seed); their parameters are
            copied (the modules are left unchanged until `write_back`).

    Example:
        >>> from widenets.experiments.common import fc_net
        >>> from widenets.experiments.stacked_mlp import StackedMLP
        >>> nets = [fc_net(8, 2, out=1).module((3,), seed=s, dtype=torch.float64)
        ...         for s in (0, 1)]
        >>> x = torch.randn(5, 3, dtype=torch.float64); y = torch.zeros(5, 1, dtype=torch.float64)
        >>> stack = StackedMLP(nets)
        >>> losses = [float(stack.step(x, y, learning_rate=0.1)[0]) for _ in range(3)]
        >>> losses[2] < losses[0], stack.forward(x).shape
        (True, torch.Size([2, 5, 1]))
    """

    def __init__(self, modules):
        modules = list(modules)
        if not modules:
            raise ValueError("StackedMLP: modules must be a non-empty list of fc_net modules")
        plans = [_plan(m) for m in modules]
        if any(p != plans[0] for p in plans[1:]):
            raise ValueError("StackedMLP: the modules differ in architecture "
                             "(widths, multipliers or activations)")
        # ("dense", w_scale, b_scale) or ("act", name, None) per layer
        self.plan = tuple(step[:3] for step in plans[0])
        dense = [[c for c in m.children() if isinstance(c, DenseModule)] for m in modules]
        self.weights = [torch.stack([d[i].weight.detach() for d in dense]).clone()
                        for i in range(len(dense[0]))]
        self.biases = [None if dense[0][i].bias is None else
                       torch.stack([d[i].bias.detach() for d in dense]).clone()
                       for i in range(len(dense[0]))]
        self.acts = [c for c in modules[0].children() if isinstance(c, ActivationModule)]
        self.slopes = [_closed_form_slope(c) for c in self.acts]

    @property
    def members(self) -> int:
        """E, the number of stacked nets."""
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor, *, keep: bool = False):
        """(E, n, k) outputs on x (n, d); with keep=True also the dense layers' inputs and the
        activations' derivatives (the backward pass needs them)."""
        h, inputs, slopes, li, ai = x.expand(self.members, *x.shape), [], [], 0, 0
        for kind, w_scale, b_scale in self.plan:
            if kind == "dense":
                inputs.append(h)
                w, b = self.weights[li], self.biases[li]
                if b is None:
                    h = torch.bmm(h, w.mT)
                    h = h * w_scale if w_scale != 1.0 else h
                else:       # b β + w (h Wᵀ) in one product
                    h = torch.baddbmm((b * b_scale)[:, None, :], h, w.mT, alpha=w_scale)
                li += 1
            else:
                slope = self.slopes[ai]
                if keep and slope is None:
                    h, d = jvp(self.acts[ai], (h,), (torch.ones_like(h),))
                    slopes.append(d)
                else:
                    if keep:
                        slopes.append(slope(h))
                    h = self.acts[ai](h)
                ai += 1
        return (h, inputs, slopes) if keep else h

    def gradients(self, x: torch.Tensor, y: torch.Tensor):
        """Per-member loss (1/2n) Σ_i ||f(x_i) - y_i||² (E,) and its gradients: lists of (E, out,
        in) weight and (E, out) bias gradients (None without bias), layer by layer."""
        return self._backward(x, y, None)

    def step(self, x: torch.Tensor, y: torch.Tensor, *, learning_rate: float) -> torch.Tensor:
        """One GD step of every member (in place); returns the losses (E,) before the step."""
        return self._backward(x, y, learning_rate)[0]

    def _backward(self, x, y, learning_rate):
        # learning_rate None: return the gradients; else apply the step layer by layer, each
        # weight updated (fused into its gradient product) once its input gradient is taken
        f, inputs, slopes = self.forward(x, keep=True)
        r = f - y
        loss = 0.5 * (r * r).sum(-1).mean(-1)
        g = r / x.shape[0]
        dws, dbs = [None] * len(self.weights), [None] * len(self.weights)
        li, ai = len(self.weights) - 1, len(slopes) - 1
        for kind, w_scale, b_scale in reversed(self.plan):
            if kind == "act":
                if slopes[ai] is not None:           # None: φ' = 1 (identity)
                    g = g * slopes[ai]
                ai -= 1
                continue
            w, b = self.weights[li], self.biases[li]
            g_in = torch.bmm(g, w) if li > 0 else None       # with W before its update
            if learning_rate is None:
                dws[li] = torch.bmm(g.mT, inputs[li]) * w_scale
                if b is not None:
                    dbs[li] = g.sum(1) * b_scale
            else:
                w.baddbmm_(g.mT, inputs[li], alpha=-learning_rate * w_scale)
                if b is not None:
                    b.sub_(g.sum(1), alpha=learning_rate * b_scale)
            if g_in is not None:
                g = g_in * w_scale if w_scale != 1.0 else g_in
            li -= 1
        return loss, dws, dbs

    def parameters(self, member: int) -> dict:
        """{name: tensor} of one member, named as in its module (views, not copies)."""
        out, li = {}, 0
        for idx, (kind, _, _) in enumerate(self.plan):
            if kind == "dense":
                out[f"{idx}.weight"] = self.weights[li][member]
                if self.biases[li] is not None:
                    out[f"{idx}.bias"] = self.biases[li][member]
                li += 1
        return out

    def select(self, members) -> None:
        """Keep only the listed members (indices), in that order."""
        idx = torch.as_tensor(list(members), dtype=torch.long)
        self.weights = [w[idx] for w in self.weights]
        self.biases = [None if b is None else b[idx] for b in self.biases]

    def write_back(self, modules, members=None) -> None:
        """Copy the stacked parameters of `members` (default all) into `modules` (as many)."""
        members = range(self.members) if members is None else members
        for module, e in zip(modules, members, strict=True):
            params = self.parameters(e)
            with torch.no_grad():
                for name, p in module.named_parameters():
                    p.copy_(params[name])


_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# name: (the activation, its derivative given the pre-activation z; None means 1)
_CLOSED_FORMS = {
    "Relu": (torch.relu, lambda z: (z > 0).to(z.dtype)),
    "Abs": (torch.abs, torch.sign),
    "Identity": (lambda z: z, lambda z: None),
    "Erf": (torch.erf, lambda z: (2.0 / math.sqrt(math.pi)) * torch.exp(-z * z)),
    "Gelu": (torch.nn.functional.gelu,
             lambda z: 0.5 * (1.0 + torch.erf(z / _SQRT_2)) + z * _INV_SQRT_2PI
             * torch.exp(-0.5 * z * z)),
}


def _closed_form_slope(act):
    """φ' for an activation of `_CLOSED_FORMS` whose values on a probe are the closed form's;
    None otherwise (forward-mode autograd then)."""
    if act.layer_name not in _CLOSED_FORMS:
        return None
    fn, slope = _CLOSED_FORMS[act.layer_name]
    probe = torch.linspace(-3.0, 3.0, 25, dtype=torch.float64)
    return slope if torch.equal(act(probe), fn(probe)) else None


def _plan(module) -> tuple:
    children = list(module.children())
    if not children or not isinstance(children[-1], DenseModule):
        raise ValueError("StackedMLP: expected an fc_net module (Dense and activation layers "
                         f"ending in Dense), got {type(module).__name__}")
    plan = []
    for c in children:
        if isinstance(c, DenseModule):
            plan.append(("dense", c.w_scale, c.b_scale, c.weight.shape, c.bias is None))
        elif isinstance(c, ActivationModule):
            # the activation's values on a probe tell apart hyperparameters of one name
            probe = c(torch.linspace(-3.0, 3.0, 13, dtype=torch.float64))
            plan.append(("act", c.layer_name, None, tuple(probe.tolist()), None))
        else:
            raise ValueError("StackedMLP: expected only Dense and activation layers, got "
                             f"{type(c).__name__}")
    return tuple(plan)
