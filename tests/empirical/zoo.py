"""Models on which every empirical-NTK implementation must agree (float64, tiny sizes).

Each entry: name -> (make() -> (model, params or None), x1, x2, accelerated) where
`accelerated` is the set of parameter names the structured path must handle by its layer rules
(the rest go through autograd Jacobians). The reference `reference_ntk` is independent of the
library: one torch.autograd.grad call per input and output, on the model's own forward.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

import widenets as wn

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_module(stem: str):
    """A module of benchmarks/ loaded by path (registered under its file name, so that the
    benchmark scripts' own `import empirical_models` finds it)."""
    if stem not in sys.modules:
        spec = importlib.util.spec_from_file_location(stem, BENCHMARKS / f"{stem}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[stem] = mod
        spec.loader.exec_module(mod)
    return sys.modules[stem]


#: the benchmark's models (benchmarks/empirical_models.py), shared with the tests
MODELS = benchmark_module("empirical_models")

DT = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _x(shape, seed):
    return torch.randn(shape, generator=_gen(seed), dtype=DT)


def _init(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = model.to(DT)
    with torch.no_grad():
        for p in model.parameters():        # O(1) entries: the kernel is not dominated by one
            p.copy_(torch.randn(p.shape, generator=_gen(seed + p.numel()), dtype=DT) * 0.5)
    return model


class Residual(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.l1 = nn.Linear(d, d)
        self.l2 = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + self.l2(torch.relu(self.l1(h)))     # residual block
        return self.out(h)


class Norms(nn.Module):
    """LayerNorm and BatchNorm (eval, non-trivial running statistics) have layer rules, a bare
    gain used in forward the bare-parameter rule; PReLU goes through the generic autograd
    path."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(5, 6)
        self.ln = nn.LayerNorm(6)
        self.l2 = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.act = nn.PReLU(6)
        self.gain = nn.Parameter(torch.ones(3))
        self.l3 = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.ln(self.l1(x)))
        return self.l3(self.act(self.bn(self.l2(h)))) * self.gain


def _norms():
    m = _init(Norms(), 3)
    with torch.no_grad():
        m.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, 6, dtype=DT))
        m.bn.running_var.copy_(torch.linspace(0.5, 2.0, 6, dtype=DT))
    return m.eval(), None


class Tokens(nn.Module):
    """Embedding (with padding_idx) -> per-position Linear (T > 1) -> mean -> Linear."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 5, padding_idx=0)
        self.pos = nn.Linear(5, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, idx):
        h = torch.tanh(self.pos(self.emb(idx)))     # (n, T, 4)
        return self.head(h.mean(1))


class Shared(nn.Module):
    """One Linear called twice (its calls are extra positions) and an output of shape (2, 2)."""

    def __init__(self):
        super().__init__()
        self.sq = nn.Linear(4, 4)
        self.out = nn.Linear(4, 4)

    def forward(self, x):
        h = self.sq(torch.tanh(self.sq(x)))
        return self.out(torch.sin(h)).reshape(-1, 2, 2)


class Tied(nn.Module):
    """The same Parameter registered in two modules: handled by the generic path."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.c = nn.Linear(4, 2)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


class FunctionalUse(nn.Module):
    """A Linear weight also used outside its module (a tied output head): the probe's check
    must send it to the generic path."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.mid = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.tanh(self.mid(torch.tanh(self.inp(x))))
        return h @ self.mid.weight[:2].T


class Transformer(nn.Module):
    """nn.TransformerEncoderLayer (train mode, dropout 0) then a linear head on the mean over
    positions. The attention's projections are applied functionally (attention.py records
    them); seq-first layouts put the positions on axis 0 of the Linear/LayerNorm inputs."""

    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.enc = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, batch_first=batch_first)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.enc(x if self.batch_first else x.transpose(0, 1))
        h = h if self.batch_first else h.transpose(0, 1)
        return self.head(h.mean(1))


class TokenEncoder(nn.Module):
    """Token embedding + learned positions + a 2-layer nn.TransformerEncoder (sequence-first,
    pre-norm, eval mode: dropout off, fused fast path possible) with a key padding mask from
    token 0, mean-pooled, linear head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(9, 4)
        self.pos = nn.Parameter(torch.zeros(3, 1, 4))
        layer = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.1, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(4, 2)

    def forward(self, idx):
        h = self.emb(idx.T) + self.pos                     # (L, n, d)
        h = self.enc(h, src_key_padding_mask=idx == 0)
        return self.head(h.mean(0))


class CausalDecoder(nn.Module):
    """nn.TransformerDecoderLayer (batch_first) with a causal self-attention mask and
    cross-attention to a memory of another length (4 positions against 3)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(2, 4)
        self.mem = nn.Linear(3, 4)
        self.dec = nn.TransformerDecoderLayer(4, 2, 5, dropout=0.0, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):                                  # x: (n, 6, 2)
        tgt = self.inp(x[:, :3])                           # (n, 3, 4)
        memory = self.mem(torch.cat([x[:, 2:], x[:, 2:, :1] ** 2], -1))   # (n, 4, 3)
        mask = nn.Transformer.generate_square_subsequent_mask(3, dtype=x.dtype)
        h = self.dec(tgt, memory, tgt_mask=mask, tgt_is_causal=True)
        return self.head(h[:, -1])


def _resnet():
    # stem conv + BatchNorm (eval, non-trivial running statistics), a block with an identity
    # shortcut, a strided block with a 1x1 conv shortcut, global average pool
    m = _init(MODELS.ResNet((3, 4), depth=1, in_channels=2, out=2), 11)
    with torch.no_grad():
        for i, bn in enumerate(b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
            c = bn.num_features
            bn.running_mean.copy_(torch.linspace(-0.3, 0.2, c, dtype=DT) * (i + 1) / 3)
            bn.running_var.copy_(torch.linspace(0.6, 1.7, c, dtype=DT))
    return m.eval(), None


class PatchViT(nn.Module):
    """ViT-style: 2x2 patches by a strided Conv2d, positions, one nn.MultiheadAttention with
    separate q/k/v weights (kdim, vdim differ from embed_dim), no bias, need_weights left at
    True (the weights are returned and used), then a LayerNorm and a head on the mean token."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(2, 4, 2, stride=2)
        self.pos = nn.Parameter(torch.zeros(4, 4))
        self.kv = nn.Linear(4, 3)
        self.attn = nn.MultiheadAttention(4, 2, bias=False, kdim=3, vdim=3, batch_first=True)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):                                  # (n, 2, 4, 4)
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos   # (n, 4 patches, 4)
        kv = self.kv(t)
        h, w = self.attn(t, kv, kv)
        h = self.norm(h + t) * (1 + w.sum(-1, keepdim=True))
        return self.head(h.mean(1))


class TemperatureAttention(nn.MultiheadAttention):
    """A customised attention: a learned temperature inside the softmax (here on the queries,
    before the module's own projections). Its forward is not nn.MultiheadAttention's, so its
    parameters must go through the exact autograd path."""

    def __init__(self, d, h):
        super().__init__(d, h, batch_first=True)
        self.log_t = nn.Parameter(torch.zeros(()))

    def forward(self, query, key, value, **kwargs):
        return super().forward(query * self.log_t.exp(), key, value, **kwargs)


class CustomAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.attn = TemperatureAttention(4, 2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


class BareParams(nn.Module):
    """Bare parameters used in forward: a class token (expand, then cat), learned positions
    added in place, a gain used twice; `mixed` is used elementwise and inside torch.diag, and
    `log_scale` only through exp(): those two must go to the autograd path (their rewritten
    uses miss part of the gradient)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos = nn.Parameter(torch.zeros(4, 4))
        self.gain = nn.Parameter(torch.ones(4))
        self.mixed = nn.Parameter(torch.ones(4))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.head = nn.Linear(4, 2)

    def forward(self, x):                                  # x: (n, 3, 2)
        t = self.lin(x)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
        h += self.pos
        h = torch.tanh(h) * self.gain
        h = torch.sin(h * self.gain) * self.mixed
        return self.head((h.mean(1) @ torch.diag(self.mixed)) * self.log_scale.exp())


def _mlp():
    m = _init(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(),
                            nn.Linear(8, 3)), 0)
    return m, None


def _cnn():
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 3, 2, padding="same", padding_mode="reflect"), nn.BatchNorm2d(3), nn.Tanh(),
        nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(3, 2))
    m = _init(m, 1)
    with torch.no_grad():
        m[5].running_mean.copy_(torch.tensor([0.3, -0.2, 0.1], dtype=DT))
        m[5].running_var.copy_(torch.tensor([0.5, 2.0, 1.3], dtype=DT))
    return m.eval(), None


def _grouped():
    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(4, 6, 3, groups=2, dilation=2, padding=2, padding_mode="circular")
            self.c2 = nn.Conv1d(6, 6, 3, groups=3, stride=2, bias=False)
            self.c3 = nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1),
                                dilation=(2, 1, 1), groups=2)
            self.out = nn.Linear(6 * 3 + 4 * 4 * 2 * 5, 3)

        def forward(self, x):
            a = self.c2(torch.relu(self.c1(x[:, :4, :7])))            # (n, 6, 3)
            b = torch.tanh(self.c3(x[:, 4:].reshape(-1, 2, 4, 5, 4)))  # (n, 4, 4, 2, 5)
            return self.out(torch.cat([a.flatten(1), b.flatten(1)], 1))
    return _init(G(), 2), None


