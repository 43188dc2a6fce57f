"""Shared fixtures for the predict tests: a small network, data and its kernels (float64)."""

import pytest
import torch

import widenets as wn


@pytest.fixture(autouse=True)
def one_thread():
    """These tests use tiny tensors: intra-op threads only add overhead (and stall badly on a
    busy machine). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def net():
    return wn.serial(wn.Dense(512, w_std=1.5, b_std=0.1), wn.Relu(),
                     wn.Dense(512, w_std=1.5, b_std=0.1), wn.Relu(),
                     wn.Dense(1, w_std=1.5, b_std=0.1))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x_train = torch.randn(12, 4, generator=g, dtype=torch.float64)
    x_test = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y_train = torch.randn(12, 3, generator=g, dtype=torch.float64)
    return x_train, x_test, y_train


@pytest.fixture(scope="module")
def kernels(net, data):
    x_train, x_test, _ = data
    return net.kernel(x_train), net.kernel(x_test, x_train), net.kernel(x_test)
