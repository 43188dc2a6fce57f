"""The figure tests run small problems: one thread is as fast on a quiet machine and much faster
on a busy one (no thread oversubscription). The previous setting is restored afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1, user_api="blas"):
        yield
    torch.set_num_threads(before)
