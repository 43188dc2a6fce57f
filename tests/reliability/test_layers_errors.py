"""Issue 17 "errors that mislead", layer side: each error names the function, the argument,
what was expected and what arrived. Before the fix: IndexError for 0-row inputs, "overflow, use
float64" for zero features / LayerNorm(eps=0) on zero inputs / NaN-returning activations,
nonsense or deep torch errors for non-tensor or non-elementwise functions, an in-place autograd
error through a ReLU kernel, a meta-tensor crash and a raw copy_ error in module_from.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import widenets as wn

NET = wn.serial(wn.Dense(4), wn.Relu(), wn.Dense(1))


@pytest.mark.parametrize("x, match", [
    (torch.zeros(0, 3), r"Serial\.kernel: x1 must hold at least one input \(row\), got shape "
                        r"\(0, 3\)"),
    (torch.zeros(2, 0), r"Serial\.kernel: x1 must have at least one feature per input, got "
                        r"shape \(2, 0\)"),
    (torch.zeros(2, 0, 4), r"Serial\.kernel: x1 must have at least one feature"),
    (torch.zeros(2, 3, device="meta"), r"Serial\.kernel: x1 must hold values, got a meta "
                                       r"tensor"),
])
def test_degenerate_inputs(x, match):
    with pytest.raises(ValueError, match=match):
        NET.kernel(x)


def test_zero_rows_in_x2():
    with pytest.raises(ValueError, match=r"Serial\.kernel: x2 must hold at least one input"):
        NET.kernel(torch.ones(2, 3), torch.zeros(0, 3))


def test_layernorm_eps_zero_on_zero_input_says_so():
    net = wn.serial(wn.Dense(4), wn.LayerNorm(eps=0), wn.Relu(), wn.Dense(1))
    with pytest.raises(ValueError, match=r"LayerNorm\.kernel: eps=0 and 1 input variance\(s\) "
                                         r"are 0"):
        net.kernel(torch.cat([torch.zeros(1, 3), torch.ones(1, 3)]))


def test_activation_returning_nan_is_not_called_overflow():
    net = wn.serial(wn.Dense(4), wn.Elementwise(torch.log), wn.Dense(1))
    with pytest.raises(FloatingPointError, match=r"Elementwise\[log\]\.kernel: .*NaN or "
                                                 r"infinite.*not an overflow"):
        net.kernel(torch.ones(2, 3))


class _NanAct(wn.layers.activations.Activation):
    """A closed form with a domain error (sqrt of a negative number)."""

    def forward(self, x):  # pragma: no cover - kernel only
        return x

    def t_and_tdot(self, k11, k22, k12, want_tdot):
        t = torch.sqrt(k12 - 10.0)
        return t, (torch.ones_like(k12) if want_tdot else None)


def test_nan_from_a_closed_form_names_the_layer_not_overflow():
    net = wn.serial(wn.Dense(4), _NanAct(), wn.Dense(1))
    with pytest.raises(FloatingPointError, match=r"NaN \(first at layer 2 of 3: _NanAct\) "
                                                 r"from finite values \(not an overflow"):
        net.kernel(torch.ones(2, 3, dtype=torch.float64))


def test_overflow_still_says_overflow():
    net = wn.serial(*[m for _ in range(200) for m in (wn.Dense(8, w_std=4.0), wn.Relu())],
                    wn.Dense(1))
    with pytest.raises(FloatingPointError, match=r"overflowed to infinity in torch\.float32 "
                                                 r"\(first at layer \d+ of 401"):
        net.kernel(torch.ones(2, 3), dtype=torch.float32)


def test_float64_overflow_does_not_advise_float64():
    """Already float64: the advice is to scale the inputs (mutation: the float32 advice
    "use dtype=torch.float64" printed for a float64 kernel)."""
    net = wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1))
    with pytest.raises(FloatingPointError, match=r"overflowed to infinity in torch\.float64 .*"
                                                 r"scale the inputs down") as err:
        net.kernel(torch.ones(2, 3, dtype=torch.float64) * 1e200)
    assert "dtype=torch.float64" not in str(err.value)


def test_conv_overflow_in_the_full_layout_is_called_an_overflow():
    """Images so large that their inner products overflow: the full-layout path (per-block
    kernels, no single input Kernel) diagnoses the first bad input pair and says the inputs
    overflowed, not "NaN from finite values (not an overflow)" as before (the inf became a
    NaN in ReLU's normalization)."""
    net = wn.serial(wn.Conv(4, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    x[1] *= 1e200
    with pytest.raises(FloatingPointError, match=r"overflowed to infinity in torch\.float64 "
                                                 r"\(already in the inputs' inner products"):
        net.kernel(x)


@pytest.mark.parametrize("fn, exc, match", [
    (np.tanh, TypeError, r"Elementwise: fn=tanh has no autograd derivative.*numpy.*torch\.tanh"),
    (math.tanh, TypeError, r"Elementwise: fn must map a torch\.Tensor to a torch\.Tensor "
                           r"elementwise; fn=tanh .*raised"),
    (lambda z: 1.0, TypeError, r"Elementwise: fn must return a torch\.Tensor, got float"),
    (lambda z: z.sum(), ValueError, r"Elementwise: fn must be elementwise \(output shape = "
                                    r"input shape\), got output shape \(\)"),
    (lambda z: z - z.mean(), ValueError, r"Elementwise: fn must be elementwise: changing input "
                                         r"entry \(1, 1\)"),
    (torch.sign, ValueError, r"Elementwise: fn=sign varies but its autograd derivative is zero"
                             r".*pass dfn="),
    (lambda z: (z > 0).double(), TypeError, r"Elementwise: fn=<lambda> has no autograd "
                                            r"derivative.*step function.*dfn="),
    (lambda z: z.to(torch.int64), TypeError, r"Elementwise: fn must return floating-point"),
])
def test_elementwise_contract(fn, exc, match):
    with pytest.raises(exc, match=match):
        wn.Elementwise(fn)


def test_step_function_with_dfn_is_accepted():
    """The user takes responsibility for the derivative: the NNGP is the arc-cosine kernel of
    degree 0, T = (π - θ)/(2π) (Cho & Saul), checked here on a pair."""
    act = wn.Elementwise(lambda z: (z > 0).to(z.dtype), dfn=torch.zeros_like, degree=400)
    k = torch.tensor([1.0], dtype=torch.float64)
    c = 0.3
    got = float(act.t(k, k, k * c))
    assert abs(got - (math.pi - math.acos(c)) / (2 * math.pi)) < 1e-3


def test_constant_function_is_accepted_with_zero_tdot():
    act = wn.Elementwise(lambda z: torch.full_like(z, 2.0))
    k = torch.tensor([0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(act.t(k, k, 0.2 * k), torch.full_like(k, 4.0), rtol=1e-10,
                               atol=0)
    assert torch.equal(act.tdot(k, k, 0.2 * k), torch.zeros_like(k))


@pytest.mark.parametrize("act", [wn.Relu(), wn.Erf(), wn.LeakyRelu(0.3)], ids=repr)
def test_autograd_through_the_kernel_matches_finite_differences(act):
    """d(sum of the NTK)/dx by autograd equals central finite differences (float64, step
    1e-6): the old ReLU path failed with an in-place autograd error."""
    torch.manual_seed(0)
    net = wn.serial(wn.Dense(6, b_std=0.2), act, wn.Dense(6), act, wn.Dense(1))
    x0 = torch.randn(3, 4, dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    net.kernel(x, get="ntk").sum().backward()
    h = 1e-6
    fd = torch.zeros_like(x0)
    with torch.no_grad():
        for idx in np.ndindex(*x0.shape):
            e = torch.zeros_like(x0)
            e[idx] = h
            fd[idx] = (net.kernel(x0 + e, get="ntk").sum()
                       - net.kernel(x0 - e, get="ntk").sum()) / (2 * h)
    torch.testing.assert_close(x.grad, fd, rtol=1e-5, atol=1e-7)


def test_autograd_through_quadrature_is_refused_not_silent():
    net = wn.serial(wn.Dense(4), wn.Elementwise(torch.tanh), wn.Dense(1))
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"Elementwise\[tanh\]\.kernel: autograd "
                                                  r"through the quadrature"):
        net.kernel(x)
    with torch.no_grad():
        assert torch.isfinite(net.kernel(x).ntk).all()


def test_module_from_shape_mismatch():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    lifted = wn.lift(model, (4,))
    other = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    with pytest.raises(ValueError, match=r"Lifted\.module_from: original\.0\.weight has shape "
                                         r"\(16, 4\), expected \(8, 4\)"):
        lifted.module_from(other)
    with pytest.raises(ValueError, match=r"Lifted\.module_from: original has no submodule"):
        lifted.module_from(nn.Sequential(nn.Linear(4, 8)))
    with pytest.raises(TypeError, match=r"Lifted\.module_from: original must be"):
        lifted.module_from("model")
    # the matching module still works and reproduces the forward
    x = torch.randn(3, 4)
    torch.testing.assert_close(lifted.module_from(model)(x), model(x))
