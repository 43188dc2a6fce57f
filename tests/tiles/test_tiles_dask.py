"""Dask workers: a LocalCluster gives the in-process result; a worker that dies is replaced."""

import json
import os

import pytest
import torch
from tiles_helpers import dyadic, relu_net

import widenets as wn

distributed = pytest.importorskip("distributed")


def test_local_cluster_two_workers_equals_in_process(tmp_path, net):
    x1, x2 = dyadic(30, seed=31), dyadic(17, seed=32)
    local_sym = wn.tiles.compute(net, x1, store=tmp_path / "a.zarr", batch_size=7).load()
    local_rect = wn.tiles.compute(net, x1, x2, store=tmp_path / "b.zarr", batch_size=(7, 5),
                                  get="ntk").load()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        run = wn.tiles.compute(net, x1, store=tmp_path / "c.zarr", batch_size=7, client=client)
        rect = wn.tiles.compute(net, x1, x2, store=tmp_path / "d.zarr", batch_size=(7, 5),
                                get="ntk", client=client)
        workers = set(client.scheduler_info()["workers"])
        # Rerunning skips everything; a cluster object or an address works like a client.
        again = wn.tiles.compute(net, x1, store=tmp_path / "c.zarr", batch_size=7, client=cluster)
        via_address = wn.tiles.compute(net, x1, x2, store=tmp_path / "e.zarr", batch_size=(7, 5),
                                       get="ntk", client=cluster.scheduler_address)
    assert (run.tiles_computed, again.tiles_computed, again.tiles_skipped) == (15, 0, 15)
    assert rect.tiles_computed == 20
    # Every tile was computed on a worker (its record names it), and both workers took part.
    used = [json.loads(p.read_text())["worker"] for p in (tmp_path / "c.zarr" / "done").iterdir()]
    assert set(used) == workers and len(workers) == 2
    for got, ref in zip(run.load(), local_sym, strict=True):
        assert torch.equal(got, ref)
    assert torch.equal(rect.load(), local_rect)
    assert via_address.tiles_computed == 20 and torch.equal(via_address.load(), local_rect)
    assert torch.equal(local_sym[1], net.kernel(x1, get="ntk"))  # and both equal in-memory


@pytest.mark.slow
def test_worker_death_mid_tile_is_redone(tmp_path):
    # Two worker processes; the first attempt at tile (1, 2) kills its worker process (as an
    # out-of-memory kill would). The nanny restarts it, Dask reruns the tile, the store is whole.
    net = relu_net(2)
    x = dyadic(24, seed=33)
    marker = tmp_path / "died"

    def dying_kernel(a, b, get):
        if b is not None and torch.equal(a, x[8:16]) and torch.equal(b, x[16:24]) \
                and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return net.kernel(a, b, get=get)

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        run = wn.tiles.compute(dying_kernel, x, store=tmp_path / "w.zarr", batch_size=8,
                               client=client, description="relu_net(2) with a dying worker")
    assert marker.exists()  # a worker really died mid-tile
    assert run.tiles_computed == 6
    assert int(marker.read_text()) != os.getpid()  # it was a worker process, not this one
    rec = json.loads((tmp_path / "w.zarr" / "done" / "1-2.json").read_text())
    assert rec["pid"] != int(marker.read_text())  # the tile was redone by a live worker
    for got, ref in zip(run.load(), net.kernel(x, get=("nngp", "ntk")), strict=True):
        assert torch.equal(got, ref)
