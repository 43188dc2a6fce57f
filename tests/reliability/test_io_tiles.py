"""Issue 17, tile stores: no damaged tile returned, no mixed nets, clear errors.

Every test here fails on the code before issue 17 (the comment says how).
"""

from __future__ import annotations

import functools
import json
import os

import pytest
import torch

import widenets as wn

from .io_helpers import chunk_file, dyadic, flip_byte, small_net, tile_kw


@pytest.fixture
def stored(tmp_path):
    net, x = small_net(), dyadic(10, seed=1)
    store = tmp_path / "k.zarr"
    wn.tiles.compute(net, x, store=store, **tile_kw(4), get="ntk")
    return net, x, store


# ------------------------------------------------------------------ item 3: CRC on every read
def test_flipped_bit_is_never_returned_and_resume_recomputes_it(stored):
    # Before: load_kernel/open returned the flipped value; a resume skipped the tile as done.
    net, x, store = stored
    path = chunk_file(store, "ntk", 0, 1)
    flip_byte(path, 8 * 5 + 3, 0x10)  # one bit of the 6th float64 of tile (0, 1)
    with pytest.raises(wn.tiles.TileStoreError, match=r"tiles.load_kernel: tile \(0, 1\).*CRC") \
            as e:
        wn.tiles.load_kernel(store)
    assert type(e.value).__name__ == "CorruptTileError"
    lazy = wn.tiles.open(store)
    with pytest.raises(wn.tiles.CorruptTileError, match=r"tile \(0, 1\)"):
        lazy.compute()
    with pytest.raises(wn.tiles.CorruptTileError, match=r"tile \(0, 1\)"):
        lazy[5:6, :].compute()  # the mirrored lower block reads tile (0, 1) too
    with pytest.raises(wn.tiles.CorruptTileError):
        lazy.load()
    # A slice that avoids the damaged tile still reads.
    assert torch.equal(torch.from_numpy(lazy[:4, :4].compute()), net.kernel(x[:4], get="ntk"))
    with pytest.warns(RuntimeWarning, match=r"1 finished tile\(s\).*failed their CRC-32"):
        run = wn.tiles.compute(net, x, store=store, **tile_kw(4), get="ntk")
    assert run.tiles_computed == 1 and run.tiles_skipped == 5
    assert torch.equal(wn.tiles.load_kernel(store), net.kernel(x, get="ntk"))


def test_truncated_chunk_through_open_compute_is_a_clear_error(stored):
    # Before: a raw zarr/numpy ValueError ("When changing to a larger dtype ...").
    _, _, store = stored
    chunk_file(store, "ntk", 1, 2).write_bytes(b"trunc")
    with pytest.raises(wn.tiles.TileStoreError,
                       match=r"tiles.open: tile \(1, 2\) of the ntk kernel .* unreadable.*rerun") \
            as e:
        wn.tiles.open(store).compute()
    assert type(e.value).__name__ == "CorruptTileError"


def test_damaged_record_is_reported_not_a_crash(stored):
    # Before: verify() raised json.JSONDecodeError on a damaged record.
    net, x, store = stored
    (store / "done" / "0-2.json").write_text('{"tile": [0, 2], "crc3')
    assert wn.tiles.verify(store) == [(0, 2)]
    with pytest.raises(wn.tiles.CorruptTileError, match=r"record .*0-2.json.* damaged"):
        wn.tiles.load_kernel(store)
    with pytest.warns(RuntimeWarning, match=r"record of tile \(0, 2\) is damaged"):
        run = wn.tiles.compute(net, x, store=store, **tile_kw(4), get="ntk")
    assert run.tiles_computed == 1
    assert wn.tiles.verify(store) == []


# ------------------------------------------------------------------ item 4: one net per store
def _elementwise_net(fn):
    return wn.serial(wn.Dense(8), wn.Elementwise(fn, degree=8), wn.Dense(1))


SLOPE = 0.1


def _reads_global(z):
    return torch.nn.functional.leaky_relu(z, SLOPE)


