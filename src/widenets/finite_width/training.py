"""Full-batch training with a record: loss, outputs, empirical NTK (and NNGP), weights over time.

Time convention (shared with `truncated_nth`): gradient descent θ_{k+1} = θ_k - η ∇θ L(θ_k)
reports step k at time t = k; gradient flow dθ/dt = -η ∇θ L is integrated with classical RK4
and reports flow time t, so GD at step k approximates the flow at t = k (error O(η)).
Loss conventions (`convention`): "mean", L = (1/2n) Σ_i ||f(x_i) - y_i||² (seed 000) or
"sum", L = (1/2) Σ_i ||f(x_i) - y_i||² (seed 002).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad

from .._checks import check_int, check_positive
from . import _core
from ._core import check_convention, check_model, check_x

__all__ = ["train", "TrainRecord", "RECORDABLE"]

#: What `train` can record.
RECORDABLE = ("loss", "outputs", "ntk", "nngp", "weights")


@dataclass
class TrainRecord:
    """What `train` recorded, as tensors (T record times, n train, m test points, O outputs).

    Fields:
        times: (T,) times (GD steps, or flow time).
        loss: (T,) training loss (with the convention and loss_scale used), or None.
        outputs: (T, n, O) train outputs; test_outputs: (T, m, O) or None.
        ntk: (T, n, n) empirical NTK on train; ntk_test: (T, m, n) test-train; or None.
        nngp: (T, n, n) empirical NNGP: the kernel φ φᵀ / width of the inputs φ of the last
            parameterized layer (the readout features), or None.
        weight_norms: {name: (T,)} ||W_t||_F per trainable parameter tensor.
        weight_changes: {name: (T,)} ||W_t - W_0||_F per trainable parameter tensor.
        learning_rate, method, convention, loss_scale: as used.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1)).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> rec = wn.finite_width.train(model, x, y, learning_rate=0.5, steps=4, record_every=2)
        >>> rec.times.tolist(), rec.ntk.shape
        ([0.0, 2.0, 4.0], torch.Size([3, 4, 4]))
        >>> isinstance(rec, wn.finite_width.TrainRecord)
        True
    """

    times: torch.Tensor
    loss: torch.Tensor | None = None
    outputs: torch.Tensor | None = None
    test_outputs: torch.Tensor | None = None
    ntk: torch.Tensor | None = None
    ntk_test: torch.Tensor | None = None
    nngp: torch.Tensor | None = None
    weight_norms: dict = field(default_factory=dict)
    weight_changes: dict = field(default_factory=dict)
    learning_rate: float = 1.0
    method: str = "gd"
    convention: str = "mean"
    loss_scale: float = 1.0


def _last_param_module(model: nn.Module) -> nn.Module | None:
    last = None
    for mod in model.modules():
        if any(p.requires_grad for p in mod.parameters(recurse=False)):
            last = mod
    return last


class _Recorder:
    def __init__(self, model, x, y, x_test, record, convention, scale):
        self.model, self.x, self.y, self.x_test = model, x, y, x_test
        self.record, self.convention, self.scale = record, convention, scale
        self.p0 = {k: v.clone() for k, v in _core.params_of(model).items()}
        self.rows: dict[str, list] = {k: [] for k in ("t", "loss", "out", "tout", "ntk", "ntkt",
                                                      "nngp")}
        self.wn = {k: [] for k in self.p0}
        self.wc = {k: [] for k in self.p0}
        self._feat = None
        self._hook = None
        if "nngp" in record:
            last = _last_param_module(model)
            self._hook = last.register_forward_pre_hook(self._grab)

    def _grab(self, _mod, args):
        self._feat = args[0]

    def close(self):
        if self._hook is not None:
            self._hook.remove()

    def __call__(self, t: float) -> None:
        m, rec = self.model, self.record
        self.rows["t"].append(t)
        with torch.no_grad():
            out = m(self.x).reshape(self.x.shape[0], -1)
            feat = self._feat
            if "loss" in rec:
                self.rows["loss"].append(_loss(out, self.y, self.convention) * self.scale)
            if "outputs" in rec:
                self.rows["out"].append(out.clone())
                if self.x_test is not None:
                    self.rows["tout"].append(m(self.x_test).reshape(self.x_test.shape[0], -1))
        if "nngp" in rec:
            phi = feat.reshape(feat.shape[0], -1)
            self.rows["nngp"].append(phi @ phi.T / phi.shape[1])
        if "ntk" in rec:
            self.rows["ntk"].append(_core.ntk(m, self.x).detach())
            if self.x_test is not None:
                self.rows["ntkt"].append(_core.ntk(m, self.x_test, self.x).detach())
        if "weights" in rec:
            for k, v in _core.params_of(m).items():
                self.wn[k].append(v.norm())
                self.wc[k].append((v - self.p0[k]).norm())

    def result(self, **meta) -> TrainRecord:
        def st(key):
            return torch.stack(self.rows[key]) if self.rows[key] else None

        return TrainRecord(
            times=torch.tensor(self.rows["t"], dtype=torch.float64),
            loss=st("loss"), outputs=st("out"), test_outputs=st("tout"), ntk=st("ntk"),
            ntk_test=st("ntkt"), nngp=st("nngp"),
            weight_norms={k: torch.stack(v) for k, v in self.wn.items()} if self.wn and
            "weights" in self.record else {},
            weight_changes={k: torch.stack(v) for k, v in self.wc.items()} if self.wc and
            "weights" in self.record else {}, **meta)


def _loss(out: torch.Tensor, y: torch.Tensor, convention: str) -> torch.Tensor:
    sq = 0.5 * ((out - y) ** 2).sum()
    return sq / out.shape[0] if convention == "mean" else sq


def train(model: nn.Module, x, y, *, learning_rate: float, steps: int | None = None,
          time: float | None = None, loss: str = "mse", method: str = "gd",
          record_every: float = 1, record=("loss", "outputs", "ntk", "weights"), x_test=None,
          convention: str = "mean", dt: float = 0.05,
          loss_scale: float | None = None) -> TrainRecord:
    """Train `model` IN PLACE on (x, y) by full-batch GD or gradient flow, recording over time.

    Args:
        model: any torch module (its trainable parameters are updated in place).
        x: (n, *in_shape) training inputs; y: (n, O) or (n,) targets.
        learning_rate: η.
        steps: number of GD steps (method="gd").
        time: flow time to integrate to (method="flow"); `steps` is also accepted for it.
        loss: "mse" (the only loss of the hierarchy; see `convention`).
        method: "gd" (θ ← θ - η ∇L) or "flow" (dθ/dt = -η ∇L, RK4 with step dt).
        record_every: record every this many steps (gd; an int) or time units (flow). Time 0
            and the final time are always recorded.
        record: a subset of ("loss", "outputs", "ntk", "nngp", "weights").
        x_test: (m, *in_shape) test inputs; adds test outputs and the test-train NTK.
        convention: "mean" (L = (1/2n) Σ ||r||², seed 000) or "sum" (L = (1/2) Σ ||r||²).
        dt: RK4 step in time units for method="flow" (shrunk so it divides record_every).
        loss_scale: multiplies the loss; None means 1/alpha² for a `scaled` model (Chizat &
            Bach's lazy training) and 1 otherwise.

    Returns:
        A `TrainRecord`.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1)).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> rec = wn.finite_width.train(model, x, y, learning_rate=0.5, steps=4, record_every=2)
        >>> rec.times.tolist(), rec.ntk.shape
        ([0.0, 2.0, 4.0], torch.Size([3, 4, 4]))
    """
    func = "train"
    check_model(model, func)
    if loss != "mse":
        raise ValueError(f"{func}: loss must be 'mse', got {loss!r}")
    if method not in ("gd", "flow"):
        raise ValueError(f"{func}: method must be 'gd' or 'flow', got {method!r}")
    check_convention(convention, func)
    eta = check_positive(learning_rate, func=func, arg="learning_rate")
    rec = (record,) if isinstance(record, str) else tuple(record)
    bad = [r for r in rec if r not in RECORDABLE]
    if bad:
        raise ValueError(f"{func}: record entries must be among {RECORDABLE}, got {bad}")
    x = check_x(x, func, "x", model)
    xt = None if x_test is None else check_x(x_test, func, "x_test", model)
    with torch.no_grad():
        n_out = model(x[:1]).numel()
    y = _core.check_y(y, func, x.shape[0], n_out, x.dtype)
    scale = loss_scale
    if scale is None:
        scale = 1.0 / float(model.alpha) ** 2 if hasattr(model, "alpha") and \
            isinstance(model, ScaledModelBase) else 1.0
    scale = check_positive(scale, func=func, arg="loss_scale")
    if method == "gd":
        total = steps
        if total is None or time is not None:
            raise ValueError(f"{func}: method='gd' needs steps=<int> (and no time)")
        total = check_int(total, func=func, arg="steps", minimum=0)
        every = check_int(record_every, func=func, arg="record_every")
    else:
        total = time if time is not None else steps
        if total is None:
            raise ValueError(f"{func}: method='flow' needs time=<float>")
        total = check_positive(total, func=func, arg="time", allow_zero=True)
        every = check_positive(record_every, func=func, arg="record_every")
        dt = check_positive(dt, func=func, arg="dt")

    params = _core.params_of(model)
    names = list(params)

    def loss_fn(p):
        out = functional_call(model, p, (x,)).reshape(x.shape[0], -1)
        return _loss(out, y, convention) * scale

    gfn = grad(loss_fn)

    def velocity(p):
        g = gfn(p)
        return {k: -eta * g[k] for k in names}

    recorder = _Recorder(model, x, y, xt, rec, convention, scale)
    try:
        recorder(0.0)
        state = {k: v.clone() for k, v in params.items()}
        diverged = _Divergence(func, eta, method, convention, scale, x.shape[0], dt, recorder)
        if method == "gd":
            for k in range(1, total + 1):
                v = velocity(state)
                state = {kk: state[kk] + v[kk] for kk in names}
                diverged.check_state(state, k)     # every step: report the first bad one
                if k % every == 0 or k == total:
                    _core.load_params(model, state)
                    diverged.record(float(k))
        else:
            marks = [every * i for i in range(1, int(math.floor(total / every + 1e-9)) + 1)]
            if not marks or marks[-1] < total - 1e-12:
                marks.append(total)
            t = 0.0
            for mark in marks:
                n_sub = max(1, math.ceil((mark - t) / dt - 1e-9))
                h = (mark - t) / n_sub
                for _ in range(n_sub):
                    state = _rk4(velocity, state, h, names)
                t = mark
                diverged.check_state(state, t)
                _core.load_params(model, state)
                diverged.record(float(t))
        _core.load_params(model, state)
    finally:
        recorder.close()
    return recorder.result(learning_rate=eta, method=method, convention=convention,
                           loss_scale=scale)


def _rk4(velocity, s, h, names):
    k1 = velocity(s)
    k2 = velocity({k: s[k] + 0.5 * h * k1[k] for k in names})
    k3 = velocity({k: s[k] + 0.5 * h * k2[k] for k in names})
    k4 = velocity({k: s[k] + h * k3[k] for k in names})
    return {k: s[k] + h / 6 * (k1[k] + 2 * k2[k] + 2 * k3[k] + k4[k]) for k in names}


class _Divergence:
    """Turns a non-finite parameter or recording into one error: the training diverged, at
    which step, and the critical learning rate of the linearized dynamics when the NTK at
    step 0 was recorded (GD on f ← f - η s Θ (f - y) / N is stable iff η < 2 N / (s λ_max(Θ)),
    N = n for convention "mean", 1 for "sum", s the loss scale)."""

    def __init__(self, func, eta, method, convention, scale, n, dt, recorder):
        self.func, self.eta, self.method = func, eta, method
        self.norm = n if convention == "mean" else 1
        self.scale, self.dt, self.recorder = scale, dt, recorder

    def critical_rate(self) -> float | None:
        ntk = self.recorder.rows.get("ntk")
        if not ntk:
            return None
        k0 = ntk[0]
        side = int(round(k0.numel() ** 0.5))
        lam = float(torch.linalg.eigvalsh(k0.reshape(side, side).double())[-1])
        return 2.0 * self.norm / (self.scale * lam) if lam > 0 else None

    def error(self, t, what: str) -> FloatingPointError:
        unit = "step" if self.method == "gd" else "time"
        rate = self.critical_rate()
        if rate is not None:
            hint = (f"gradient descent is unstable above the critical learning rate "
                    f"2 N / (s λ_max(Θ_0)) = {rate:.4g} (from the NTK recorded at step 0)")
        else:
            hint = ("gradient descent is unstable above 2 N / (s λ_max(Θ_0)) of the NTK at "
                    "initialization (record='ntk' to have it computed, or "
                    "wn.predict.max_learning_rate on the empirical NTK)")
        if self.method == "flow":
            hint += f"; for method='flow' also lower dt (now {self.dt})"
        return FloatingPointError(f"{self.func}: training diverged at {unit} {t:g} ({what}) "
                                  f"with learning_rate={self.eta:g}: {hint}; lower "
                                  f"learning_rate")

    def check_state(self, state, t):
        for k, v in state.items():
            if not torch.isfinite(v).all():
                raise self.error(t, f"parameter {k!r} became non-finite")

    def record(self, t):
        try:
            self.recorder(t)
        except FloatingPointError as e:
            raise self.error(t, f"recording failed: {e}") from e
        loss = self.recorder.rows["loss"]
        if loss and not torch.isfinite(loss[-1]).all():
            raise self.error(t, "the loss became non-finite")


class ScaledModelBase(nn.Module):
    """Marker base class of `laziness.scaled` models (lets `train` pick loss_scale = 1/α²)."""
