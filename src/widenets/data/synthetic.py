"""Synthetic tasks, generated from a seed (no files, no downloads)."""

from __future__ import annotations

import torch

from .dataset import Dataset

__all__ = ["sphere", "teacher_regression", "interpolate"]


def sphere(n: int, d: int, *, generator: torch.Generator) -> torch.Tensor:
    """(n, d) points uniform on the sphere of radius sqrt(d) (so <x, x>/d = 1).

    Example:
        >>> x = wn.data.sphere(5, 3, generator=torch.Generator().manual_seed(0))
        >>> x.shape
        torch.Size([5, 3])
    """
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True) * d ** 0.5


def teacher_regression(*, n_train: int = 128, n_test: int = 128, d: int = 8,
                       n_outputs: int = 1, noise: float = 0.0, seed: int = 0) -> Dataset:
    """A smooth regression task on the sphere: y = Σ_j a_j sin(<u_j, x>/√d · 2) over 4 random
    directions u_j per output, plus N(0, noise²) label noise on the training targets.

    Args:
        n_train, n_test: numbers of points; d: input dimension; n_outputs: target columns.
        noise: standard deviation of the training label noise.
        seed: seed of inputs, teacher and noise.

    Example:
        >>> data = wn.data.teacher_regression(n_train=16, n_test=8, d=4)
        >>> data.x_train.shape, data.y_train.shape
        (torch.Size([16, 4]), torch.Size([16, 1]))
    """
    for arg, v in (("n_train", n_train), ("n_test", n_test), ("d", d), ("n_outputs", n_outputs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"teacher_regression: {arg} must be a positive int, got {v!r}")
    if not noise >= 0:
        raise ValueError(f"teacher_regression: noise must be >= 0, got {noise!r}")
    g = torch.Generator().manual_seed(seed)
    x = sphere(n_train + n_test, d, generator=g)
    u = torch.randn(n_outputs, 4, d, generator=g, dtype=torch.float64)
    a = torch.randn(n_outputs, 4, generator=g, dtype=torch.float64) / 2.0
    proj = torch.einsum("nd,okd->nok", x, u) / d ** 0.5 * 2.0
    y = (a[None] * torch.sin(proj)).sum(-1)
    y_train = y[:n_train] + noise * torch.randn(n_train, n_outputs, generator=g,
                                                dtype=torch.float64)
    return Dataset(name="teacher", x_train=x[:n_train], y_train=y_train, x_test=x[n_train:],
                   y_test=y[n_train:])


def interpolate(x1: torch.Tensor, x2: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs on the segment x(α) = α x1 + (1 - α) x2 (Lee et al. 2019, Fig. 2).

    Args:
        x1, x2: (d,) end points; n: number of points.

    Returns:
        alphas: (n,) in [-0.25, 1.25] (a little past both ends); x: (n, d).

    Example:
        >>> alphas, x = wn.data.interpolate(torch.zeros(3), torch.ones(3), 5)
        >>> alphas.shape, x.shape
        (torch.Size([5]), torch.Size([5, 3]))
    """
    alphas = torch.linspace(-0.25, 1.25, n, dtype=torch.float64)
    return alphas, alphas[:, None] * x1[None] + (1 - alphas[:, None]) * x2[None]
