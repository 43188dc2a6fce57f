"""Tile workers do not oversubscribe the machine: in-process tile threads x each tile's block
threads, and a `--scheduler local:N` cluster's workers x torch threads, stay within the cores."""

import os

import pytest
import torch

import widenets as wn
import widenets._parallel as parallel
from widenets.tiles.cli import dask_session, local_cluster_layout


@pytest.fixture
def four_cores(monkeypatch):
    """This process sees 4 cores and torch uses 4 threads (restored afterwards)."""
    old = torch.get_num_threads()
    monkeypatch.setattr(parallel, "usable_cores", lambda: 4)
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("threads, per_tile", [(1, 4), (2, 2), (3, 1), (8, 1)])
def test_tile_threads_share_the_cores_with_the_block_threads(tmp_path, four_cores, threads,
                                                             per_tile):
    seen = []
    net = wn.serial(wn.Dense(8), wn.Relu())

    def kernel_fn(a, b, get):
        seen.append(parallel.block_threads())          # what a layer's kernel would use
        return net.kernel(a, b, get=get)

    x = torch.randn(12, 3, dtype=torch.float64)
    run = wn.tiles.compute(kernel_fn, x, store=tmp_path / "k.zarr", batch_size=4, get="ntk",
                           threads=threads, description="relu net, thread count probe")
    assert run.tiles_computed == 6 and len(seen) == 6
    assert set(seen) == {per_tile}
    # tiles compute their own Gram blocks: equal to the whole kernel to rounding
    torch.testing.assert_close(run.load(), net.kernel(x, get="ntk"), rtol=1e-13, atol=1e-15)


def test_local_cluster_layout_never_oversubscribes(monkeypatch):
    monkeypatch.setattr(parallel, "usable_cores", lambda: 16)
    assert local_cluster_layout(None) == (2, 8)
    assert local_cluster_layout(4) == (4, 4)
    assert local_cluster_layout(3) == (3, 5)
    assert local_cluster_layout(32) == (32, 1)     # asked for: one torch thread each
    monkeypatch.setattr(parallel, "usable_cores", lambda: 1)
    assert local_cluster_layout(None) == (1, 1)


@pytest.mark.parametrize("address", ["local:0", "local:x", "local:-2"])
def test_local_scheduler_needs_a_positive_worker_count(address):
    with pytest.raises(ValueError, match=r"^--scheduler: local:N needs a positive number"):
        with dask_session(address):
            pass


@pytest.mark.slow
def test_local_cluster_workers_get_their_share_of_torch_threads(monkeypatch):
    """The workers are separate processes: the thread count reaches them through the
    environment (Dask's default would be 1 thread each; torch itself then caps it at the
    physical cores)."""
    monkeypatch.setattr(parallel, "usable_cores", lambda: 6)
    with dask_session("local:1") as client:          # one worker process: 6 threads
        env = client.run(lambda: (os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"]))
        threads = client.run(torch.get_num_threads)
    assert list(env.values()) == [("6", "6")]
    assert all(1 < t <= 6 for t in threads.values()) or os.cpu_count() == 1, threads
