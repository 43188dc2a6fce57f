"""Resumability: kills (SIGKILL, Ctrl-C) in a subprocess, partial stores, damaged tiles."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiles_helpers import chunk, dyadic, relu_net

import widenets as wn

HERE = Path(__file__).parent


class Counting:
    """kernel_fn that counts its calls (each call is one tile)."""

    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, a, b, get):
        self.calls += 1
        return self.net.kernel(a, b, get=get)


def _records(store: Path) -> set[str]:
    return {p.name for p in (store / "done").glob("*.json")}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_run_resumes_recomputing_only_missing_tiles(tmp_path, sig):
    store = tmp_path / "k.zarr"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE), str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(HERE / "tiles_killme.py"), str(store)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_records(store)) < 4 if store.exists() else True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the subprocess made no progress"
            time.sleep(0.02)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "FINISHED" not in out  # it was really killed partway
    if sig == signal.SIGINT:
        # Ctrl-C: the running tile finishes and is recorded, then a clear message.
        assert "interrupted" in err and "rerun the same call" in err, err
    kept = _records(store)
    assert 4 <= len(kept) < 15

    net = relu_net(3)
    fn = Counting(net)
    x = dyadic(40, seed=11)
    run = wn.tiles.compute(fn, x, store=store, batch_size=8, description="killme: relu_net(3).kernel")
    # Only the missing tiles are computed: tiles finished before the kill are not redone.
    assert run.tiles_total == 15
    assert run.tiles_skipped == len(kept)
    assert run.tiles_computed == fn.calls == 15 - len(kept)
    assert _records(store) >= kept and len(_records(store)) == 15
    assert not list(store.rglob("*.partial"))
    for got, ref in zip(run.load(), net.kernel(x, get=("nngp", "ntk")), strict=True):
        assert torch.equal(got, ref)


def test_partial_chunk_without_record_is_recomputed(tmp_path, net):
    x = dyadic(20, seed=12)
    store = tmp_path / "p.zarr"
    wn.tiles.compute(net, x, store=store, batch_size=8)
    # Simulate a kill mid-write: tile (0, 1) has garbage data and no record, and a writer's
    # temporary file is left behind.
    (store / "done" / "0-1.json").unlink()
    chunk(store, "ntk", 0, 1).write_bytes(b"garbage")
    chunk(store, "ntk", 0, 1).with_name("1.abc.partial").write_bytes(b"half")
    with pytest.raises(wn.tiles.IncompleteStoreError, match="1 of 6 tiles are missing"):
        wn.tiles.open(store)
    assert wn.tiles.status(store)["missing"] == [(0, 1)]
    fn = Counting(net)
    run = wn.tiles.compute(fn, x, store=store, batch_size=8, get=("nngp", "ntk"), description=repr(net))
    assert (run.tiles_computed, fn.calls) == (1, 1)
    assert not list(store.rglob("*.partial"))
    refs = net.kernel(x, get=("nngp", "ntk"))
    for got, ref in zip(wn.tiles.load_kernel(store), refs, strict=True):
        assert torch.equal(got, ref)


def test_record_without_data_is_recomputed(tmp_path, net):
    x = dyadic(20, seed=13)
    store = tmp_path / "q.zarr"
    wn.tiles.compute(net, x, store=store, batch_size=8, get="ntk")
    chunk(store, "ntk", 1, 2).unlink()
    with pytest.warns(RuntimeWarning, match=r"tile \(1, 2\) has a record but its data"):
        run = wn.tiles.compute(net, x, store=store, batch_size=8, get="ntk")
    assert run.tiles_computed == 1
    assert torch.equal(wn.tiles.load_kernel(store), net.kernel(x, get="ntk"))


def test_verify_finds_and_repairs_damaged_tiles(tmp_path, net):
    x = dyadic(20, seed=14)
    store = tmp_path / "v.zarr"
    wn.tiles.compute(net, x, store=store, batch_size=8, get="ntk")
    assert wn.tiles.verify(store) == []
    rec = json.loads((store / "done" / "0-2.json").read_text())
    assert rec["rows"] == [0, 8] and rec["cols"] == [16, 20]
    path = chunk(store, "ntk", 0, 2)
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF  # flip bits of one stored value
    path.write_bytes(bytes(raw))
    assert wn.tiles.verify(store) == [(0, 2)]
    with pytest.raises(wn.tiles.CorruptTileError, match=r"tile \(0, 2\).*CRC-32.*verify"):
        wn.tiles.load_kernel(store)  # every read checks the CRC
    chunk(store, "ntk", 1, 1).write_bytes(b"truncated")  # an undecodable chunk
    with pytest.raises(wn.tiles.TileStoreError, match=r"tile \(1, 1\).*unreadable.*verify"):
        wn.tiles.load_kernel(store, check=False)
    assert wn.tiles.verify(store, repair=True) == [(0, 2), (1, 1)]
    run = wn.tiles.compute(net, x, store=store, batch_size=8, get="ntk")
    assert run.tiles_computed == 2 and wn.tiles.verify(store) == []
    assert torch.equal(wn.tiles.load_kernel(store), net.kernel(x, get="ntk"))
