"""A user's own data from a file: .npz (arrays x and y, optionally x_test and y_test), .npy or
.csv (one example per row, the last column the target)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from .dataset import Dataset, normalize_rows, one_hot_targets

__all__ = ["load_file", "read_csv"]

_HEADERS = ("auto", True, False)


def _number(field: str) -> float | None:
    """float(field), or None when the field is not a number."""
    try:
        return float(field)
    except ValueError:
        return None


def read_csv(path, *, header="auto", func: str = "read_csv") -> np.ndarray:
    """A numeric table from a comma-separated file, read strictly: every error is an error.

    Blank lines and lines starting with "#" are skipped. Every other line must hold the same
    number of comma-separated numbers ("nan" and "inf" are numbers; the caller decides whether
    it accepts them).

    Args:
        path: the .csv (or .txt) file.
        header: "auto" (default): the first line is a header when none of its fields is a
            number (column names) and is data when all of them are; a first line that mixes
            both is an error. True: the first line is a header (skipped whatever it holds).
            False: every line is data.
        func: the name errors start with (the public function or command reading the file).

    Returns:
        A float64 array (rows, columns).

    Raises:
        ValueError: a field that is not a number, a line with a different number of fields
            than the first data line, or no data line at all; the message names the file, the
            line (1-based) and the column.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
        >>> _ = open(path, "w").write("a,b\\n1,2\\n3,4\\n")
        >>> wn.data.read_csv(path).tolist()
        [[1.0, 2.0], [3.0, 4.0]]
    """
    if header not in _HEADERS or isinstance(header, int) and not isinstance(header, bool):
        raise ValueError(f"{func}: header must be 'auto', True or False, got {header!r}")
    where = os.fspath(path)
    rows, ncol, first_line = [], None, None
    try:
        with open(path, newline="") as f:
            lines = ((n, row) for n, row in enumerate(csv.reader(f), start=1)
                     if row and any(c.strip() for c in row) and not row[0].lstrip()
                     .startswith("#"))
            for n, row in lines:
                values = [_number(c.strip()) for c in row]
                if first_line is None:
                    first_line = n
                    text = [i for i, v in enumerate(values) if v is None]
                    if header is True or (header == "auto" and len(text) == len(values)):
                        continue  # a header line
                    if header == "auto" and text:
                        raise ValueError(
                            f"{func}: {where!r} line {n}: the first line mixes numbers and text "
                            f"(column {text[0] + 1} is {row[text[0]]!r}); fix the line, or pass "
                            f"header=True if it is a header")
                if ncol is None:
                    ncol, data_line = len(values), n
                if len(values) != ncol:
                    raise ValueError(
                        f"{func}: {where!r} line {n}: expected {ncol} comma-separated fields "
                        f"(as on line {data_line}), got {len(values)}")
                for i, v in enumerate(values):
                    if v is None:
                        hint = ("; pass header=True if the first line is a header"
                                if n == first_line else "")
                        raise ValueError(f"{func}: {where!r} line {n}, column {i + 1}: expected "
                                         f"a number, got {row[i]!r}{hint}")
                rows.append(values)
    except UnicodeDecodeError as e:
        raise ValueError(f"{func}: {where!r} is not a text file ({e})") from None
    if not rows:
        raise ValueError(f"{func}: {where!r} holds no data lines (only blank lines, comments "
                         f"or a header)")
    return np.asarray(rows, dtype=np.float64)


def _labels_or_none(y: np.ndarray) -> np.ndarray | None:
    """Integer class labels 0..k-1 if `y` is one column of such values (k <= 100)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        return None
    if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)) or y.min() < 0:
        return None
    k = int(y.max()) + 1
    return y.astype(np.int64) if k <= 100 else None