def _frozen():
    m, _ = _mlp()
    m[0].weight.requires_grad_(False)
    m[4].bias.requires_grad_(False)
    return m, None


def _function():
    g = _gen(7)
    params = {"w1": torch.randn(4, 6, generator=g, dtype=DT),
              "b1": torch.randn(6, generator=g, dtype=DT),
              "w2": torch.randn(6, 2, generator=g, dtype=DT)}

    def f(p, x):
        return torch.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]

    return f, params


def _widenets_dense():
    net = wn.serial(wn.Dense(8, w_std=1.5, b_std=0.3), wn.Relu(),
                    wn.FanOut(2), wn.parallel(wn.Dense(6, w_std=1.2, b_std=None),
                                              wn.Dense(6, w_std=0.9, b_std=0.2,
                                                       parameterization="standard")),
                    wn.FanInSum(), wn.Erf(), wn.Dense(3, w_std=1.1, b_std=0.1))
    return net.module((5,), seed=0, dtype=DT), None


def _widenets_conv():
    net = wn.serial(wn.Conv(4, (3, 2), stride=(2, 1), padding="SAME", w_std=1.3, b_std=0.2),
                    wn.Relu(), wn.LayerNorm(affine=True),
                    wn.Conv(3, 2, padding="CIRCULAR", w_std=1.1, b_std=None,
                            parameterization="standard"),
                    wn.Erf(), wn.Flatten(), wn.Dense(2, w_std=1.0, b_std=0.1))
    return net.module((2, 5, 4), seed=0, dtype=DT), None


