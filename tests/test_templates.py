"""torch2mlx.templates: each MLX template loads weights converted from its torch counterpart (strictly)
and computes what the torch module computes (fp32, 1e-5)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
from torch import nn

import torch2mlx
from torch2mlx import templates
from torch2mlx.errors import Torch2MLXError

TOL = 1e-5
RNG = np.random.default_rng(7)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _randomize(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                v = torch.randn(t.shape) * 0.5
                t.copy_(v.abs() + 0.5 if name.endswith("running_var") else v)
    return module.eval()


def _load(torch_module, mlx_module, tmp_path, prefix=""):
    torch2mlx.convert(torch_module, tmp_path / "w.safetensors")
    mlx_module.load_weights(
        list(torch2mlx.load_converted(tmp_path / "w.safetensors", prefix=prefix).items()), strict=True
    )
    return mlx_module.eval()


def _err(mlx_out, torch_out) -> float:
    got, want = np.array(mlx_out), torch_out.detach().numpy()
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)))


# ---------------------------------------------------------------- MLP


class TorchMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(8, 16),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(16, 16),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(16, 4),
        )

    def forward(self, x):
        return self.layers(x)


def test_mlp_matches_a_torch_sequential_under_layers(tmp_path):
    t = _randomize(TorchMLP())
    m = _load(t, templates.MLP([8, 16, 16, 4], "relu", dropout=0.1), tmp_path)
    x = _x(5, 8)
    assert _err(m(mx.array(x)), t(torch.from_numpy(x))) <= TOL


def test_mlp_matches_a_bare_sequential_with_a_prefix(tmp_path):
    t = _randomize(nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 3), nn.GELU()))
    m = _load(t, templates.MLP([6, 12, 3], "gelu", final_activation=True), tmp_path, prefix="layers.")
    x = _x(2, 4, 6)
    assert _err(m(mx.array(x)), t(torch.from_numpy(x))) <= TOL


# ---------------------------------------------------------------- transformer blocks


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_block_matches_torch_encoder_layer(tmp_path, norm_first, activation):
    t = _randomize(
        nn.TransformerEncoderLayer(
            16, 4, 40, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first, layer_norm_eps=1e-6
        )
    )
    m = _load(
        t,
        templates.TransformerBlock(
            16, 4, 40, dropout=0.1, activation=activation, norm_first=norm_first, layer_norm_eps=1e-6
        ),
        tmp_path,
    )
    x = _x(3, 7, 16)
    with torch.no_grad():
        assert _err(m(mx.array(x)), t(torch.from_numpy(x))) <= TOL
        causal = nn.Transformer.generate_square_subsequent_mask(7)
        want = t(torch.from_numpy(x), src_mask=causal, is_causal=True)
    assert _err(m(mx.array(x), mask="causal"), want) <= TOL
    assert _err(m(mx.array(x), mask=mx.array(causal.numpy())), want) <= TOL


def test_transformer_block_without_bias(tmp_path):
    t = _randomize(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, bias=False))
    m = _load(t, templates.TransformerBlock(8, 2, 16, bias=False), tmp_path)
    x = _x(2, 5, 8)
    with torch.no_grad():
        assert _err(m(mx.array(x)), t(torch.from_numpy(x))) <= TOL


@pytest.mark.parametrize("final_norm", [True, False])
def test_transformer_encoder_matches_torch(tmp_path, final_norm):
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
    t = _randomize(
        nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(16) if final_norm else None, enable_nested_tensor=False)
    )
    m = _load(t, templates.TransformerEncoder(3, 16, 2, 32, norm_first=True, final_norm=final_norm), tmp_path)
    x = _x(2, 6, 16)
    with torch.no_grad():
        assert _err(m(mx.array(x)), t(torch.from_numpy(x))) <= TOL


# ---------------------------------------------------------------- convolutions


class TorchConvBlock(nn.Module):
    """The torch pattern ConvBlock mirrors: conv, norm, activation, max pool as attributes."""

    def __init__(self, cin, cout, k=3, stride=1, norm="batch", pool=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=norm is None)
        self.norm = {
            "batch": lambda: nn.BatchNorm2d(cout),
            "group": lambda: nn.GroupNorm(2, cout),
            "instance": lambda: nn.InstanceNorm2d(cout, affine=True),
            None: lambda: None,
        }[norm]()
        self.act = nn.SiLU()
        self.pool = nn.MaxPool2d(pool) if pool else nn.Identity()

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.pool(self.act(x))


def _nhwc(x):
    return mx.array(np.moveaxis(x, 1, -1))


def _nchw_out(m_out):
    return np.moveaxis(np.array(m_out), -1, 1)


@pytest.mark.parametrize("norm", ["batch", "group", "instance", None])
def test_conv_block_matches_torch(tmp_path, norm):
    t = _randomize(TorchConvBlock(4, 6, k=3, stride=2, norm=norm, pool=2))
    m = _load(t, templates.ConvBlock(4, 6, 3, stride=2, norm=norm, norm_groups=2, activation="silu", pool=2), tmp_path)
    x = _x(2, 4, 12, 10)
    with torch.no_grad():
        want = t(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(_nchw_out(m(_nhwc(x))) - want)) <= TOL


def test_conv_stack_matches_torch(tmp_path):
    class TorchStack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(TorchConvBlock(3, 8, pool=2), TorchConvBlock(8, 16, k=5, pool=2))

        def forward(self, x):
            return self.blocks(x)

    t = _randomize(TorchStack())
    m = templates.ConvStack([3, 8, 16], kernel_size=3, activation="silu", pool=2)
    m.blocks[1] = templates.ConvBlock(8, 16, 5, activation="silu", pool=2)  # blocks may differ
    _load(t, m, tmp_path)
    x = _x(2, 3, 16, 16)
    with torch.no_grad():
        want = t(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(_nchw_out(m(_nhwc(x))) - want)) <= TOL


# ---------------------------------------------------------------- pooling


@pytest.mark.parametrize(
    "size, out", [((8, 8), 1), ((8, 6), (4, 3)), ((7, 5), 3), ((5, 9), (2, 4)), ((3, 4), (5, 6)), ((6, 7), (None, 2))]
)
def test_adaptive_avg_pool_matches_torch(size, out):
    x = _x(2, 3, *size)
    want = nn.AdaptiveAvgPool2d(out)(torch.from_numpy(x)).numpy()
    got = _nchw_out(templates.AdaptiveAvgPool2d(out)(_nhwc(x)))
    assert got.shape == want.shape and np.max(np.abs(got - want)) <= 1e-6


def test_template_arguments_are_checked():
    with pytest.raises(Torch2MLXError, match="activation"):
        templates.MLP([2, 3], "swishy")
    with pytest.raises(Torch2MLXError, match="norm"):
        templates.ConvBlock(2, 3, norm="layer")
    with pytest.raises(Torch2MLXError, match="at least"):
        templates.MLP([2])
    with pytest.raises(Torch2MLXError, match="at least one block"):
        templates.ConvStack([3])
