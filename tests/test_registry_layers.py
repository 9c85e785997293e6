"""Every torch layer with an MLX counterpart: weights converted by the registry's rules must make the MLX
layer compute what the torch layer computes (MLX judges the layouts), and the reverse rules must take MLX
weights back to a torch layer that computes what the MLX layer computes."""
import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
import torch
import torch.nn as nn
from mlx.utils import tree_flatten

import torch2mlx
from torch2mlx.reverse import reverse_specs
from torch2mlx.rules import apply_specs
from torch2mlx.stream.plan import RuleSpec

RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _cl(x):
    """torch channels-first (N, C, *S) -> MLX channels-last (N, *S, C)."""
    return np.moveaxis(x, 1, -1)


class _Stack(mnn.Module):
    """MLX has single-layer recurrent modules; torch's num_layers stacks them under layers.K."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
            x = x[0] if isinstance(x, tuple) else x
        return x


def _encoder_layer():
    m = mnn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, norm_first=True)
    m.attention = mnn.MultiHeadAttention(16, 4, bias=True)   # torch's attention has biases
    return m


def _decoder_layer():
    m = mnn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, norm_first=True)
    m.self_attention = mnn.MultiHeadAttention(16, 4, bias=True)
    m.cross_attention = mnn.MultiHeadAttention(16, 4, bias=True)
    return m


# name: (torch layer, MLX layer, torch inputs, torch call, MLX call) -- MLX inputs are derived by the MLX call.
CASES = {
    "Linear": (lambda: nn.Linear(6, 5), lambda: mnn.Linear(6, 5), lambda: [_x(3, 6)],
               lambda m, x: m(x), lambda m, x: m(x)),
    "Bilinear": (lambda: nn.Bilinear(4, 3, 5), lambda: mnn.Bilinear(4, 3, 5), lambda: [_x(2, 4), _x(2, 3)],
                 lambda m, a, b: m(a, b), lambda m, a, b: m(a, b)),
    "Embedding": (lambda: nn.Embedding(10, 4), lambda: mnn.Embedding(10, 4),
                  lambda: [np.array([[1, 7, 3]], dtype=np.int64)], lambda m, i: m(i), lambda m, i: m(i)),
    "Conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1, groups=2), lambda: mnn.Conv1d(4, 6, 3, padding=1, groups=2),
               lambda: [_x(2, 4, 9)], lambda m, x: m(x), lambda m, x: m(_cl(x))),
    "Conv2d": (lambda: nn.Conv2d(3, 5, (3, 2), stride=2), lambda: mnn.Conv2d(3, 5, (3, 2), stride=2),
               lambda: [_x(2, 3, 8, 7)], lambda m, x: m(x), lambda m, x: m(_cl(x))),
    "Conv3d": (lambda: nn.Conv3d(2, 3, 2), lambda: mnn.Conv3d(2, 3, 2), lambda: [_x(1, 2, 4, 5, 3)],
               lambda m, x: m(x), lambda m, x: m(_cl(x))),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1),
                        lambda: mnn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1),
                        lambda: [_x(2, 4, 5)], lambda m, x: m(x), lambda m, x: m(_cl(x))),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(3, 4, (2, 3), stride=2),
                        lambda: mnn.ConvTranspose2d(3, 4, (2, 3), stride=2),
                        lambda: [_x(1, 3, 4, 5)], lambda m, x: m(x), lambda m, x: m(_cl(x))),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), lambda: mnn.ConvTranspose3d(2, 3, 2, stride=2),
                        lambda: [_x(1, 2, 3, 2, 3)], lambda m, x: m(x), lambda m, x: m(_cl(x))),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(5), lambda: mnn.BatchNorm(5), lambda: [_x(2, 5, 3, 3)],
                    lambda m, x: m(x), lambda m, x: m(_cl(x))),
    "LayerNorm": (lambda: nn.LayerNorm(6), lambda: mnn.LayerNorm(6), lambda: [_x(3, 6)],
                  lambda m, x: m(x), lambda m, x: m(x)),
    "RMSNorm": (lambda: nn.RMSNorm(6, eps=1e-5), lambda: mnn.RMSNorm(6, eps=1e-5), lambda: [_x(3, 6)],
                lambda m, x: m(x), lambda m, x: m(x)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 6), lambda: mnn.GroupNorm(2, 6, pytorch_compatible=True),
                  lambda: [_x(2, 6, 4, 4)], lambda m, x: m(x), lambda m, x: m(_cl(x))),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(4, affine=True), lambda: mnn.InstanceNorm(4, affine=True),
                       lambda: [_x(2, 4, 5, 5)], lambda m, x: m(x), lambda m, x: m(_cl(x))),
    "PReLU": (lambda: nn.PReLU(5), lambda: mnn.PReLU(5), lambda: [_x(3, 5)], lambda m, x: m(x), lambda m, x: m(x)),
    "MultiheadAttention": (lambda: nn.MultiheadAttention(16, 4, batch_first=True),
                           lambda: mnn.MultiHeadAttention(16, 4, bias=True),
                           lambda: [_x(2, 5, 16), _x(2, 7, 16)],
                           lambda m, q, kv: m(q, kv, kv, need_weights=False)[0], lambda m, q, kv: m(q, kv, kv)),
    "MultiheadAttention kdim/vdim": (
        lambda: nn.MultiheadAttention(16, 4, kdim=6, vdim=10, batch_first=True),
        lambda: mnn.MultiHeadAttention(16, 4, key_input_dims=6, value_input_dims=10, bias=True),
        lambda: [_x(2, 5, 16), _x(2, 7, 6), _x(2, 7, 10)],
        lambda m, q, k, v: m(q, k, v, need_weights=False)[0], lambda m, q, k, v: m(q, k, v)),
    "LSTM": (lambda: nn.LSTM(4, 8, batch_first=True), lambda: mnn.LSTM(4, 8), lambda: [_x(2, 5, 4)],
             lambda m, x: m(x)[0], lambda m, x: m(x)[0]),
    "LSTM 2 layers": (lambda: nn.LSTM(4, 8, num_layers=2, batch_first=True),
                      lambda: _Stack(mnn.LSTM(4, 8), mnn.LSTM(8, 8)), lambda: [_x(2, 5, 4)],
                      lambda m, x: m(x)[0], lambda m, x: m(x)),
    "GRU 2 layers": (lambda: nn.GRU(4, 8, num_layers=2, batch_first=True),
                     lambda: _Stack(mnn.GRU(4, 8), mnn.GRU(8, 8)), lambda: [_x(2, 5, 4)],
                     lambda m, x: m(x)[0], lambda m, x: m(x)),
    "RNN relu": (lambda: nn.RNN(4, 8, nonlinearity="relu", batch_first=True),
                 lambda: mnn.RNN(4, 8, nonlinearity=mnn.relu), lambda: [_x(2, 5, 4)],
                 lambda m, x: m(x)[0], lambda m, x: m(x)),
    "GRUCell": (lambda: nn.GRUCell(4, 8), lambda: mnn.GRU(4, 8), lambda: [_x(3, 4), _x(3, 8)],
                lambda m, x, h: m(x, h), lambda m, x, h: m(x[:, None], hidden=h)[:, 0]),
    "LSTMCell": (lambda: nn.LSTMCell(4, 8), lambda: mnn.LSTM(4, 8), lambda: [_x(3, 4), _x(3, 8), _x(3, 8)],
                 lambda m, x, h, c: m(x, (h, c))[0], lambda m, x, h, c: m(x[:, None], hidden=h, cell=c)[0][:, 0]),
    "TransformerEncoderLayer": (
        lambda: nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True),
        _encoder_layer, lambda: [_x(2, 5, 16)], lambda m, x: m(x), lambda m, x: m(x, None)),
    "TransformerDecoderLayer": (
        lambda: nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True),
        _decoder_layer, lambda: [_x(2, 5, 16), _x(2, 6, 16)], lambda m, x, mem: m(x, mem),
        lambda m, x, mem: m(x, mem, None, None)),
    "Conv1d weight_norm": (lambda: nn.utils.parametrizations.weight_norm(nn.Conv1d(3, 4, 5, padding=2), dim=2),
                           lambda: mnn.Conv1d(3, 4, 5, padding=2), lambda: [_x(2, 3, 8)],
                           lambda m, x: m(x), lambda m, x: m(_cl(x))),
}


def _randomize(module):
    """Non-trivial values everywhere, running statistics included, so a wrong layout cannot pass."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.from_numpy(_x(*t.shape)) * 0.5 + (1.0 if name.endswith("running_var") else 0.0))
    return module.eval()