def _tokens():
    return _init(Tokens(), 4), None


ENC_LAYER = {f"enc.{p}" for p in (
    "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias", "norm1.weight",
    "norm1.bias", "norm2.weight", "norm2.bias", "self_attn.in_proj_weight",
    "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias")}
X5 = (_x((5, 5), 10), _x((3, 5), 11))
TOK = (torch.tensor([[1, 2, 0, 2], [3, 3, 10, 0], [0, 0, 5, 1], [7, 1, 2, 2], [4, 9, 9, 9]]),
       torch.tensor([[2, 2, 1, 0], [10, 3, 3, 4], [0, 0, 0, 6]]))

ZOO = {
    "mlp": (_mlp, _x((5, 6), 12), _x((3, 6), 13),
            {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}),
    "cnn_pool_stride": (_cnn, _x((5, 2, 8, 8), 14), _x((3, 2, 8, 8), 15),
                        {"0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias",
                         "5.weight", "5.bias", "9.weight", "9.bias"}),
    # (n, 6, 80): channels 0-3 (first 7 steps) feed the Conv1d stack, channels 4-5 reshape to a
    # (2, 4, 5, 4) volume for the Conv3d.
    "grouped_dilated_conv": (_grouped, _x((5, 6, 80), 16), _x((3, 6, 80), 27),
                             {"c1.weight", "c1.bias", "c2.weight", "c3.weight", "c3.bias",
                              "out.weight", "out.bias"}),
    "residual": (lambda: (_init(Residual(6), 5), None), *X5,
                 {"inp.weight", "inp.bias", "l1.weight", "l1.bias", "l2.weight", "out.weight",
                  "out.bias"}),
    "layernorm_batchnorm_eval": (_norms, *X5,
                                 {"l1.weight", "l1.bias", "l2.weight", "l2.bias", "l3.weight",
                                  "l3.bias", "ln.weight", "ln.bias", "bn.weight", "bn.bias",
                                  "gain"}),
    "bare_parameters": (lambda: (_init(BareParams(), 16), None), _x((5, 3, 2), 42),
                        _x((3, 3, 2), 43),
                        {"lin.weight", "lin.bias", "cls", "pos", "gain", "head.weight",
                         "head.bias"}),
    "embedding": (_tokens, *TOK, {"emb.weight", "pos.weight", "pos.bias", "head.weight",
                                  "head.bias"}),
    "shared_multi_output": (lambda: (_init(Shared(), 6), None), _x((5, 4), 17), _x((3, 4), 18),
                            {"sq.weight", "sq.bias", "out.weight", "out.bias"}),
    "tied": (lambda: (_init(Tied(), 8), None), _x((5, 4), 19), _x((3, 4), 20),
             {"a.bias", "b.bias", "c.weight", "c.bias"}),
    "functional_use": (lambda: (_init(FunctionalUse(), 9), None), _x((5, 3), 21),
                       _x((3, 3), 22), {"inp.weight", "inp.bias", "mid.bias"}),
    "partly_frozen": (_frozen, _x((5, 6), 23), _x((3, 6), 24),
                      {"0.bias", "2.weight", "2.bias", "4.weight"}),
    # b1 is added to the batch: a bare parameter; w1, w2 enter through matrix products
    "function": (_function, _x((5, 4), 25), _x((3, 4), 26), {"b1"}),
    "transformer": (lambda: (_init(Transformer(True), 10), None), _x((5, 3, 4), 28),
                    _x((3, 3, 4), 29), ENC_LAYER | {"head.weight", "head.bias"}),
    # sequence-first: the Linear/LayerNorm inputs are (L, n, d); the probe finds batch axis 1
    # (with L = 2 = the probe size only the per-input check of make_plan tells the axes apart)
    "transformer_seq_first": (lambda: (_init(Transformer(False), 10), None), _x((5, 3, 4), 28),
                              _x((3, 3, 4), 29), ENC_LAYER | {"head.weight", "head.bias"}),
    "transformer_seq_first_length_2": (lambda: (_init(Transformer(False), 10), None),
                                       _x((5, 2, 4), 40), _x((3, 2, 4), 41),
                                       ENC_LAYER | {"head.weight", "head.bias"}),
    "widenets_conv_layernorm": (_widenets_conv, _x((5, 2, 5, 4), 30), _x((3, 2, 5, 4), 31),
                                {"0.weight", "0.bias", "2.weight", "2.bias", "3.weight",
                                 "6.weight", "6.bias"}),
    "widenets_dense": (_widenets_dense, *X5,
                       {"0.weight", "0.bias", "3.branches.0.weight", "3.branches.1.weight",
                        "3.branches.1.bias", "6.weight", "6.bias"}),
}

