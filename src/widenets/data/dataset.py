"""`Dataset`: a train/test split with regression targets, as float64 tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Dataset", "one_hot_targets", "normalize_rows"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split.

    Attributes:
        name: where it came from ("digits", "teacher", a file path).
        x_train: (n_train, d) inputs; x_test: (n_test, d).
        y_train: (n_train, k) regression targets; y_test: (n_test, k).
        labels_train: (n_train,) int class labels, or None for regression data.
        labels_test: (n_test,) int class labels, or None.

    Example:
        >>> data = wn.data.load_digits(n_train=20, n_test=10, seed=0)
        >>> data.x_train.shape, data.y_train.shape, data.x_test.shape
        (torch.Size([20, 64]), torch.Size([20, 10]), torch.Size([10, 64]))
        >>> isinstance(data, wn.data.Dataset)
        True
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    labels_train: torch.Tensor | None = None
    labels_test: torch.Tensor | None = None

    @property
    def n_classes(self) -> int | None:
        return None if self.labels_train is None else self.y_train.shape[1]

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    def accuracy(self, predictions: torch.Tensor, split: str = "test") -> float:
        """Fraction of argmax(predictions) equal to the labels of `split` ("train"/"test")."""
        labels = self.labels_test if split == "test" else self.labels_train
        if labels is None:
            raise ValueError(f"Dataset.accuracy: {self.name!r} has no class labels (regression "
                             f"data)")
        return float((predictions.argmax(-1) == labels).double().mean())


def one_hot_targets(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Centered one-hot targets, 1 - 1/k on the true class and -1/k elsewhere (mean zero per
    row; for k = 10 the 0.9 / -0.1 targets of Lee et al. 2019).

    Example:
        >>> wn.data.one_hot_targets(torch.tensor([0, 2]), 3).shape
        torch.Size([2, 3])
    """
    y = torch.full((labels.shape[0], n_classes), -1.0 / n_classes, dtype=torch.float64)
    y[torch.arange(labels.shape[0]), labels] += 1.0
    return y


def normalize_rows(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Center features by `mean`, then scale each input to norm sqrt(d) (so <x, x>/d = 1 and
    the kernel's diagonal is the same for every input)."""
    x = x - mean
    norms = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x / norms * x.shape[1] ** 0.5