@pytest.mark.parametrize("case", ["partial", "global", "module", "module-weights", "closure"])
def test_nets_differing_only_inside_a_callable_are_refused(tmp_path, case, monkeypatch):
    # Before: both nets were described as "Elementwise(fn, degree=8)" (or by the function's
    # bytecode only), so the second call resumed the first net's store and mixed two kernels.
    leaky = torch.nn.functional.leaky_relu
    if case == "partial":
        first, second = (functools.partial(leaky, negative_slope=s) for s in (0.1, 0.3))
    elif case == "module":
        first, second = torch.nn.LeakyReLU(0.1), torch.nn.LeakyReLU(0.3)
    elif case == "module-weights":
        first = torch.nn.Sequential(torch.nn.Identity())
        first.register_buffer("scale", torch.tensor(1.0))
        second = torch.nn.Sequential(torch.nn.Identity())
        second.register_buffer("scale", torch.tensor(2.0))
    elif case == "closure":
        def make(scale):
            return lambda z: torch.tanh(scale * z)
        first, second = make(1.0), make(2.0)
    else:
        first = second = _reads_global
    x = dyadic(5, seed=2)
    store = tmp_path / "f.zarr"
    wn.tiles.compute(_elementwise_net(first), x, store=store, **tile_kw(3), get="nngp")
    if case == "global":
        monkeypatch.setattr(f"{__name__}.SLOPE", 0.3)
    with pytest.raises(wn.tiles.StoreMismatchError, match="net.*Refusing to mix"):
        wn.tiles.compute(_elementwise_net(second), x, store=store, **tile_kw(3), get="nngp")
    if case == "global":
        monkeypatch.setattr(f"{__name__}.SLOPE", 0.1)
    # The same net (rebuilt) resumes.
    again = _elementwise_net(first if case != "module-weights" else first)
    assert wn.tiles.compute(again, x, store=store, **tile_kw(3), get="nngp").tiles_computed == 0


