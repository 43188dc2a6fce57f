"""Bad input and faults: mismatched calls, unreadable stores, disk full, failing tiles."""

import errno
import json

import numpy as np
import pytest
import torch
from tiles_helpers import dyadic, relu_net

import widenets as wn
from widenets.tiles import task


@pytest.fixture
def stored(tmp_path, net):
    x = dyadic(20, seed=21)
    store = tmp_path / "k.zarr"
    wn.tiles.compute(net, x, store=store, batch_size=8, get="ntk")
    return store, x


@pytest.mark.parametrize("change, field", [
    ("net", "net"), ("inputs", "inputs x1"), ("x2", "inputs x2"), ("dtype", "dtype"),
    ("tile", "tile"), ("get", "kernels")])
def test_mismatched_call_is_refused(stored, net, change, field):
    store, x = stored
    kw = dict(store=store, batch_size=8, get="ntk")
    args = [net, x]
    if change == "net":
        args[0] = relu_net(2)
    elif change == "inputs":
        x2 = x.clone()
        x2[3, 4] += 0.25  # one entry differs
        args[1] = x2
    elif change == "x2":
        args.append(x)  # the same values, but rectangular instead of symmetric
    elif change == "dtype":
        kw["dtype"] = torch.float32
    elif change == "tile":
        kw["batch_size"] = 5
    else:
        kw["get"] = ("nngp", "ntk")
    before = sorted(p.name for p in (store / "done").iterdir())
    with pytest.raises(wn.tiles.StoreMismatchError, match=f"{field}.*Refusing to mix"):
        wn.tiles.compute(*args, **kw)
    assert sorted(p.name for p in (store / "done").iterdir()) == before  # nothing touched


def test_nets_differing_only_in_a_function_are_told_apart(tmp_path):
    # Elementwise(fn) shows only fn's name in repr; two lambdas must still differ.
    x = dyadic(6)
    mk = lambda fn: wn.serial(wn.Dense(8), wn.Elementwise(fn, degree=8), wn.Dense(1))  # noqa: E731
    wn.tiles.compute(mk(lambda t: torch.tanh(t)), x, store=tmp_path / "f.zarr", batch_size=4,
                     get="nngp")
    with pytest.raises(wn.tiles.StoreMismatchError, match="net"):
        wn.tiles.compute(mk(lambda t: torch.sin(t)), x, store=tmp_path / "f.zarr", batch_size=4,
                         get="nngp")
    again = wn.tiles.compute(mk(lambda t: torch.tanh(t)), x, store=tmp_path / "f.zarr", batch_size=4,
                             get="nngp")
    assert again.tiles_computed == 0


def test_unreadable_and_foreign_stores(tmp_path, stored, net):
    store, x = stored
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("not a store")
    with pytest.raises(wn.tiles.TileStoreError, match="not a widenets tile store"):
        wn.tiles.compute(net, x, store=tmp_path / "other", batch_size=8)
    with pytest.raises(FileNotFoundError, match="no tile store"):
        wn.tiles.open(tmp_path / "missing.zarr")
    (store / "widenets.json").write_text("{ truncated")
    with pytest.raises(wn.tiles.TileStoreError, match="unreadable"):
        wn.tiles.compute(net, x, store=store, batch_size=8, get="ntk")
    with pytest.raises(wn.tiles.TileStoreError, match="unreadable"):
        wn.tiles.open(store)


def test_a_second_concurrent_run_is_refused(stored, net):
    import fcntl

    store, x = stored
    with open(store / ".lock", "a+") as held:  # another run holds the store
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(wn.tiles.TileStoreError, match="being computed by another run"):
            wn.tiles.compute(net, x, store=store, batch_size=8, get="ntk")
    # Released (as when that run ends or is killed): the call goes through.
    assert wn.tiles.compute(net, x, store=store, batch_size=8, get="ntk").tiles_skipped == 6


def test_empty_directory_becomes_a_store(tmp_path, net):
    (tmp_path / "empty").mkdir()
    x = dyadic(5)
    run = wn.tiles.compute(net, x, store=tmp_path / "empty", batch_size=4, get="nngp")
    assert torch.equal(run.load(), net.kernel(x, get="nngp"))


def test_disk_full_keeps_finished_tiles_and_resumes(tmp_path, net, monkeypatch):
    x = dyadic(20, seed=22)
    store = tmp_path / "d.zarr"
    real = task.write_tile
    calls = []

    def full_disk(root, meta, i, j, blocks, **kw):
        calls.append((i, j))
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(root, meta, i, j, blocks, **kw)

    monkeypatch.setattr(task, "write_tile", full_disk)
    with pytest.raises(OSError, match="disk full.*3 of 6 tiles are finished and kept") as e:
        wn.tiles.compute(net, x, store=store, batch_size=8)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(task, "write_tile", real)
    assert wn.tiles.status(store)["tiles_done"] == 3
    run = wn.tiles.compute(net, x, store=store, batch_size=8)
    assert run.tiles_computed == 3
    for got, ref in zip(run.load(), net.kernel(x, get=("nngp", "ntk")), strict=True):
        assert torch.equal(got, ref)


