"""Issue 17, property tests of the tile stores (seeded random cases, no hypothesis needed).

1. Random shapes (0 rows and 0 features included), dtypes, NaN positions, tile sizes (valid and
   not) and `get` at `wn.tiles.compute` + `wn.tiles.load_kernel`: every call either raises a
   widenets error (ValueError / TypeError / FloatingPointError) whose message names the
   function, or returns the kernel computed in memory by `net.kernel` (the reference, computed
   independently of the tiling): bit-identical in float64 (dyadic inputs, see
   io_helpers.dyadic), to a few units in the last place in float32/float16 (elementwise
   arccos/sqrt take vectorized or scalar code paths depending on the block size). A failed
   call leaves no store behind.
2. Random byte flips in random chunk files: every read either raises `CorruptTileError` or
   returns exactly the undamaged kernel (a flip in the padding of an edge chunk changes no
   value); `verify` agrees; a resume recomputes exactly the damaged tiles.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import widenets as wn

from .io_helpers import dyadic, flip_byte, small_net

N_CASES = 40
N_FLIPS = 12
_NAMED = re.compile(r"^[A-Za-z_][\w.]*: ")  # "tiles.compute: ...", "Dense: ..."


def _case(rng: np.random.Generator):
    n1 = int(rng.choice([0, 1, 2, 5, 9, 12]))
    n2 = None if rng.random() < 0.5 else int(rng.choice([0, 1, 4, 7]))
    d = int(rng.choice([0, 4, 8]))  # powers of 2: exact 1/d scaling (dyadic inputs)
    dtype = [torch.float64, torch.float32, torch.float16][rng.choice(3, p=[0.45, 0.45, 0.1])]
    x1 = dyadic(n1, d, seed=int(rng.integers(1 << 30)))
    x2 = None if n2 is None else dyadic(n2, d, seed=int(rng.integers(1 << 30)))
    if rng.random() < 0.25:  # a NaN at a random position of x1 or x2
        target = x1 if x2 is None or rng.random() < 0.5 else x2
        if target.numel():
            target.view(-1)[int(rng.integers(target.numel()))] = float("nan")
    r = rng.random()
    if r < 0.6:
        batch = int(rng.integers(1, 14))
    elif r < 0.8:
        batch = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    else:
        batch = [0, -2, 2.5, "4", (3,), True][int(rng.integers(6))]
    get = [None, "nngp", "ntk", ("ntk", "nngp"), "both"][int(rng.integers(5))]
    return x1, x2, dtype, batch, get


def test_random_calls_give_a_named_error_or_the_in_memory_kernel(tmp_path):
    rng = np.random.default_rng(20261127)
    net = small_net()
    outcomes = {"error": 0, "equal": 0}
    for c in range(N_CASES):
        x1, x2, dtype, batch, get = _case(rng)
        store = tmp_path / f"case{c}.zarr"
        label = (f"case {c}: x1 {tuple(x1.shape)}, x2 {None if x2 is None else tuple(x2.shape)}, "
                 f"{dtype}, batch_size={batch!r}, get={get!r}")
        try:
            wn.tiles.compute(net, x1, x2, store=store, batch_size=batch, get=get, dtype=dtype)
            got = wn.tiles.load_kernel(store, get=get)
        except (ValueError, TypeError, FloatingPointError) as e:
            assert _NAMED.match(str(e)), f"{label}: unnamed error {type(e).__name__}: {e}"
            if str(e).startswith("tiles.compute:"):
                assert not store.exists(), f"{label}: a refused call left a store: {e}"
            outcomes["error"] += 1
            continue
        except Exception as e:  # noqa: BLE001 - anything else is a test failure
            pytest.fail(f"{label}: {type(e).__name__} is not a documented error: {e}")
        ref = net.kernel(x1, x2, get=("nngp", "ntk") if get is None else get, dtype=dtype)
        for a, b in zip(got if isinstance(got, tuple) else (got,),
                        ref if isinstance(ref, tuple) else (ref,), strict=True):
            # A wrong tile offset, a missing mirror or a transposed block changes entries by
            # O(0.1) relative (they are kernels of other input pairs): far above these
            # tolerances (0 in float64; 4 and 2 units in the last place in float32/float16).
            assert a.dtype == b.dtype, label
            if dtype == torch.float64:
                assert torch.equal(a, b), label
            else:
                tol = {torch.float32: 5e-7, torch.float16: 2e-3}[dtype]
                torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()),
                                           msg=label)
        outcomes["equal"] += 1
    # The generator must exercise both outcomes (else the property is vacuous).
    assert outcomes["error"] >= 5 and outcomes["equal"] >= 5, outcomes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_random_byte_flips_are_always_detected(tmp_path, dtype):
    rng = np.random.default_rng(7 if dtype == torch.float64 else 8)
    net, x = small_net(), dyadic(10, seed=9)
    store = tmp_path / "f.zarr"
    wn.tiles.compute(net, x, store=store, batch_size=4, dtype=dtype)
    ref = net.kernel(x, get=("nngp", "ntk"), dtype=dtype)
    chunks = sorted(p for name in ("nngp", "ntk") for p in (store / name).rglob("*")
                    if p.is_file() and not p.name.startswith((".", "zarr.json")))
    assert len(chunks) == 12  # 6 upper-triangle tiles x 2 kernels
    detected = 0
    for _ in range(N_FLIPS):
        path = chunks[int(rng.integers(len(chunks)))]
        size = path.stat().st_size
        original = flip_byte(path, int(rng.integers(size)), int(rng.integers(1, 256)))
        try:
            got = wn.tiles.load_kernel(store)
        except wn.tiles.CorruptTileError as e:
            assert e.args[0].startswith("tiles.load_kernel: tile ("), e
            with pytest.raises(wn.tiles.CorruptTileError):
                [lazy.compute() for lazy in wn.tiles.open(store)]
            assert len(wn.tiles.verify(store)) == 1
            detected += 1
        else:  # only a flip in an edge chunk's padding may pass, and then nothing changed
            for a, b in zip(got, ref, strict=True):
                assert torch.equal(a, b), f"a flipped byte of {path} was returned silently"
            assert wn.tiles.verify(store) == []
        path.write_bytes(original)
    assert detected >= N_FLIPS // 2  # most flips hit data (the property is not vacuous)
    # A resume after damage recomputes exactly the damaged tile.
    flip_byte(chunks[0], 0, 0x80)
    with pytest.warns(RuntimeWarning, match="1 finished tile"):
        run = wn.tiles.compute(net, x, store=store, batch_size=4, dtype=dtype)
    assert run.tiles_computed == 1
    for a, b in zip(wn.tiles.load_kernel(store), ref, strict=True):
        assert torch.equal(a, b)