TOK_ENC = (torch.tensor([[1, 2, 0], [3, 3, 8], [5, 0, 0], [7, 1, 2], [4, 4, 4]]),
           torch.tensor([[2, 2, 1], [8, 3, 0], [6, 6, 6]]))
ATTN = "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"


def _layer_names(prefix, names):
    return {f"{prefix}.{n}" for n in names}


ZOO.update({
    "token_transformer_encoder": (
        lambda: (_init(TokenEncoder(), 12).eval(), None), *TOK_ENC,
        {"emb.weight", "pos", "head.weight", "head.bias"}
        | {f"enc.layers.{i}.{p}" for i in range(2)
           for p in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
                     "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")
           + tuple(f"self_attn.{a}" for a in ATTN)}),
    "causal_decoder_layer": (
        lambda: (_init(CausalDecoder(), 13), None), _x((5, 6, 2), 32), _x((3, 6, 2), 33),
        {"inp.weight", "inp.bias", "mem.weight", "mem.bias", "head.weight", "head.bias"}
        | _layer_names("dec", ("linear1.weight", "linear1.bias", "linear2.weight",
                               "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight",
                               "norm2.bias", "norm3.weight", "norm3.bias"))
        | _layer_names("dec.self_attn", ATTN) | _layer_names("dec.multihead_attn", ATTN)),
    "resnet_batchnorm_eval": (
        _resnet, _x((5, 2, 6, 6), 34), _x((3, 2, 6, 6), 35),
        {"stem.0.weight", "stem.1.weight", "stem.1.bias", "fc.weight", "fc.bias"}
        | {f"blocks.{i}.{p}" for i in range(2) for p in
           ("c1.weight", "b1.weight", "b1.bias", "c2.weight", "b2.weight", "b2.bias")}
        | {"blocks.1.short.0.weight", "blocks.1.short.1.weight", "blocks.1.short.1.bias"}),
    "vit_patch_attention": (
        lambda: (_init(PatchViT(), 14), None), _x((5, 2, 4, 4), 36), _x((3, 2, 4, 4), 37),
        {"patch.weight", "patch.bias", "pos", "kv.weight", "kv.bias", "norm.weight", "norm.bias",
         "head.weight", "head.bias", "attn.q_proj_weight", "attn.k_proj_weight",
         "attn.v_proj_weight", "attn.out_proj.weight"}),
    "custom_attention_temperature": (
        lambda: (_init(CustomAttention(), 15), None), _x((5, 3, 3), 38), _x((3, 3, 3), 39),
        {"inp.weight", "inp.bias", "head.weight", "head.bias"}),
})


def reference_ntk(model, params, x1, x2) -> torch.Tensor:
    """(n1, n2, O, O) by one autograd.grad per input and output on the model's own forward."""
    if params is None:
        leaves = [p for p in model.parameters() if p.requires_grad]

        def f(x):
            return model(x)
    else:
        leaves = [v.detach().clone().requires_grad_() for v in params.values()]
        names = list(params)

        def f(x):
            return model(dict(zip(names, leaves, strict=True)), x)

    def jac(x):
        rows = []
        for i in range(x.shape[0]):
            out = f(x[i:i + 1]).reshape(-1)
            per_out = []
            for a in range(out.shape[0]):
                g = torch.autograd.grad(out[a], leaves, retain_graph=True, allow_unused=True)
                per_out.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1)
                                          for gi, p in zip(g, leaves, strict=True)]))
            rows.append(torch.stack(per_out))
        return torch.stack(rows)                      # (n, O, P)

    j1, j2 = jac(x1), jac(x2)
    return torch.einsum("iap,jbp->ijab", j1, j2)
