"""scikit-learn's handwritten digits (1797 images of 8x8 pixels, 10 classes), shipped inside
scikit-learn: no download."""

from __future__ import annotations

import torch

from .dataset import Dataset, normalize_rows, one_hot_targets

__all__ = ["load_digits"]

N_DIGITS = 1797


def _check_count(value, *, arg: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"load_digits: {arg} must be an int in [{low}, {high}], got {value!r}")
    return value


def load_digits(*, n_train: int = 1000, n_test: int = 500, classes: int = 10,
                seed: int = 0) -> Dataset:
    """A stratified random train/test split of scikit-learn's digits.

    Inputs are centered by the training mean and scaled to norm sqrt(64) each (so the input
    kernel <x, x'>/d has unit diagonal); targets are centered one-hot (0.9 / -0.1 for 10 classes).

    Args:
        n_train: number of training images.
        n_test: number of test images; n_train + n_test <= the number of images of the chosen
            classes (1797 for all ten).
        classes: use the digits 0 .. classes-1 (2 to 10).
        seed: seed of the random split.

    Returns:
        A `Dataset` of float64 tensors: x (n, 64), y (n, classes), labels (n,).

    Example:
        >>> data = wn.data.load_digits(n_train=20, n_test=10, seed=0)
        >>> data.x_train.shape, data.y_train.shape, data.x_test.shape
        (torch.Size([20, 64]), torch.Size([20, 10]), torch.Size([10, 64]))
    """
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    classes = _check_count(classes, arg="classes", low=2, high=10)
    bunch = sk_load()
    keep = bunch.target < classes
    x_all, lab_all = bunch.data[keep], bunch.target[keep]
    total = len(lab_all)
    n_train = _check_count(n_train, arg="n_train", low=classes, high=total - classes)
    n_test = _check_count(n_test, arg="n_test", low=classes, high=total - n_train)
    x_tr, x_te, l_tr, l_te = train_test_split(x_all, lab_all, train_size=n_train,
                                              test_size=n_test, stratify=lab_all,
                                              random_state=seed)
    x_tr = torch.tensor(x_tr, dtype=torch.float64)
    x_te = torch.tensor(x_te, dtype=torch.float64)
    mean = x_tr.mean(0)
    l_tr = torch.tensor(l_tr, dtype=torch.long)
    l_te = torch.tensor(l_te, dtype=torch.long)
    return Dataset(name="digits", x_train=normalize_rows(x_tr, mean),
                   y_train=one_hot_targets(l_tr, classes), x_test=normalize_rows(x_te, mean),
                   y_test=one_hot_targets(l_te, classes), labels_train=l_tr, labels_test=l_te)
