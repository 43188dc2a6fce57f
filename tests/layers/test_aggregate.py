"""Aggregate (graph neural networks): exact identities, sparse = dense, brute force, Monte Carlo,
masks, blocks and errors."""

import pytest
import torch

import widenets as wn

from .position_mc import mc_kernels, rel_error


def _graphs(n, nodes, seed=0, density=0.4):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(n, nodes, nodes, generator=g) < density
    return torch.rand(n, nodes, nodes, generator=g, dtype=torch.float64) * keep


def _x(n, c=3, nodes=6, seed=1):
    return torch.randn(n, c, nodes, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _edge_list(a, pad_to=None):
    """The EdgeList of dense adjacencies a (n, P, P), padded with weight-0 edges to pad_to."""
    idx = [a[i].nonzero() for i in range(a.shape[0])]
    e = max(len(t) for t in idx) if pad_to is None else pad_to
    edges = torch.zeros(a.shape[0], e, 2, dtype=torch.long)
    w = torch.zeros(a.shape[0], e, dtype=torch.float64)
    for i, t in enumerate(idx):
        edges[i, :len(t)] = t
        w[i, :len(t)] = a[i][t[:, 0], t[:, 1]]
    return wn.EdgeList(edges, w)


GNN = wn.serial(wn.Dense(16, b_std=0.1), wn.Relu(), wn.Aggregate(), wn.Dense(8), wn.Erf(),
                wn.Aggregate(), wn.GlobalAvgPool(), wn.Dense(1))


def test_identity_adjacency_is_identity_layer():
    x = _x(4)
    eye = torch.eye(6, dtype=torch.float64).expand(4, 6, 6)
    head = wn.serial(wn.Dense(16, b_std=0.1), wn.Relu())
    with_agg = wn.serial(head, wn.Aggregate(), wn.Dense(3)).kernel(x, pattern=eye)
    without = wn.serial(head, wn.Dense(3)).kernel(x, layout="full")
    torch.testing.assert_close(with_agg.nngp, without.nngp, rtol=1e-14, atol=0)
    torch.testing.assert_close(with_agg.ntk, without.ntk, rtol=1e-14, atol=0)


def test_aggregate_matches_brute_force_sums():
    # K'(j, j') = Σ_{i, i'} A1[i, j] K(i, i') A2[i', j'], written as explicit loops
    x1, x2 = _x(2), _x(3, seed=2)
    a1, a2 = _graphs(2, 6, seed=3), _graphs(3, 6, seed=4)
    head = wn.serial(wn.Dense(16, b_std=0.1), wn.Relu())
    k = head.kernel(x1, x2, layout="full")
    out = wn.serial(head, wn.Aggregate()).kernel(x1, x2, pattern=(a1, a2))
    for name in ("nngp", "ntk"):
        t = getattr(k, name)
        want = torch.zeros_like(t)
        for a in range(2):
            for b in range(3):
                for j in range(6):
                    for jj in range(6):
                        want[a, b, j, jj] = sum(a1[a, i, j] * t[a, b, i, ii] * a2[b, ii, jj]
                                                for i in range(6) for ii in range(6))
        torch.testing.assert_close(getattr(out, name), want, rtol=1e-12, atol=1e-14)


def test_sparse_equals_dense():
    x1, x2 = _x(3), _x(2, seed=5)
    a1, a2 = _graphs(3, 6, seed=6), _graphs(2, 6, seed=7)
    dense = GNN.kernel(x1, x2, pattern=(a1, a2))
    sparse = GNN.kernel(x1, x2, pattern=(_edge_list(a1, pad_to=30), _edge_list(a2)))
    torch.testing.assert_close(sparse.nngp, dense.nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(sparse.ntk, dense.ntk, rtol=1e-12, atol=0)
    # repeated edges add up; unweighted integer edge tensors are weight-1 edges
    edges = torch.tensor([[[0, 1], [0, 1], [2, 3]]] * 3)
    twice = torch.zeros(3, 6, 6, dtype=torch.float64)
    twice[:, 0, 1], twice[:, 2, 3] = 2.0, 1.0
    torch.testing.assert_close(GNN.kernel(x1, pattern=edges).ntk,
                               GNN.kernel(x1, pattern=twice).ntk, rtol=1e-12, atol=0)
    # the finite module agrees too
    mod = GNN.module((3, 6), seed=0, dtype=torch.float64)
    torch.testing.assert_close(mod(x1, _edge_list(a1)), mod(x1, a1), rtol=1e-12, atol=1e-14)


def test_blocks_and_symmetric_rows_keep_patterns_and_masks():
    # the full layout runs in blocks of batch_size inputs: each block gets its graphs and masks
    x1 = _x(5)
    a1 = _graphs(5, 6, seed=8)
    m1 = torch.arange(6) < torch.tensor([[6], [3], [5], [1], [4]])
    whole = GNN.kernel(x1, pattern=a1, mask=m1)
    blocks = GNN.kernel(x1, pattern=a1, mask=m1, batch_size=2)
    torch.testing.assert_close(blocks.nngp, whole.nngp, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(blocks.ntk, whole.ntk, rtol=1e-12, atol=1e-15)
    # x2 = x1 given explicitly: (pattern1, pattern2) pairs in every block; the diagonal is then
    # computed by Erf's off-diagonal formula (arcsin near 1 keeps ~9 digits), hence rtol 1e-7
    pair = GNN.kernel(x1, x1, pattern=(a1, a1), mask=(m1, m1), batch_size=2)
    torch.testing.assert_close(pair.ntk, whole.ntk, rtol=1e-7, atol=1e-12)


def test_pattern_through_parallel_branches():
    x, a = _x(3), _graphs(3, 6, seed=9)
    branch = wn.serial(wn.Dense(8), wn.Relu(), wn.Aggregate(), wn.Dense(8))
    net = wn.serial(wn.FanOut(2), wn.parallel(branch, wn.Dense(8)), wn.FanInSum(),
                    wn.GlobalAvgPool(), wn.Dense(1))
    k = net.kernel(x, pattern=a)
    # branch kernels add (independent weights): compare with the two nets summed by hand
    k1 = wn.serial(branch, wn.GlobalAvgPool(), wn.Dense(1)).kernel(x, pattern=a)
    k2 = wn.serial(wn.Dense(8), wn.GlobalAvgPool(), wn.Dense(1)).kernel(x)
    torch.testing.assert_close(k.nngp, k1.nngp + k2.nngp, rtol=1e-12, atol=1e-14)
    out = net.module((3, 6), seed=0, dtype=torch.float64)(x, a)
    assert out.shape == (3, 1)


def test_masked_nodes_do_not_change_the_others():
    x = _x(3)
    a = _graphs(3, 6, seed=10)
    m = torch.arange(6) < torch.tensor([[6], [4], [2]])
    k = GNN.kernel(x, pattern=a, mask=m)
    # change the features and the edges of the padded nodes: nothing changes
    x2, a2 = x.clone(), a.clone()
    for i, n_valid in enumerate((6, 4, 2)):
        x2[i, :, n_valid:] = 5.0 * torch.randn(3, 6 - n_valid, dtype=torch.float64)
        a2[i, n_valid:, :] = 3.0
    k2 = GNN.kernel(x2, pattern=a2, mask=m)
    torch.testing.assert_close(k2.nngp, k.nngp, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(k2.ntk, k.ntk, rtol=1e-12, atol=1e-15)
    # a graph padded with masked nodes = the same graph without them
    short = GNN.kernel(x[2:, :, :2], pattern=a[2:, :2, :2])
    padded = GNN.kernel(x[2:], pattern=a[2:], mask=m[2:])
    torch.testing.assert_close(padded.ntk, short.ntk, rtol=1e-12, atol=1e-15)
    # an all-true mask is no mask
    full = GNN.kernel(x, pattern=a, mask=torch.ones(3, 6, dtype=torch.bool))
    torch.testing.assert_close(full.ntk, GNN.kernel(x, pattern=a).ntk, rtol=1e-14, atol=0)
    # the finite module with the mask ignores the padding the same way
    mod = GNN.module((3, 6), seed=0, dtype=torch.float64)
    torch.testing.assert_close(mod(x2, a2, mask=m), mod(x, a, mask=m), rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_aggregate_converges_to_monte_carlo():
    # random weighted graphs, 2 aggregation layers; widths 512, 6 seeds. Measured relative
    # errors ~0.02-0.04; tolerance 0.1. Caught: A instead of Aᵀ (messages along the wrong
    # direction), a missing mask, the symmetric pattern used for x2 (asserted below to move the
    # kernel by more than 0.15).
    x1 = _x(3, c=4, nodes=5)
    a1 = _graphs(3, 5, seed=11, density=0.5)
    m1 = torch.arange(5) < torch.tensor([[5], [4], [3]])
    make = lambda o: wn.serial(wn.Dense(512, w_std=1.3, b_std=0.2), wn.Relu(),  # noqa: E731
                               wn.Aggregate(), wn.Dense(512), wn.Relu(), wn.Aggregate(),
                               wn.Dense(o))
    k = make(1).kernel(x1, pattern=a1, mask=m1)
    nngp, _ = mc_kernels(make(512), x1, n_seeds=6, pattern=a1, mask=m1, want_ntk=False)
    _, ntk = mc_kernels(make(1), x1, n_seeds=6, pattern=a1, mask=m1)
    assert rel_error(nngp, k.nngp) < 0.1
    assert rel_error(ntk, k.ntk) < 0.1
    for wrong in (make(1).kernel(x1, pattern=a1.transpose(1, 2), mask=m1),
                  make(1).kernel(x1, pattern=a1)):
        assert rel_error(wrong.ntk, k.ntk) > 0.15


def test_aggregate_errors():
    x = _x(3)
    a = _graphs(3, 6)
    with pytest.raises(ValueError, match=r"Serial.kernel: pattern must be an adjacency of shape "
                                         r"\(n, P, P\) = \(3, 6, 6\).*\(3, 5, 5\)"):
        GNN.kernel(x, pattern=a[:, :5, :5])
    with pytest.raises(ValueError, match=r"pattern\[1\] must be an adjacency of shape .*\(2, 6, "
                                         r"6\).*\(3, 6, 6\)"):
        GNN.kernel(x, x[:2], pattern=(a, a))
    with pytest.raises(ValueError, match=r"with x2 given, pattern must be a pair"):
        GNN.kernel(x, x, pattern=a)
    with pytest.raises(ValueError, match=r"with x2=None, pattern must be the one pattern"):
        GNN.kernel(x, pattern=(a, a))
    with pytest.raises(ValueError, match=r"Aggregate.kernel: needs the graph of each input"):
        GNN.kernel(x)
    with pytest.raises(ValueError, match=r"pattern= was given but no layer of this network "
                                         r"reads it"):
        wn.serial(wn.Dense(2), wn.GlobalAvgPool()).kernel(x, pattern=a)
    with pytest.raises(ValueError, match=r"node indices must lie in \[0, 6\).*from 0 to 6"):
        GNN.kernel(x, pattern=torch.tensor([[[0, 6]]] * 3))
    with pytest.raises(ValueError, match=r"EdgeList: weights must have shape \(n, E\)"):
        wn.EdgeList(torch.zeros(3, 4, 2, dtype=torch.long), torch.ones(3, 5))
    with pytest.raises(TypeError, match=r"EdgeList: edges must be an integer torch.Tensor"):
        wn.EdgeList(torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match=r"pattern contains NaN"):
        GNN.kernel(x, pattern=a * float("nan"))
    with pytest.raises(ValueError, match=r"Aggregate.module: needs the graph of each input"):
        GNN.module((3, 6))(x.float())
    with pytest.raises(ValueError, match=r"pattern= and mask= need channels-first inputs"):
        wn.serial(wn.Dense(2), wn.Aggregate()).kernel(torch.randn(3, 4), pattern=a)


def test_tiles_carry_patterns_and_masks(tmp_path):
    # tile by tile (3 x 3 inputs per tile), the graphs and masks are sliced with the inputs
    x1, x2 = _x(7), _x(5, seed=12)
    a1, a2 = _graphs(7, 6, seed=13), _edge_list(_graphs(5, 6, seed=14))
    m1 = torch.arange(6) < torch.randint(1, 7, (7, 1), generator=torch.Generator().manual_seed(0))
    net = wn.serial(wn.Dense(8), wn.Relu(), wn.Aggregate(), wn.GlobalAvgPool(), wn.Dense(1))
    sym = wn.tiles.compute(net, x1, store=tmp_path / "sym", pattern=a1, mask=m1, batch_size=3).load(get="ntk")
    want = net.kernel(x1, pattern=a1, mask=m1)
    _close = lambda a, b: torch.testing.assert_close(torch.as_tensor(a), b, rtol=1e-12,  # noqa
                                                     atol=1e-14)
    _close(sym, want.ntk)
    pair = wn.tiles.compute(net, x1, x2, store=tmp_path / "pair", pattern=(a1, a2), batch_size=3,
                            get="nngp").load(get="nngp")
    _close(pair, net.kernel(x1, x2, pattern=(a1, a2), get="nngp"))
    # another pattern is another kernel: the store refuses to mix them
    with pytest.raises(wn.tiles.StoreMismatchError, match="inputs x1"):
        wn.tiles.compute(net, x1, store=tmp_path / "sym", pattern=a1.flip(1), mask=m1, batch_size=3)
    with pytest.raises(ValueError, match=r"compute: pattern must hold one entry per input of "
                                         r"x1 \(7\)"):
        wn.tiles.compute(net, x1, store=tmp_path / "bad", pattern=a1[:3], batch_size=3)
