"""A registry of every layer and combinator, each inside a small network, for invariant tests."""

import torch

import widenets as wn

D = wn.Dense


def _res_block(width, act):
    return wn.serial(wn.FanOut(2),
                     wn.parallel(wn.serial(act, D(width, w_std=1.3, b_std=0.1)), wn.Identity()),
                     wn.FanInSum())


def nets(width=16, parameterization="ntk"):
    """name -> network; widths are irrelevant to the analytic kernel except in standard param."""
    def d(out=width, w=1.4, b=0.2):
        return D(out, w_std=w, b_std=b, parameterization=parameterization)

    acts = {
        "relu": wn.Relu(), "leaky_relu": wn.LeakyRelu(0.1), "abrelu": wn.ABRelu(-0.4, 1.2),
        "abs": wn.Abs(), "identity": wn.Identity(), "erf": wn.Erf(), "gelu": wn.Gelu(),
        "sin": wn.Sin(1.1, 0.9, 0.3),
        "elementwise_tanh": wn.Elementwise(torch.tanh, degree=96, name="tanh"),
        # the rest of NT's catalogue (issue 11)
        "cos": wn.Cos(1.1, 0.9, 0.3), "rbf": wn.Rbf(0.6), "gabor": wn.Gabor(),
        "exp": wn.Exp(0.8, 0.5), "gaussian": wn.Gaussian(1.2, -0.7), "sign": wn.Sign(),
        "sigmoid_like": wn.SigmoidLike(), "polynomial": wn.Polynomial([0.2, 1.0, 0.3]),
        "monomial_3": wn.Monomial(3), "rectified_monomial_0": wn.RectifiedMonomial(0),
        "rectified_monomial_2": wn.RectifiedMonomial(2), "exp_normalized": wn.ExpNormalized(),
    }
    out = {f"dense_{name}": wn.serial(d(), act, d(3)) for name, act in acts.items()}
    out["dense_only"] = wn.serial(d(3))
    out["dense_no_bias"] = wn.serial(D(width, w_std=1.2, b_std=None,
                                       parameterization=parameterization), wn.Relu(), d(3))
    out["deep_relu"] = wn.serial(*[m for _ in range(4) for m in (d(), wn.Relu())], d(3))
    out["residual"] = wn.serial(d(), _res_block(width, wn.Relu()), _res_block(width, wn.Erf()),
                                wn.Relu(), d(3))
    out["concat"] = wn.serial(d(), wn.FanOut(2), wn.parallel(wn.serial(wn.Relu(), d(width)),
                                                             wn.serial(wn.Erf(), d(2 * width))),
                              wn.FanInConcat(), wn.Gelu(), d(3))
    out["parallel_sum_of_denses"] = wn.serial(d(), wn.Relu(), wn.FanOut(3),
                                              wn.parallel(d(), d(), d()), wn.FanInSum(),
                                              wn.Relu(), d(3))
    out["fan_in_prod"] = wn.serial(d(), wn.Relu(), wn.FanOut(2),
                                   wn.parallel(d(), wn.serial(d(), wn.Gabor())), wn.FanInProd(),
                                   d(3))
    out["repeat"] = wn.serial(d(), wn.repeat(wn.serial(wn.Erf(), d()), 3), d(3))
    return out
