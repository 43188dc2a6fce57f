"""Bad input to the empirical kernels: clear errors naming the function and the argument."""

import pytest
import torch
from torch import nn

import widenets as wn

DT = torch.float64


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)


X = torch.randn(3, 4, dtype=DT)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "trace_mean"}, r"empirical_ntk: mode must be one of \('trace', 'full', 'diag"),
    ({"implementation": "fast"}, r"empirical_ntk: implementation must be one of"),
    ({"batch_size": 0}, r"empirical_ntk: batch_size must be a positive int"),
    ({"batch_size": -2}, r"batch_size must be a positive int"),
    ({"batch_size": 1.5}, r"batch_size must be a positive int"),
    ({"batch_size": True}, r"batch_size must be a positive int"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wn.empirical_ntk(model(), X, **kwargs)


def test_nngp_bad_mode():
    with pytest.raises(ValueError, match=r"empirical_nngp: mode must be one of"):
        wn.empirical_nngp(model(), X, mode="sum")


@pytest.mark.parametrize("impl", ["jacobian", "ntvp", "structured", "auto"])
def test_input_shape_the_model_rejects(impl):
    with pytest.raises(ValueError, match=r"empirical_ntk: the model rejected x1 of shape "
                                         r"\(3, 7\).*mat1 and mat2") as info:
        wn.empirical_ntk(model(), torch.randn(3, 7, dtype=DT), implementation=impl)
    assert isinstance(info.value.__cause__, RuntimeError)      # the model's own error, chained


def test_x2_shape_mismatch_and_rejection():
    with pytest.raises(ValueError, match=r"x1 and x2 must have the same shape"):
        wn.empirical_ntk(model(), X, torch.randn(2, 5, dtype=DT))
    with pytest.raises(ValueError, match=r"model rejected x1 .*dtype torch.float32"):
        wn.empirical_ntk(model(), X.float())


def test_inputs_without_batch_axis_or_nan():
    with pytest.raises(ValueError, match=r"x1 must have a non-empty batch axis"):
        wn.empirical_ntk(model(), torch.tensor(1.0, dtype=DT))
    bad = X.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"empirical_ntk: x1 contains 1 NaN"):
        wn.empirical_ntk(model(), bad)
    with pytest.raises(TypeError, match=r"x2 must be a torch.Tensor or numpy array"):
        wn.empirical_ntk(model(), X, [[1.0, 2.0, 3.0, 4.0]])


def test_no_trainable_parameters():
    m = model()
    m.requires_grad_(False)
    with pytest.raises(ValueError, match=r"empirical_ntk: the model has no trainable parameters"):
        wn.empirical_ntk(m, X)


def test_params_keys_must_match():
    m = model()
    params = {k: v.detach() for k, v in m.named_parameters()}
    params.pop("2.bias")
    params["2.weights"] = torch.zeros(2, 5, dtype=DT)
    with pytest.raises(ValueError, match=r"params keys must be the model's trainable "
                                         r"parameter names; missing \['2.bias'\], "
                                         r"unexpected \['2.weights'\]"):
        wn.empirical_ntk(m, X, params=params)
    m[0].weight.requires_grad_(False)
    full = {k: v.detach() for k, v in m.named_parameters()}
    with pytest.raises(ValueError, match=r"unexpected \['0.weight'\] \(frozen parameters"):
        wn.empirical_ntk(m, X, params=full)
    good = {k: v.detach() for k, v in m.named_parameters() if v.requires_grad}
    good["0.bias"] = torch.zeros(3, dtype=DT)
    with pytest.raises(ValueError, match=r"params\['0.bias'\] must have shape \(5,\)"):
        wn.empirical_ntk(m, X, params=good)


def test_function_needs_params():
    with pytest.raises(ValueError, match=r"model is a function f\(params, x\), so params"):
        wn.empirical_ntk(lambda p, x: x @ p["w"], X)
    with pytest.raises(TypeError, match=r"params\['w'\] must be a floating-point tensor"):
        wn.empirical_ntk(lambda p, x: x @ p["w"], X, params={"w": [1.0]})
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module or a function"):
        wn.empirical_ntk("resnet", X)


def test_batchnorm_in_train_mode_is_an_error():
    m = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)).to(DT)
    with pytest.raises(ValueError, match=r"module '1' \(BatchNorm1d\) normalizes with batch "
                                         r"statistics.*call model.eval\(\)"):
        wn.empirical_ntk(m, X)
    before = m[1].running_mean.clone()
    m.eval()
    wn.empirical_ntk(m, X)                                  # fine in eval mode
    assert torch.equal(m[1].running_mean, before)           # and nothing was updated
    m[1].track_running_stats = False
    with pytest.raises(ValueError, match=r"normalizes with batch statistics"):
        wn.empirical_ntk(m, X)


def test_dropout_in_train_mode_is_an_error():
    m = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 2)).to(DT)
    with pytest.raises(ValueError, match=r"Dropout, p=0.5\) is random in train mode"):
        wn.empirical_ntk(m, X)
    assert wn.empirical_ntk(m.eval(), X).shape == (3, 3)


def test_model_returning_a_tuple():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2).to(DT)

        def forward(self, x):
            return self.lin(x), x

    with pytest.raises(TypeError, match=r"the model must return one tensor"):
        wn.empirical_ntk(Two(), X)


def test_taylor_bad_degree_and_params():
    with pytest.raises(ValueError, match=r"taylor_expand: degree must be an int >= 1, got 0"):
        wn.taylor_expand(model(), 0)
    f_lin = wn.linearize(model())
    with pytest.raises(ValueError, match=r"params keys must be the expanded parameters; "
                                         r"missing \['2.bias'\]"):
        f_lin(X, {k: v for k, v in f_lin.p0.items() if k != "2.bias"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_kernel_is_an_error_with_a_dtype_aware_hint(dtype):
    """Outputs and gradients that overflow (a huge weight through exp) raise FloatingPointError,
    not a kernel of infs, and not the fixed-function check's "the model is random" (inf - inf
    = NaN between two identical passes; caught before the fix); "use float64" is advised only
    when not already float64 (mutation: the float32 hint printed for a float64 model)."""
    m = nn.Sequential(nn.Linear(4, 1)).to(dtype)
    with torch.no_grad():
        m[0].weight.fill_(1e3 if dtype == torch.float64 else 1e2)

    class Exp(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = m

        def forward(self, x):
            return torch.exp(self.inner(x))

    with pytest.raises(FloatingPointError, match=r"empirical_ntk: the kernel has \d+ "
                                                 r"non-finite entries") as err:
        wn.empirical_ntk(Exp(), torch.ones(2, 4, dtype=dtype))
    assert ("use float64" in str(err.value)) == (dtype == torch.float32)
