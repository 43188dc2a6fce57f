"""Analytic NNGP + NTK of attention networks and sparse vs dense graph aggregation (issue 12).

1. attention: two softmax GlobalSelfAttention layers with ReLU, global average pooling and a
   Dense readout, on N = 128 sequences of 8 channels and length L = 32, float32 and float64;
   in the same run the conv-with-global-pooling network of the same size (two 3-wide Conv +
   ReLU, GlobalAvgPool, Dense) for scale. Both keep all position pairs, (N, N, L, L) tensors.
   Cost model: per input pair and attention layer the weights G1 (the softmax of each input's
   own kernel) act on both sides of the L x L kernel, G1 K G2ᵀ, for the NNGP and again for the
   NTK: 4 (L x L) @ (L x L) products = 8 L³ flops; a convolution sums 3 diagonals (≈ 6 L²
   flops per tensor). Attention is therefore ~L/2 times the flops of a convolution layer; both
   are quadratic in positions in memory. The script prints the measured GFLOP/s of the
   attention network's matrix products (a lower bound: divided by the total time).
2. Aggregate on graphs of 1,000 nodes and 5,000 edges: the same network (Dense, ReLU,
   Aggregate, Dense, ReLU, Aggregate, GlobalAvgPool, Dense) with the dense (n, P, P) adjacency
   and with the sparse EdgeList, in the same run (and the Aggregate step alone, on a
   precomputed kernel). Dense costs 4 P³ flops per pair and aggregation, sparse O(E·P).
   Dense and sparse runs alternate; the speed-up is the median of the paired ratios.

    python benchmarks/attention.py [--repeats 3] [--n 128] [--graphs 2] [--only graphs]

Times are medians (and minima) of `repeats` runs after a warm-up.
"""

import argparse
import os
import statistics
import time

import torch
from _timing import times_of  # noqa: E402  (benchmarks/_timing.py)

import widenets as wn


def attention_net():
    att = lambda: wn.GlobalSelfAttention(8, 8, 8, 2, w_query_std=1.5, b_std=0.1)  # noqa: E731
    return wn.serial(att(), wn.Relu(), att(), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))


def conv_net():
    conv = lambda: wn.Conv(8, 3, padding="SAME", w_std=1.4, b_std=0.1)  # noqa: E731
    return wn.serial(conv(), wn.Relu(), conv(), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))


def graph_net():
    return wn.serial(wn.Dense(8, b_std=0.1), wn.Relu(), wn.Aggregate(), wn.Dense(8), wn.Relu(),
                     wn.Aggregate(), wn.GlobalAvgPool(), wn.Dense(1))


def random_graphs(n, nodes, edges, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, nodes, (n, edges, 2), generator=g)
    w = torch.rand(n, edges, generator=g, dtype=torch.float64)
    return wn.EdgeList(idx, w)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--graphs", type=int, default=2)
    ap.add_argument("--only", choices=("attention", "graphs"), default=None,
                    help="run one of the two parts")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} (a busy machine slows both columns)")

    if args.only != "graphs":
        attention_part(args)
    if args.only != "attention":
        graph_part(args)


def attention_part(args):
    n, length = args.n, args.length
    x = torch.randn(n, 8, length, generator=torch.Generator().manual_seed(0))
    pairs = n * (n + 1) / 2                    # x2 = x1: only blocks I <= J are computed
    flops = pairs * 2 * 8 * length ** 3        # 2 attention layers, 8 L³ flops per pair each
    print(f"\n1. NNGP + NTK, N = {n} sequences, 8 channels, length {length} "
          f"(median / min of {args.repeats})")
    print(f"{'network':<28}{'dtype':<9}{'median s':>10}{'min s':>9}{'vs conv':>9}"
          f"{'GFLOP/s*':>9}")
    for dtype in (torch.float32, torch.float64):
        med_c, min_c = times_of(lambda: conv_net().kernel(x, dtype=dtype), args.repeats)
        med_a, min_a = times_of(lambda: attention_net().kernel(x, dtype=dtype), args.repeats)
        name = str(dtype).replace("torch.", "")
        print(f"{'conv + global pooling':<28}{name:<9}{med_c:>10.3f}{min_c:>9.3f}{1.0:>9.2f}"
              f"{'':>9}")
        print(f"{'2-layer softmax attention':<28}{name:<9}{med_a:>10.3f}{min_a:>9.3f}"
              f"{med_a / med_c:>9.2f}{flops / min_a / 1e9:>9.2f}")

    print("* attention matmul flops (8 L³ per pair and layer) / best total time: a lower bound; "
          "the rest is the softmax, ReLU and pooling passes over (N, N, L, L) tensors")



def graph_part(args):
    nodes, edges = 1000, 5000
    print(f"\n2. Aggregate, {args.graphs} graphs of {nodes} nodes and {edges} edges, float64 "
          f"(median / min of {args.repeats})")
    xg = torch.randn(args.graphs, 4, nodes, generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64)
    sparse = random_graphs(args.graphs, nodes, edges)
    dense = sparse.to_dense(nodes)
    net = graph_net()
    check = (net.kernel(xg, pattern=sparse, get="ntk") - net.kernel(xg, pattern=dense,
                                                                     get="ntk")).abs().max()
    print(f"max |sparse - dense| NTK: {float(check):.2e}")
    # dense and sparse alternate within each repeat, so that a change of load on a shared
    # machine hits both; the speed-up is the median of the per-repeat ratios
    whole = paired_times([lambda: net.kernel(xg, pattern=dense),
                          lambda: net.kernel(xg, pattern=sparse)], args.repeats)
    # the Aggregate step alone on the kernel of Dense + ReLU (all node pairs)
    head = wn.serial(wn.Dense(8, b_std=0.1), wn.Relu())
    k0 = head.kernel(xg, layout="full").replace(pattern1=dense)
    k1 = k0.replace(pattern1=sparse)
    agg = wn.Aggregate()
    step = paired_times([lambda: agg.apply_kernel(k0), lambda: agg.apply_kernel(k1)],
                        args.repeats)
    print(f"{'':<36}{'median s':>10}{'min s':>9}{'speed-up':>10}")
    for what, (times, ratio) in (("network", whole), ("Aggregate step", step)):
        for form, t in zip(("dense (n, P, P)", "sparse EdgeList"), times):
            up = f"{ratio:>10.1f}" if form.startswith("sparse") else f"{1.0:>10.1f}"
            print(f"{what + ', ' + form:<36}{statistics.median(t):>10.3f}{min(t):>9.3f}{up}")


def paired_times(fns, repeats):
    """Times of [reference, other] run alternately `repeats` times after a warm-up each:
    ([times of each], median over repeats of reference time / other time)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return times, statistics.median(a / b for a, b in zip(times[0], times[1]))

if __name__ == "__main__":
    main()
