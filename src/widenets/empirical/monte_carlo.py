"""Monte Carlo estimates of the infinite-width kernels from random finite networks.

Each sample draws a fresh `net.module(x1.shape[1:], seed=seed + s)`; the NNGP estimate averages
the output second moments f(x1) f(x2)ᵀ / O and the NTK estimate averages the empirical NTK
(mean over the O outputs), computed by the "structured" implementation of `empirical_ntk`.
Both converge to `net.kernel` as the widths and n_samples grow.
"""

from __future__ import annotations

import warnings

import torch

from ..kernel import Kernel
from ..layers.base import Layer, as_input_tensor, parse_get, select_kernels
from .ntk import empirical_ntk

__all__ = ["monte_carlo_kernel"]


def monte_carlo_kernel(net: Layer, x1, x2=None, *, n_samples: int, seed: int = 0,
                       get=None, dtype: torch.dtype = torch.float64, in_shape=None):
    """Average empirical NNGP and NTK over `n_samples` random finite networks.

    Args:
        net: a widenets layer (its `.module` gives the finite networks).
        x1: (n1, *input_shape) inputs; the networks are built for input_shape = x1.shape[1:].
        x2: (n2, *input_shape) or None for x1.
        n_samples: number of random networks.
        seed: networks use seeds seed, seed + 1, ...
        get: None for a `Kernel`, or "nngp" / "ntk" / a tuple of them.
        dtype: dtype of the finite networks and the estimate.
        in_shape: deprecated since 0.2 (the shape is read from x1); if given it must equal
            x1.shape[1:].

    Returns:
        As `Layer.kernel`. The Kernel's cov1/cov2 are the estimated output variances.

    Example:
        >>> import torch, widenets as wn
        >>> net = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(1))
        >>> x = torch.randn(3, 5, dtype=torch.float64)
        >>> wn.monte_carlo_kernel(net, x, n_samples=2, get="nngp").shape
        torch.Size([3, 3])
    """
    fname = "monte_carlo_kernel"
    if not isinstance(net, Layer):
        raise TypeError(f"{fname}: net must be a widenets layer, got {type(net).__name__}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"{fname}: n_samples must be a positive int, got {n_samples!r}")
    gets = parse_get(get, fname)
    x1 = as_input_tensor(x1, func=fname, arg="x1", dtype=dtype)
    x2t = None if x2 is None else as_input_tensor(x2, func=fname, arg="x2", dtype=dtype)
    shape = tuple(x1.shape[1:])
    if in_shape is not None:
        warnings.warn(f"{fname}: in_shape= is deprecated since 0.2: the input shape is read "
                      f"from x1 (in_shape is only checked against it)", FutureWarning,
                      stacklevel=2)
        shape = tuple(in_shape) if not isinstance(in_shape, int) else (in_shape,)
    for arg, x in (("x1", x1), ("x2", x2t)):
        if x is not None and tuple(x.shape[1:]) != shape:
            raise ValueError(f"{fname}: {arg} must have shape (n, *in_shape) = (n, "
                             f"{', '.join(map(str, shape))}), got {tuple(x.shape)}")
    n1, n2 = x1.shape[0], (x1 if x2t is None else x2t).shape[0]
    nngp = torch.zeros(n1, n2, dtype=dtype)
    ntk = torch.zeros(n1, n2, dtype=dtype) if "ntk" in gets else None
    cov1 = torch.zeros(n1, dtype=dtype)
    cov2 = None if x2t is None else torch.zeros(n2, dtype=dtype)
    for s in range(n_samples):
        model = net.module(shape, seed=seed + s, dtype=dtype)
        with torch.no_grad():
            f1 = model(x1).reshape(n1, -1)
            f2 = f1 if x2t is None else model(x2t).reshape(n2, -1)
        n_out = f1.shape[1]
        nngp += f1 @ f2.T / n_out
        cov1 += (f1 * f1).sum(1) / n_out
        if cov2 is not None:
            cov2 += (f2 * f2).sum(1) / n_out
        if ntk is not None:
            # Structured path: the Dense layers' contributions are Gram products (ntk.py).
            ntk += empirical_ntk(model, x1, x2t, implementation="structured", mode="trace")
    nngp /= n_samples
    cov1 /= n_samples
    if cov2 is not None:
        cov2 /= n_samples
    if ntk is not None:
        ntk /= n_samples
    k = Kernel(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, x1_is_x2=x2 is None,
               is_gaussian=False, is_input=False, channels=n_out)
    return k if get is None else select_kernels(k, gets, single=isinstance(get, str))