def load_file(path, *, test_fraction: float = 0.25, seed: int = 0,
              normalize: bool = True, header="auto") -> Dataset:
    """Load a user's data set and split it.

    Args:
        path: .npz with arrays "x" (n, ...) and "y" (n,) or (n, k), optionally "x_test" and
            "y_test" (then no random split); or .npy / .csv with one example per row whose last
            column is the target.
        test_fraction: fraction held out when the file has no test split.
        seed: seed of the split.
        normalize: center by the training mean and scale inputs to norm sqrt(d).
        header: for .csv files, whether the first line is a header ("auto", True, False; see
            `read_csv`).

    Returns:
        A `Dataset`. A target column of small non-negative integers is read as class labels
        (centered one-hot targets); anything else is regression.

    Raises:
        ValueError: missing file, unknown extension, missing arrays, wrong shapes, NaNs.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> np.savez("data.npz", x=rng.standard_normal((40, 5)), y=rng.standard_normal(40))
        >>> data = wn.data.load_file("data.npz", test_fraction=0.25)
        >>> data.x_train.shape, data.x_test.shape
        (torch.Size([30, 5]), torch.Size([10, 5]))
    """
    path = Path(path)
    fname = "load_file"
    if not path.is_file():
        raise ValueError(f"{fname}: no file at {str(path)!r}")
    suffix = path.suffix.lower()
    x_test = y_test = None
    try:
        if suffix == ".npz":
            with np.load(path) as z:
                if "x" not in z or "y" not in z:
                    raise ValueError(f"{fname}: {path.name} must hold arrays 'x' and 'y', "
                                     f"found {sorted(z.files)}")
                x, y = z["x"], z["y"]
                if "x_test" in z and "y_test" in z:
                    x_test, y_test = z["x_test"], z["y_test"]
        elif suffix in (".npy", ".csv"):
            a = np.load(path, allow_pickle=False) if suffix == ".npy" else \
                read_csv(path, header=header, func=fname)
            if a.ndim != 2 or a.shape[1] < 2:
                raise ValueError(f"{fname}: {path.name} must be a 2-D table with at least two "
                                 f"columns (features..., target), got shape {a.shape}")
            x, y = a[:, :-1], a[:, -1]
        else:
            raise ValueError(f"{fname}: {path.name}: expected a .npz, .npy or .csv file")
    except (OSError, ValueError, EOFError) as e:
        if str(e).startswith(fname):
            raise
        raise ValueError(f"{fname}: cannot read {str(path)!r}: {e or type(e).__name__}") \
            from None
    if len(x) == 0:
        raise ValueError(f"{fname}: {str(path)!r} holds no examples (0 rows)")
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64)
    if len(y) != len(x):
        raise ValueError(f"{fname}: x has {len(x)} rows but y has {len(y)}")
    if x_test is None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"{fname}: test_fraction must be in (0, 1), got {test_fraction!r}")
        perm = np.random.default_rng(seed).permutation(len(x))
        n_test = max(1, int(round(test_fraction * len(x))))
        if n_test >= len(x):
            raise ValueError(f"{fname}: {len(x)} rows are too few to split")
        te, tr = perm[:n_test], perm[n_test:]
        x, x_test, y, y_test = x[tr], x[te], y[tr], y[te]
    x_test = np.asarray(x_test, dtype=np.float64).reshape(len(x_test), -1)
    y_test = np.asarray(y_test, dtype=np.float64)
    for arg, a in (("x", x), ("y", y), ("x_test", x_test), ("y_test", y_test)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{fname}: {arg} contains NaN or infinite values")
    xt, xe = torch.from_numpy(x), torch.from_numpy(x_test)
    if normalize:
        mean = xt.mean(0)
        xt, xe = normalize_rows(xt, mean), normalize_rows(xe, mean)
    lab_tr, lab_te = _labels_or_none(y), _labels_or_none(y_test)
    if lab_tr is not None and lab_te is not None:
        k = int(max(lab_tr.max(), lab_te.max())) + 1
        lt, le = torch.from_numpy(lab_tr), torch.from_numpy(lab_te)
        return Dataset(name=str(path), x_train=xt, y_train=one_hot_targets(lt, k), x_test=xe,
                       y_test=one_hot_targets(le, k), labels_train=lt, labels_test=le)
    y2 = torch.from_numpy(y.reshape(len(y), -1))
    y2t = torch.from_numpy(y_test.reshape(len(y_test), -1))
    return Dataset(name=str(path), x_train=xt, y_train=y2, x_test=xe, y_test=y2t)