class _Scaled:
    """A callable object: its behaviour lives in an attribute the store cannot see."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, z):
        return torch.tanh(self.scale * z)


def test_undescribable_callable_needs_a_description(tmp_path):
    # Before: accepted and described as "Elementwise(fn, degree=8)" whatever its scale.
    x = dyadic(4, seed=3)
    net = _elementwise_net(_Scaled(2.0))
    with pytest.raises(TypeError, match=r"tiles.compute: cannot describe .*layers\[1\]\.fn.*"
                                        r"_Scaled.*description="):
        wn.tiles.compute(net, x, store=tmp_path / "u.zarr", get="nngp")
    assert not (tmp_path / "u.zarr").exists()
    run = wn.tiles.compute(net, x, store=tmp_path / "u.zarr", get="nngp",
                           description="tanh(2 z) net")
    assert run.tiles_computed == 1


# ------------------------------------------------------------------ item 7: errors that mislead
@pytest.mark.parametrize("x1_rows, x2_rows", [(0, None), (3, 0), (0, 2)])
def test_zero_rows_is_a_clear_error_and_leaves_no_store(tmp_path, x1_rows, x2_rows):
    # Before: "range() arg 3 must not be zero" after creating an empty store.
    x1 = dyadic(x1_rows)
    x2 = None if x2_rows is None else dyadic(x2_rows)
    arg = "x1" if x1_rows == 0 else "x2"
    # the message names the function, the argument and the shape that arrived
    with pytest.raises(ValueError, match=rf"tiles.compute: {arg} must .*got shape \(0, 8\)"):
        wn.tiles.compute(small_net(), x1, x2, store=tmp_path / "z.zarr")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_creation_of_one_store_continues_the_other_runs_store(tmp_path, monkeypatch):
    # Before: the run that lost the race failed with "Directory not empty: '.z.<uuid>.init'".
    import importlib

    compute_module = importlib.import_module("widenets.tiles.compute")

    net, x = small_net(), dyadic(6, seed=4)
    store = tmp_path / "c.zarr"
    real_init = compute_module.init_store

    def other_run_first(root, meta, *, func):
        monkeypatch.setattr(compute_module, "init_store", real_init)
        wn.tiles.compute(net, x, store=store, **tile_kw(4), get="ntk")  # the other run wins
        return real_init(root, meta, func=func)

    monkeypatch.setattr(compute_module, "init_store", other_run_first)
    run = wn.tiles.compute(net, x, store=store, **tile_kw(4), get="ntk")
    assert run.tiles_computed == 0 and run.tiles_skipped == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]  # no temporary left
    assert torch.equal(wn.tiles.load_kernel(store), net.kernel(x, get="ntk"))


def test_a_new_store_is_locked_before_it_appears(tmp_path):
    # Before: the lock was taken after the rename, so a concurrent run could take it first.
    from widenets.tiles.store import StoreLock, init_store

    meta = {"shape": [4, 4], "tile": [4, 4], "dtype": "float64", "get": ["ntk"],
            "format": "widenets-tiles/1", "uuid": "u"}
    lay, lock = init_store(tmp_path / "l.zarr", meta, func="test")
    with pytest.raises(wn.tiles.TileStoreError, match="being computed by another run"):
        StoreLock(lay, func="test")
    lock.release()


def test_store_below_a_regular_file(tmp_path):
    # Before: FileExistsError / NotADirectoryError naming neither function nor argument.
    (tmp_path / "file.txt").write_text("x")
    bad = tmp_path / "file.txt" / "sub" / "k.zarr"
    with pytest.raises(ValueError, match=r"tiles.compute: store must be a directory path.*"
                                         r"lies below .*file.txt.*which is a file"):
        wn.tiles.compute(small_net(), dyadic(3), store=bad)
    with pytest.raises(ValueError, match=r"tiles.open: store .*which is a file"):
        wn.tiles.open(bad)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_unwritable_store_names_the_store_not_a_temporary(tmp_path):
    # Before: "[Errno 2] No such file or directory: '/proc/.x.<uuid>.init/...'".
    with pytest.raises(OSError, match=r"^tiles.compute: cannot create the tile store "
                                      r"'/proc/widenets-x'") as e:
        wn.tiles.compute(small_net(), dyadic(3), store="/proc/widenets-x")
    assert ".init" not in str(e.value)


# ------------------------------------------------------------------ item 8: API rules
def test_api_spelling_batch_size_and_keyword_get(tmp_path):
    # Before: batch_size= was a TypeError (the argument was tile=), open(store, "ntk") silent.
    net, x = small_net(), dyadic(7, seed=5)
    store = tmp_path / "a.zarr"
    run = wn.tiles.compute(net, x, store=store, batch_size=3)  # get=None: both kernels
    assert run.tiles_total == 6
    assert wn.tiles.open(store, get="ntk").shape == (7, 7)
    with pytest.warns(FutureWarning, match="get positionally is deprecated.*get='ntk'"):
        k = wn.tiles.open(store, "ntk")
    assert torch.equal(k.load(), net.kernel(x, get="ntk"))
    with pytest.warns(FutureWarning, match="tile= is deprecated since 0.2; use batch_size="):
        again = wn.tiles.compute(net, x, store=store, tile=3)
    assert again.tiles_computed == 0
    # batch_size=None resumes with the store's own tiles (not the default 2048).
    assert wn.tiles.compute(net, x, store=store).tiles_skipped == 6
    with pytest.raises(TypeError):
        wn.tiles.compute(net, x, None, store, 3, "ntk")  # store, batch_size, get: keywords
    with pytest.raises(TypeError, match="check must be True or False"):
        wn.tiles.load_kernel(store, check="yes")


def test_records_hold_the_crc_of_what_the_reader_checks(stored):
    # The CRC a reader checks is the one the writer stored (zlib.crc32 of the tile's bytes,
    # computed here independently from the in-memory kernel): a reader comparing against
    # anything else would reject intact stores.
    import zlib

    import numpy as np

    net, x, store = stored
    ref = net.kernel(x, get="ntk").numpy()
    rec = json.loads((store / "done" / "1-2.json").read_text())
    block = np.ascontiguousarray(ref[4:8, 8:10])
    assert rec["crc32"]["ntk"] == zlib.crc32(block.view(np.uint8).reshape(-1).data)


def _closure_made_in_a_library(scale):
    namespace = {"__name__": "widenets.fake_module", "torch": torch}
    exec("def make(s):\n    return lambda z: torch.tanh(s * z)\n", namespace)  # noqa: S102
    return namespace["make"](scale)


def test_closures_made_inside_a_library_are_described_by_content():
    # A lambda made inside widenets (or torch) must not be described by its name alone: two
    # such closures with different captured values compute different kernels.
    from widenets.tiles.describe import describe_callable, describe_layer

    a, b = _closure_made_in_a_library(1.0), _closure_made_in_a_library(2.0)
    assert describe_callable(a) != describe_callable(b)
    assert describe_callable(a) == describe_callable(_closure_made_in_a_library(1.0))
    # Module-level library functions are described by name (their version pins them).
    assert describe_callable(torch.nn.functional.leaky_relu) == \
        "function torch.nn.functional.leaky_relu"
    # Nets without callables keep their repr as the description (old stores still resume).
    net = small_net()
    assert describe_layer(net) == repr(net)
