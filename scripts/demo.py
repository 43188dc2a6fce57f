"""Placeholder demo until the `widenets demo` command lands: a kernel and a Monte Carlo check."""

import torch

import widenets as wn


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 8, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * 8 ** 0.5
    net = wn.serial(wn.Dense(1024, w_std=1.5, b_std=0.05), wn.Relu(),
                    wn.Dense(1024, w_std=1.5, b_std=0.05), wn.Relu(),
                    wn.Dense(64, w_std=1.5, b_std=0.05))
    k = net.kernel(x)
    mc = wn.monte_carlo_kernel(net, x, in_shape=(8,), n_samples=8)
    torch.set_printoptions(precision=4, sci_mode=False)
    print(f"net: {net}\n")
    print("analytic NNGP (infinite width):\n", k.nngp)
    print("Monte Carlo NNGP (8 nets, width 1024, 64 outputs):\n", mc.nngp)
    print("analytic NTK:\n", k.ntk)
    print("Monte Carlo NTK:\n", mc.ntk)
    for name in ("nngp", "ntk"):
        a, b = getattr(k, name), getattr(mc, name)
        print(f"relative Frobenius difference {name}: {float((a - b).norm() / a.norm()):.3%}")


if __name__ == "__main__":
    main()