def _specs(module):
    report = torch2mlx.analyze(module)
    assert report.coverage == 1.0 and not report.unsupported
    return [RuleSpec(t.mlx, t.sources, t.rule, t.args) for t in report.tensors if t.mlx], \
        {t.sources[0] for t in report.tensors if t.mlx is None}


def _torch_out(module, call, xs):
    with torch.no_grad():
        out = call(module, *[torch.from_numpy(x) for x in xs])
    return out.numpy()


def _channels_last(name, y):
    conv_like = any(k in name for k in ("Conv", "Norm2d", "GroupNorm"))
    return _cl(y) if conv_like else y


@pytest.mark.parametrize("name", list(CASES))
def test_mlx_layer_computes_what_torch_computes(name):
    make_t, make_m, inputs, call_t, call_m = CASES[name]
    torch.manual_seed(0)
    t = _randomize(make_t())
    specs, dropped = _specs(t)
    state = {k: v.numpy() for k, v in t.state_dict().items()}
    converted = apply_specs(specs, state)
    m = make_m()
    m.load_weights([(k, mx.array(v)) for k, v in converted.items()], strict=True)
    m.eval()
    xs = inputs()
    want = _channels_last(name, _torch_out(t, call_t, xs))
    got = np.array(call_m(m, *[mx.array(x) if x.dtype != np.int64 else mx.array(x.astype(np.int32)) for x in xs]))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert set(dropped) == {k for k in state if k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("name", list(CASES))
def test_reverse_rules_take_mlx_weights_back_to_torch(name):
    make_t, make_m, inputs, call_t, call_m = CASES[name]
    torch.manual_seed(1)
    template = make_t()
    specs, dropped = _specs(template)
    m = make_m()
    m.eval()
    # Random values, running statistics included, in MLX's own layout.
    mlx_weights = {k: _x(*v.shape) * 0.5 + (1.0 if k.endswith("running_var") else 0.0)
                   for k, v in tree_flatten(m.parameters())}
    m.load_weights([(k, mx.array(v)) for k, v in mlx_weights.items()], strict=True)
    back = apply_specs(reverse_specs(specs), mlx_weights)
    missing, unexpected = template.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                                   for k, v in back.items()}, strict=False)
    assert not unexpected and set(missing) <= dropped   # BatchNorm restores its step counter itself
    template.eval()
    xs = inputs()
    want = np.array(call_m(m, *[mx.array(x) if x.dtype != np.int64 else mx.array(x.astype(np.int32)) for x in xs]))
    got = _channels_last(name, _torch_out(template, call_t, xs))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
