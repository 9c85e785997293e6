"""Proof of layouts: every registry layer with weights, converted through the public API, computes in MLX
what it computes in torch (torch is the oracle, MLX's own layer judges the layout).

For each case: the torch layer gets random weights and running statistics, ``torch2mlx.convert(layer,
"x.safetensors")`` writes it, the mlx.nn equivalent loads the file with ``load_weights(strict=True)``
and both run on one random input (channels-first in torch, channels-last in MLX); the outputs agree to
1e-5 (fp32). Then ``to_torch`` takes the file back into a fresh torch layer (``load_state_dict(strict=True)``)
that reproduces the original, and random MLX-layout weights go back to a torch layer that computes what
the MLX layer computes (MLX-trained weights load into the original torch model).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
import torch
import torch.nn as nn
from mlx.utils import tree_flatten

import torch2mlx
from torch2mlx.core import registry

TOL = 1e-5
RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _ids(*shape, high=10):
    return RNG.integers(0, high, shape).astype(np.int64)


def _cl(x):
    """torch channels-first (N, C, *S) -> MLX channels-last (N, *S, C)."""
    return np.moveaxis(x, 1, -1)


class _Stack(mnn.Module):
    """torch's num_layers > 1 as MLX single-layer recurrent modules under layers.K (the registry's names)."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
            x = x[0] if isinstance(x, tuple) else x
        return x


def _biased(module):
    """mlx.nn's transformer layers build attention without biases; torch's has them."""
    for name, child in list(module.items()):
        kids = child if isinstance(child, list) else [child]
        for i, c in enumerate(kids):
            if isinstance(c, mnn.MultiHeadAttention):
                fresh = mnn.MultiHeadAttention(c.query_proj.weight.shape[1], c.num_heads, bias=True)
                if isinstance(child, list):
                    child[i] = fresh
                else:
                    module[name] = fresh
            elif isinstance(c, mnn.Module):
                _biased(c)
    return module


def _call(m, *x):
    return m(*x)


@dataclass
class Case:
    torch: Callable
    mlx: Callable
    inputs: Callable  # -> list of numpy arrays (torch's layout)
    call_t: Callable = _call
    call_m: Callable = _call
    image: bool = False  # first input and output channels-first in torch, channels-last in MLX


def _image(t, m, shape):
    return Case(t, m, lambda: [_x(*shape)], image=True)


def _gpt_oss_router():
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssTopKRouter

    cfg = types.SimpleNamespace(num_experts_per_tok=2, num_local_experts=6, hidden_size=8)
    return _seeded(GptOssTopKRouter(cfg))


def _mixtral_router():
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    cfg = types.SimpleNamespace(num_experts_per_tok=2, num_local_experts=6, hidden_size=8, router_jitter_noise=0.0)
    return _seeded(MixtralTopKRouter(cfg))