def test_space_check_refuses_before_computing(tmp_path, net, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(OSError, match="missing tiles need .* GB but only"):
        wn.tiles.compute(net, dyadic(20), store=tmp_path / "s.zarr", batch_size=8)


def test_failing_and_nan_tiles_stop_with_kept_tiles(tmp_path, net):
    x = dyadic(20, seed=23)
    n = {"calls": 0}

    def flaky(a, b, get):
        n["calls"] += 1
        if n["calls"] == 3:
            raise RuntimeError("out of GPU memory")
        return net.kernel(a, b, get=get)

    with pytest.raises(wn.tiles.TileError, match="out of GPU memory.*2 of 6 tiles"):
        wn.tiles.compute(flaky, x, store=tmp_path / "f.zarr", batch_size=8, get="ntk",
                         description="flaky")

    def nan_kernel(a, b, get):
        k = net.kernel(a, b, get="ntk")
        return k if b is None else k * float("nan")

    with pytest.raises(FloatingPointError, match="NaN or infinite ntk.*1 of 6 tiles"):
        wn.tiles.compute(nan_kernel, x, store=tmp_path / "n.zarr", batch_size=8, get="ntk",
                         description="nan")
    # The NaN tile was not recorded (only the diagonal tile before it).
    assert wn.tiles.status(tmp_path / "n.zarr")["tiles_done"] == 1


def test_incomplete_store_is_refused_by_readers(tmp_path, stored):
    store, _ = stored
    (store / "done" / "1-2.json").unlink()
    with pytest.raises(wn.tiles.IncompleteStoreError, match=r"1 of 6 tiles are missing"):
        wn.tiles.open(store)
    with pytest.raises(wn.tiles.IncompleteStoreError):
        wn.tiles.load_kernel(store)
    # The tile's data is still on disk, but without a record it is not trusted: NaN.
    lazy = wn.tiles.open(store, allow_incomplete=True)
    for k in (lazy.load(), torch.from_numpy(lazy.compute())):
        assert torch.isnan(k[8:16, 16:]).all() and torch.isnan(k[16:, 8:16]).all()  # + mirror
        assert not torch.isnan(k[:8]).any() and not torch.isnan(k[16:, 16:]).any()


def test_load_kernel_refuses_what_does_not_fit(stored):
    store, x = stored
    with pytest.raises(wn.tiles.KernelTooLargeError, match=r"20 x 20 float64.*wn.tiles.open"):
        wn.tiles.load_kernel(store, max_bytes=20 * 20 * 8 - 1)
    assert wn.tiles.load_kernel(store, max_bytes=20 * 20 * 8).shape == (20, 20)
    with pytest.raises(ValueError, match="holds ntk but 'nngp' was asked for"):
        wn.tiles.load_kernel(store, get="nngp")


def test_argument_errors(tmp_path, net):
    x = dyadic(10)
    s = tmp_path / "e.zarr"
    with pytest.raises(ValueError, match="symmetric kernel .* square tiles"):
        wn.tiles.compute(net, x, store=s, batch_size=(4, 5))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        wn.tiles.compute(net, x, store=s, batch_size=0)
    with pytest.raises(TypeError, match="pass description="):
        wn.tiles.compute(lambda a, b, get: a @ a.T, x, store=s)
    with pytest.raises(TypeError, match="kernel_fn must be a widenets net"):
        wn.tiles.compute(42, x, store=s, description="x")
    with pytest.raises(ValueError, match="x1 contains 1 NaN"):
        wn.tiles.compute(net, torch.tensor([[0.0, float("nan")]]), store=s)
    with pytest.raises(ValueError, match="same shape after the batch axis"):
        wn.tiles.compute(net, x, dyadic(3, d=5), store=s)
    with pytest.raises(ValueError, match="get must be"):
        wn.tiles.compute(net, x, store=s, get="both")
    with pytest.raises(TypeError, match="float64, float32 or float16"):
        wn.tiles.compute(net, x, store=s, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="one tensor per requested kernel"):
        wn.tiles.compute(lambda a, b, get: a[:, :1] @ a[:, :1].T, x, store=s,
                         description="single")
    with pytest.raises(ValueError, match="local directory path"):
        wn.tiles.compute(net, x, store="s3://bucket/k.zarr")
    assert not s.exists() or json.loads((s / "widenets.json").read_text())
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")),
                            [])  # no temporary store left behind
