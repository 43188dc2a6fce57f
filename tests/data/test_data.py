"""Data loaders: digits split and preprocessing, user files, synthetic tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from widenets.data import interpolate, load_digits, load_file, teacher_regression


def test_digits_split_and_preprocessing():
    ds = load_digits(n_train=200, n_test=100, seed=3)
    assert ds.x_train.shape == (200, 64) and ds.x_test.shape == (100, 64)
    assert torch.allclose(ds.x_train.norm(dim=1), torch.full((200,), 8.0, dtype=torch.float64))
    # centered one-hot: 0.9 on the label, -0.1 elsewhere, rows sum to 0
    assert torch.allclose(ds.y_train.sum(1), torch.zeros(200, dtype=torch.float64), atol=1e-12)
    assert torch.equal(ds.y_train.argmax(1), ds.labels_train)
    # stratified: every class present in both splits with about its share
    assert torch.bincount(ds.labels_test, minlength=10).min() >= 8
    assert ds.accuracy(ds.y_test) == 1.0
    two = load_digits(n_train=50, n_test=50, classes=2)
    assert two.y_train.shape == (50, 2) and set(two.labels_train.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="load_digits: n_test"):
        load_digits(n_train=1700, n_test=500)


def test_load_file_formats(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    labels = rng.integers(0, 3, size=40)
    np.savez(tmp_path / "d.npz", x=x, y=labels)
    ds = load_file(tmp_path / "d.npz", test_fraction=0.25, seed=1)
    assert ds.x_train.shape == (30, 3) and ds.x_test.shape == (10, 3)
    assert ds.n_classes == 3 and torch.equal(ds.y_train.argmax(1), ds.labels_train)
    yreg = x @ np.array([1.0, -2.0, 0.5]) + 0.1
    np.savetxt(tmp_path / "d.csv", np.column_stack([x, yreg]), delimiter=",")
    reg = load_file(tmp_path / "d.csv", normalize=False, seed=2)
    assert reg.labels_train is None and reg.y_train.shape == (30, 1)
    # the split is a permutation of the rows: every target is found again
    allx = torch.cat([reg.x_train, reg.x_test]).numpy()
    ally = torch.cat([reg.y_train, reg.y_test])[:, 0].numpy()
    np.testing.assert_allclose(np.sort(allx @ np.array([1.0, -2.0, 0.5]) + 0.1), np.sort(ally))
    np.savez(tmp_path / "split.npz", x=x[:30], y=yreg[:30], x_test=x[30:], y_test=yreg[30:])
    sp = load_file(tmp_path / "split.npz", normalize=False)
    np.testing.assert_allclose(sp.x_test.numpy(), x[30:])


def test_load_file_errors(tmp_path):
    with pytest.raises(ValueError, match="load_file: no file"):
        load_file(tmp_path / "missing.npz")
    (tmp_path / "a.txt").write_text("1,2")
    with pytest.raises(ValueError, match="expected a .npz, .npy or .csv"):
        load_file(tmp_path / "a.txt")
    np.savez(tmp_path / "bad.npz", inputs=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="must hold arrays 'x' and 'y'"):
        load_file(tmp_path / "bad.npz")
    np.savez(tmp_path / "nan.npz", x=np.full((4, 2), np.nan), y=np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        load_file(tmp_path / "nan.npz")


def test_synthetic_tasks():
    ds = teacher_regression(n_train=20, n_test=5, d=6, noise=0.0, seed=1)
    assert torch.allclose(ds.x_train.norm(dim=1), torch.full((20,), 6 ** 0.5,
                                                              dtype=torch.float64))
    again = teacher_regression(n_train=20, n_test=5, d=6, noise=0.0, seed=1)
    assert torch.equal(ds.y_train, again.y_train)
    a, xl = interpolate(ds.x_train[0], ds.x_train[1], 7)   # α = -0.25, 0, ..., 1.25
    assert torch.allclose(xl[a == 1.0][0], ds.x_train[0])
    assert torch.allclose(xl[a == 0.0][0], ds.x_train[1])