def _seeded(module):
    """The routers' weights come from torch.empty: memory garbage, sometimes huge or denormal, would make the
    comparison's tolerance depend on what was in memory. Seeded values instead."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def _family_embedding():
    """A transformers-style embedding table the registry recognises by name (no nn.Embedding base)."""

    def forward(self, ids):
        return nn.functional.embedding(ids, self.weight)

    cls = type(
        "ProbeTableEmbedding",
        (nn.Module,),
        {"forward": forward, "__module__": "transformers.models.probe.modeling_probe"},
    )
    m = cls()
    m.weight = nn.Parameter(torch.randn(10, 4))
    return m


def _transformers(path):
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


CASES = {
    # linear and embeddings
    "Linear": Case(lambda: nn.Linear(6, 5), lambda: mnn.Linear(6, 5), lambda: [_x(3, 6)]),
    "Linear no bias": Case(
        lambda: nn.Linear(6, 5, bias=False), lambda: mnn.Linear(6, 5, bias=False), lambda: [_x(2, 3, 6)]
    ),
    "Bilinear": Case(lambda: nn.Bilinear(4, 3, 5), lambda: mnn.Bilinear(4, 3, 5), lambda: [_x(2, 4), _x(2, 3)]),
    "Embedding": Case(lambda: nn.Embedding(10, 4, padding_idx=0), lambda: mnn.Embedding(10, 4), lambda: [_ids(2, 3)]),
    # convolutions (stride, padding, dilation, groups where MLX has them)
    "Conv1d groups": _image(
        lambda: nn.Conv1d(4, 6, 3, padding=1, groups=2), lambda: mnn.Conv1d(4, 6, 3, padding=1, groups=2), (2, 4, 9)
    ),
    "Conv1d stride dilation": _image(
        lambda: nn.Conv1d(3, 5, 3, stride=2, dilation=2, bias=False),
        lambda: mnn.Conv1d(3, 5, 3, stride=2, dilation=2, bias=False),
        (2, 3, 15),
    ),
    "Conv2d": _image(
        lambda: nn.Conv2d(3, 5, (3, 2), stride=2), lambda: mnn.Conv2d(3, 5, (3, 2), stride=2), (2, 3, 8, 7)
    ),
    "Conv2d padding dilation groups": _image(
        lambda: nn.Conv2d(6, 9, 3, padding=2, dilation=2, groups=3),
        lambda: mnn.Conv2d(6, 9, 3, padding=2, dilation=2, groups=3),
        (1, 6, 7, 8),
    ),
    "Conv3d": _image(lambda: nn.Conv3d(2, 3, 2), lambda: mnn.Conv3d(2, 3, 2), (1, 2, 4, 5, 3)),
    "Conv3d stride padding dilation": _image(
        lambda: nn.Conv3d(2, 4, (3, 2, 3), stride=(2, 1, 2), padding=1, dilation=(1, 2, 1)),
        lambda: mnn.Conv3d(2, 4, (3, 2, 3), stride=(2, 1, 2), padding=1, dilation=(1, 2, 1)),
        (1, 2, 5, 6, 5),
    ),
    "ConvTranspose1d": _image(
        lambda: nn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1),
        lambda: mnn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1),
        (2, 4, 5),
    ),
    "ConvTranspose1d dilation": _image(
        lambda: nn.ConvTranspose1d(3, 2, 3, dilation=2, bias=False),
        lambda: mnn.ConvTranspose1d(3, 2, 3, dilation=2, bias=False),
        (1, 3, 6),
    ),
    "ConvTranspose2d": _image(
        lambda: nn.ConvTranspose2d(3, 4, (2, 3), stride=2),
        lambda: mnn.ConvTranspose2d(3, 4, (2, 3), stride=2),
        (1, 3, 4, 5),
    ),
    "ConvTranspose2d padding dilation": _image(
        lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, dilation=2, output_padding=1),
        lambda: mnn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, dilation=2, output_padding=1),
        (2, 3, 4, 4),
    ),
    "ConvTranspose3d": _image(
        lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), lambda: mnn.ConvTranspose3d(2, 3, 2, stride=2), (1, 2, 3, 2, 3)
    ),
    "ConvTranspose3d padding": _image(
        lambda: nn.ConvTranspose3d(2, 3, 3, stride=2, padding=1, output_padding=1),
        lambda: mnn.ConvTranspose3d(2, 3, 3, stride=2, padding=1, output_padding=1),
        (1, 2, 3, 3, 2),
    ),
    # normalization
    "BatchNorm1d": _image(lambda: nn.BatchNorm1d(5), lambda: mnn.BatchNorm(5), (3, 5, 4)),
    "BatchNorm2d": _image(lambda: nn.BatchNorm2d(5), lambda: mnn.BatchNorm(5), (2, 5, 3, 3)),
    "BatchNorm3d": Case(
        lambda: nn.BatchNorm3d(4),
        lambda: mnn.BatchNorm(4),
        lambda: [_x(2, 4, 2, 3, 2)],
        # MLX BatchNorm takes at most 4-D input: the spatial axes flattened and restored
        call_m=lambda m, x: m(x.reshape(x.shape[0], -1, x.shape[-1])).reshape(x.shape),
        image=True,
    ),
    "SyncBatchNorm": _image(lambda: nn.SyncBatchNorm(5), lambda: mnn.BatchNorm(5), (2, 5, 3, 3)),
    "LayerNorm": Case(lambda: nn.LayerNorm(6), lambda: mnn.LayerNorm(6), lambda: [_x(3, 6)]),
    "LayerNorm no bias": Case(
        lambda: nn.LayerNorm(6, bias=False, eps=1e-6),
        lambda: mnn.LayerNorm(6, eps=1e-6, bias=False),
        lambda: [_x(2, 3, 6)],
    ),
    "RMSNorm": Case(lambda: nn.RMSNorm(6, eps=1e-5), lambda: mnn.RMSNorm(6, eps=1e-5), lambda: [_x(3, 6)]),
    "GroupNorm": _image(lambda: nn.GroupNorm(2, 6), lambda: mnn.GroupNorm(2, 6, pytorch_compatible=True), (2, 6, 4, 4)),
    "InstanceNorm1d": _image(
        lambda: nn.InstanceNorm1d(4, affine=True), lambda: mnn.InstanceNorm(4, affine=True), (2, 4, 7)
    ),
    "InstanceNorm2d": _image(
        lambda: nn.InstanceNorm2d(4, affine=True), lambda: mnn.InstanceNorm(4, affine=True), (2, 4, 5, 5)
    ),
    "InstanceNorm3d": _image(
        lambda: nn.InstanceNorm3d(3, affine=True), lambda: mnn.InstanceNorm(3, affine=True), (2, 3, 3, 4, 2)
    ),
    "PReLU": Case(lambda: nn.PReLU(), lambda: mnn.PReLU(), lambda: [_x(3, 5)]),
    "PReLU per channel": _image(lambda: nn.PReLU(5), lambda: mnn.PReLU(5), (2, 5, 3, 3)),
    # attention and transformer blocks
    "MultiheadAttention": Case(
        lambda: nn.MultiheadAttention(16, 4, batch_first=True),
        lambda: mnn.MultiHeadAttention(16, 4, bias=True),
        lambda: [_x(2, 5, 16), _x(2, 7, 16)],
        lambda m, q, kv: m(q, kv, kv, need_weights=False)[0],
        lambda m, q, kv: m(q, kv, kv),
    ),
    "MultiheadAttention no bias": Case(
        lambda: nn.MultiheadAttention(8, 2, bias=False, batch_first=True),
        lambda: mnn.MultiHeadAttention(8, 2, bias=False),
        lambda: [_x(2, 5, 8)],
        lambda m, x: m(x, x, x, need_weights=False)[0],
        lambda m, x: m(x, x, x),
    ),
    "MultiheadAttention sequence first": Case(
        lambda: nn.MultiheadAttention(8, 2),
        lambda: mnn.MultiHeadAttention(8, 2, bias=True),
        lambda: [_x(5, 2, 8)],
        lambda m, x: m(x, x, x, need_weights=False)[0].transpose(0, 1),
        lambda m, x: m(*[x.transpose(1, 0, 2)] * 3),
    ),
    "MultiheadAttention kdim/vdim": Case(
        lambda: nn.MultiheadAttention(16, 4, kdim=6, vdim=10, batch_first=True),
        lambda: mnn.MultiHeadAttention(16, 4, key_input_dims=6, value_input_dims=10, bias=True),
        lambda: [_x(2, 5, 16), _x(2, 7, 6), _x(2, 7, 10)],
        lambda m, q, k, v: m(q, k, v, need_weights=False)[0],
    ),
    "TransformerEncoderLayer pre-norm": Case(
        lambda: nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True),
        lambda: _biased(mnn.TransformerEncoderLayer(16, 4, 32, norm_first=True)),
        lambda: [_x(2, 5, 16)],
        call_m=lambda m, x: m(x, None),
    ),
    "TransformerEncoderLayer post-norm": Case(
        lambda: nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True),
        lambda: _biased(mnn.TransformerEncoderLayer(16, 4, 32, norm_first=False)),
        lambda: [_x(2, 5, 16)],
        call_m=lambda m, x: m(x, None),
    ),
    "TransformerDecoderLayer pre-norm": Case(
        lambda: nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True),
        lambda: _biased(mnn.TransformerDecoderLayer(16, 4, 32, norm_first=True)),
        lambda: [_x(2, 5, 16), _x(2, 6, 16)],
        call_m=lambda m, x, mem: m(x, mem, None, None),
    ),
    "TransformerDecoderLayer post-norm": Case(
        lambda: nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True),
        lambda: _biased(mnn.TransformerDecoderLayer(16, 4, 32, norm_first=False)),
        lambda: [_x(2, 5, 16), _x(2, 6, 16)],
        call_m=lambda m, x, mem: m(x, mem, None, None),
    ),
    "TransformerEncoder": Case(
        lambda: nn.TransformerEncoder(
            nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True),
            2,
            norm=nn.LayerNorm(16),
            enable_nested_tensor=False,
        ),
        lambda: _biased(mnn.TransformerEncoder(2, 16, 4, 32, norm_first=False)),
        lambda: [_x(2, 5, 16)],
        call_m=lambda m, x: m(x, None),
    ),
    "TransformerDecoder": Case(
        lambda: nn.TransformerDecoder(
            nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True),
            2,
            norm=nn.LayerNorm(16),
        ),
        lambda: _biased(mnn.TransformerDecoder(2, 16, 4, 32, norm_first=True)),
        lambda: [_x(2, 5, 16), _x(2, 6, 16)],
        call_m=lambda m, x, mem: m(x, mem, None, None),
    ),
    "Transformer": Case(
        lambda: nn.Transformer(16, 4, 1, 1, 32, dropout=0.0, batch_first=True),
        lambda: _biased(mnn.Transformer(16, 4, 1, 1, 32, norm_first=False)),
        lambda: [_x(2, 5, 16), _x(2, 4, 16)],
        call_m=lambda m, s, t: m(s, t, None, None, None),
    ),
    # recurrent: MLX takes batch-first input and has one layer per module
    "LSTM": Case(
        lambda: nn.LSTM(4, 8, batch_first=True),
        lambda: mnn.LSTM(4, 8),
        lambda: [_x(2, 5, 4)],
        lambda m, x: m(x)[0],
        lambda m, x: m(x)[0],
    ),
    "LSTM 2 layers": Case(
        lambda: nn.LSTM(4, 8, num_layers=2, batch_first=True),
        lambda: _Stack(mnn.LSTM(4, 8), mnn.LSTM(8, 8)),
        lambda: [_x(2, 5, 4)],
        lambda m, x: m(x)[0],
    ),
    "GRU": Case(
        lambda: nn.GRU(4, 8, batch_first=True), lambda: mnn.GRU(4, 8), lambda: [_x(2, 5, 4)], lambda m, x: m(x)[0]
    ),
    "GRU 2 layers": Case(
        lambda: nn.GRU(4, 8, num_layers=2, batch_first=True),
        lambda: _Stack(mnn.GRU(4, 8), mnn.GRU(8, 8)),
        lambda: [_x(2, 5, 4)],
        lambda m, x: m(x)[0],
    ),
    "RNN relu": Case(
        lambda: nn.RNN(4, 8, nonlinearity="relu", batch_first=True),
        lambda: mnn.RNN(4, 8, nonlinearity=mnn.relu),
        lambda: [_x(2, 5, 4)],
        lambda m, x: m(x)[0],
    ),
    "RNN 2 layers": Case(
        lambda: nn.RNN(4, 8, num_layers=2, batch_first=True),
        lambda: _Stack(mnn.RNN(4, 8), mnn.RNN(8, 8)),
        lambda: [_x(2, 5, 4)],
        lambda m, x: m(x)[0],
    ),
    "LSTMCell": Case(
        lambda: nn.LSTMCell(4, 8),
        lambda: mnn.LSTM(4, 8),
        lambda: [_x(3, 4), _x(3, 8), _x(3, 8)],
        lambda m, x, h, c: m(x, (h, c))[0],
        lambda m, x, h, c: m(x[:, None], hidden=h, cell=c)[0][:, 0],
    ),
    "GRUCell": Case(
        lambda: nn.GRUCell(4, 8),
        lambda: mnn.GRU(4, 8),
        lambda: [_x(3, 4), _x(3, 8)],
        call_m=lambda m, x, h: m(x[:, None], hidden=h)[:, 0],
    ),
    "RNNCell": Case(
        lambda: nn.RNNCell(4, 8),
        lambda: mnn.RNN(4, 8),
        lambda: [_x(3, 4), _x(3, 8)],
        call_m=lambda m, x, h: m(x[:, None], hidden=h)[:, 0],
    ),
    # weight_norm folds into the weight
    "Conv1d weight_norm": _image(
        lambda: nn.utils.parametrizations.weight_norm(nn.Conv1d(3, 4, 5, padding=2), dim=2),
        lambda: mnn.Conv1d(3, 4, 5, padding=2),
        (2, 3, 8),
    ),
    # transformers leaf types and the families recognised by name
    "transformers Conv1D": Case(
        lambda: _transformers("transformers.pytorch_utils.Conv1D")(5, 6),
        lambda: mnn.Linear(6, 5),
        lambda: [_x(2, 3, 6)],
    ),
    "transformers T5LayerNorm": Case(
        lambda: _transformers("transformers.models.t5.modeling_t5.T5LayerNorm")(6, eps=1e-6),
        lambda: mnn.RMSNorm(6, eps=1e-6),
        lambda: [_x(2, 3, 6)],
    ),
    "transformers BartLearnedPositionalEmbedding": Case(
        lambda: _transformers("transformers.models.bart.modeling_bart.BartLearnedPositionalEmbedding")(8, 4),
        lambda: mnn.Embedding(10, 4),
        lambda: [_ids(2, 5)],
        call_m=lambda m, ids: m(mx.broadcast_to(mx.arange(ids.shape[1]) + 2, ids.shape)),
    ),
    "transformers OPTLearnedPositionalEmbedding": Case(
        lambda: _transformers("transformers.models.opt.modeling_opt.OPTLearnedPositionalEmbedding")(8, 4),
        lambda: mnn.Embedding(10, 4),
        lambda: [np.ones((2, 5), np.int64)],
        call_m=lambda m, mask: m(mx.cumsum(mask, axis=1) - 1 + 2),
    ),
    "transformers *RMSNorm family": Case(
        lambda: _transformers("transformers.models.llama.modeling_llama.LlamaRMSNorm")(6, eps=1e-6),
        lambda: mnn.RMSNorm(6, eps=1e-6),
        lambda: [_x(2, 3, 6)],
    ),
    "transformers *LayerNorm family": Case(
        lambda: _transformers("transformers.models.cohere.modeling_cohere.CohereLayerNorm")(6, eps=1e-5),
        lambda: mnn.LayerNorm(6, eps=1e-5, bias=False),
        lambda: [_x(2, 3, 6)],
    ),
    "transformers T5-style *LayerNorm (an RMSNorm)": Case(
        lambda: _transformers("transformers.models.mt5.modeling_mt5.MT5LayerNorm")(6, eps=1e-6),
        lambda: mnn.RMSNorm(6, eps=1e-6),
        lambda: [_x(2, 3, 6)],
    ),
    "transformers *LayerNorm family channels-first": _image(
        lambda: _transformers("transformers.models.vitdet.modeling_vitdet.VitDetLayerNorm")(6),
        lambda: mnn.LayerNorm(6, eps=1e-6),
        (2, 6, 3, 3),
    ),
    "transformers *Embedding family": Case(_family_embedding, lambda: mnn.Embedding(10, 4), lambda: [_ids(2, 3)]),
    "transformers *Router family": Case(
        _gpt_oss_router, lambda: mnn.Linear(8, 6), lambda: [_x(5, 8)], lambda m, x: m(x)[0]
    ),
    "transformers *Router family no bias": Case(
        _mixtral_router, lambda: mnn.Linear(8, 6, bias=False), lambda: [_x(5, 8)], lambda m, x: m(x)[0]
    ),
}

# Registry entries with weights that no mlx.nn layer can load, and why (every other one needs a case above).
NOT_MLX_NN = {"transformers *Experts": "fused expert stacks; mlx-lm's SwitchGLU holds gate and up apart"}
WEIGHTLESS_KINDS = {"activation", "pooling", "dropout", "shape", "container", "loss"}
WEIGHTLESS = {"torch.nn.Identity"}


def _values(name, shape):
    """Non-trivial values (running variances positive), so a wrong layout cannot pass."""
    v = _x(*shape) * 0.5
    return np.abs(v) + 0.5 if name.endswith("running_var") else v


def _randomize(module):
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.from_numpy(_values(name, t.shape)))
    return module.eval()


def _mlx_inputs(xs):
    return [mx.array(x.astype(np.int32) if x.dtype == np.int64 else x) for x in xs]


def _run_torch(case, module, xs):
    with torch.no_grad():
        out = case.call_t(module, *[torch.from_numpy(x) for x in xs]).numpy()
    return _cl(out) if case.image else out


def _run_mlx(case, module, xs):
    if case.image:
        xs = [_cl(xs[0])] + xs[1:]
    return np.array(case.call_m(module, *_mlx_inputs(xs)))


def _max_err(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.slow
def test_mlx_layer_computes_what_torch_computes(name, tmp_path):
    case = CASES[name]
    torch.manual_seed(0)
    t = _randomize(case.torch())
    path = tmp_path / "x.safetensors"
    res = torch2mlx.convert(t, path)
    assert res.plan.rules_by_source() == {"model": len(res.plan.ops)}  # every rule from the registry
    assert {n for n, _ in res.plan.dropped} == {k for k in t.state_dict() if k.endswith("num_batches_tracked")}
    m = case.mlx()
    m.load_weights(list(torch2mlx.load_converted(path).items()), strict=True)
    m.eval()
    xs = case.inputs()
    assert _max_err(_run_mlx(case, m, xs), _run_torch(case, t, xs)) <= TOL

    # Round trip: the file back into a fresh torch layer, strictly, reproduces the original.
    fresh = case.torch()
    fresh.load_state_dict(torch2mlx.to_torch(path, model=fresh), strict=True)
    assert _max_err(_run_torch(case, fresh.eval(), xs), _run_torch(case, t, xs)) <= TOL


@pytest.mark.parametrize("name", list(CASES))
def test_mlx_weights_go_back_to_the_torch_layer(name):
    case = CASES[name]
    torch.manual_seed(1)
    template = case.torch()
    m = case.mlx()
    m.eval()
    # Random values, running statistics included, in MLX's own layout (as if trained in MLX).
    weights = {k: mx.array(_values(k, v.shape)) for k, v in tree_flatten(m.parameters())}
    m.load_weights(list(weights.items()), strict=True)
    template.load_state_dict(torch2mlx.to_torch(weights, model=template), strict=True)
    xs = case.inputs()
    assert _max_err(_run_torch(case, template.eval(), xs), _run_mlx(case, m, xs)) <= TOL


def test_every_registry_layer_with_weights_has_a_case():
    exercised = set()
    for case in CASES.values():
        exercised |= {u.key for u in torch2mlx.analyze(case.torch()).layers}
    required = {
        l.torch for l in registry.LAYERS if l.supported and l.kind not in WEIGHTLESS_KINDS and l.torch not in WEIGHTLESS
    } | {"torch.nn.PReLU"}
    required |= {f.layer.torch for f in registry.FAMILIES} - set(NOT_MLX_NN)
    assert required - exercised == set()


def test_conv3d_with_groups_is_reported_unsupported():
    report = torch2mlx.analyze(nn.Conv3d(4, 4, 3, groups=2))
    assert report.unsupported == {"torch.nn.Conv3d": 1}
    assert "groups" in report.blockers[0].detail


def test_a_layernorm_by_name_that_subtracts_no_mean_is_an_rmsnorm():
    mt5 = _transformers("transformers.models.mt5.modeling_mt5.MT5LayerNorm")(6)
    cohere = _transformers("transformers.models.cohere.modeling_cohere.CohereLayerNorm")(6)
    assert [(u.key, u.mlx) for u in torch2mlx.analyze(mt5).layers] == [("transformers *RMSNorm", "mlx.nn.RMSNorm")]
    assert [(u.key, u.mlx) for u in torch2mlx.analyze(cohere).layers] == [
        ("transformers *LayerNorm", "mlx.nn.LayerNorm")
    ]
