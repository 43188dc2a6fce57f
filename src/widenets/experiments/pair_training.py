"""A network and its linearization trained side by side by minibatch SGD with momentum, on the
same minibatches (Lee et al. 2019, seed 002, §3 "direct optimization of f_lin", Figs. 4, S3-S5).

Shared by `lee-fig4` (a residual network, MSE), `lee-s3` (cross-entropy) and `lee-s5` (the
width x data-size error table). Both models see the same sequence of minibatches (one shuffled
order per epoch from the run's seed), the same optimizer (torch SGD with heavy-ball momentum β)
and the same loss; the records are taken on fixed evaluation sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..empirical import linearize

__all__ = ["PairRecord", "train_pair", "loss_value"]

LOSSES = ("mse", "xent")


def loss_value(out: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, loss: str):
    """MSE: ½ mean over the batch of ||f - y||² (seed 002's ½ Σ / |B|); xent: mean softmax
    cross-entropy of the logits f against the integer labels."""
    if loss == "mse":
        return 0.5 * ((out - y) ** 2).sum(1).mean()
    return F.cross_entropy(out, labels)


@dataclass
class PairRecord:
    """What `train_pair` recorded (T record steps), per model name ("network", "linearized").

    Fields:
        steps: (T,) SGD steps at which the records were taken.
        outputs: {name: {"train": (T, n_show, k), "test": (T, n_show, k)}} outputs of the
            shown points.
        train_loss, test_loss, train_acc, test_acc: {name: (T,)} on the evaluation sets.
        test_logits_final: {name: (n_eval_test, k)} final outputs on the test evaluation set.
        test_outputs: {name: (T, n_eval_test, k)} test outputs over time (when keep_test).
    """

    steps: list
    outputs: dict
    train_loss: dict
    test_loss: dict
    train_acc: dict
    test_acc: dict
    test_logits_final: dict
    test_outputs: dict | None = None


def train_pair(model: torch.nn.Module, data: dict, *, loss: str, learning_rate: float,
               momentum: float, batch_size: int, steps: int, record_at, seed: int,
               show_train=(), show_test=(), keep_test: bool = False,
               func: str = "train_pair") -> PairRecord:
    """Train `model` (in place) and `wn.linearize(model)` side by side; see the module doc.

    Args:
        model: a deterministic module (BatchNorm in eval mode) at initialization.
        data: dict with x_train, y_train, labels_train, x_test, y_test, labels_test.
        loss: "mse" or "xent".
        learning_rate, momentum: torch.optim.SGD's lr and momentum (β).
        batch_size: minibatch size; steps: SGD steps; record_at: sorted steps to record.
        seed: seed of the minibatch order.
        show_train, show_test: indices of the points whose outputs are recorded.
        keep_test: also keep all test outputs at every record step.
        func: the caller's name for error messages.

    Returns:
        A `PairRecord`.

    Example:
        >>> import torch, widenets as wn
        >>> from widenets.experiments.pair_training import train_pair
        >>> ds = wn.data.load_digits(n_train=16, n_test=10)
        >>> data = {"x_train": ds.x_train, "y_train": ds.y_train,
        ...         "labels_train": ds.labels_train, "x_test": ds.x_test,
        ...         "y_test": ds.y_test, "labels_test": ds.labels_test}
        >>> model = wn.serial(wn.Dense(32), wn.Relu(), wn.Dense(10)).module(
        ...     (64,), seed=0, dtype=torch.float64)
        >>> rec = train_pair(model, data, loss="mse", learning_rate=0.5, momentum=0.9,
        ...                  batch_size=8, steps=4, record_at=[0, 4], seed=0)
        >>> rec.train_loss["linearized"].shape
        torch.Size([2])
    """
    if loss not in LOSSES:
        raise ValueError(f"{func}: loss must be one of {LOSSES}, got {loss!r}")
    lin = linearize(model)
    models = {"network": model, "linearized": lin}
    opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad],
                               lr=learning_rate, momentum=momentum)
            for k, m in models.items()}
    x, y, lab = data["x_train"], data["y_train"], data["labels_train"]
    xt, yt, labt = data["x_test"], data["y_test"], data["labels_test"]
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    names = list(models)
    rec = {k: {n_: [] for n_ in names} for k in ("tr_out", "te_out", "trl", "tel", "tra", "tea",
                                                 "te_all")}
    want = sorted(set(int(s) for s in record_at))
    wi = 0
    for step in range(steps + 1):
        while wi < len(want) and want[wi] == step:
            for name, m in models.items():
                with torch.no_grad():
                    out, out_t = m(x), m(xt)
                if not (torch.isfinite(out).all() and torch.isfinite(out_t).all()):
                    raise FloatingPointError(f"{func}: the {name} model diverged by step "
                                             f"{step}; lower learning_rate")
                rec["tr_out"][name].append(out[list(show_train)].clone())
                rec["te_out"][name].append(out_t[list(show_test)].clone())
                rec["trl"][name].append(float(loss_value(out, y, lab, loss)))
                rec["tel"][name].append(float(loss_value(out_t, yt, labt, loss)))
                rec["tra"][name].append(float((out.argmax(1) == lab).double().mean()))
                rec["tea"][name].append(float((out_t.argmax(1) == labt).double().mean()))
                if keep_test or step == steps:
                    rec["te_all"][name].append(out_t.clone())
            wi += 1
        if step == steps:
            break
        if order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=g)])
        idx, order = order[:batch_size], order[batch_size:]
        for name, m in models.items():
            opts[name].zero_grad(set_to_none=True)
            loss_value(m(x[idx]), y[idx], lab[idx], loss).backward()
            opts[name].step()
    t = torch.tensor
    return PairRecord(
        steps=want,
        outputs={nm: {"train": torch.stack(rec["tr_out"][nm]),
                      "test": torch.stack(rec["te_out"][nm])} for nm in names},
        train_loss={nm: t(rec["trl"][nm]) for nm in names},
        test_loss={nm: t(rec["tel"][nm]) for nm in names},
        train_acc={nm: t(rec["tra"][nm]) for nm in names},
        test_acc={nm: t(rec["tea"][nm]) for nm in names},
        test_logits_final={nm: rec["te_all"][nm][-1] for nm in names},
        test_outputs={nm: torch.stack(rec["te_all"][nm]) for nm in names} if keep_test
        else None)
