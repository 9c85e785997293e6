"""Converted layers compute in MLX what they computed in torch: the layout rules are MLX's real layouts."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import SEED
from helpers import convert, torch_save
from torch import nn

# (torch layer, MLX op on the converted weight, rule forced with --rule or None for the default/inferred one)
LAYERS = {
    "conv1d": (
        lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, bias=False),
        lambda x, w: mx.conv1d(x, w, stride=2, padding=1),
        None,
    ),
    "conv2d": (lambda: nn.Conv2d(4, 6, (3, 2), padding=1, bias=False), lambda x, w: mx.conv2d(x, w, padding=1), None),
    "conv3d": (lambda: nn.Conv3d(2, 3, (2, 3, 2), bias=False), lambda x, w: mx.conv3d(x, w), None),
    "conv_transpose1d": (
        lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, bias=False),
        lambda x, w: mx.conv_transpose1d(x, w, stride=2),
        "conv_transpose1d",
    ),
    "conv_transpose2d": (
        lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=2, bias=False),
        lambda x, w: mx.conv_transpose2d(x, w, stride=2),
        "conv_transpose2d",
    ),
    "conv_transpose3d": (
        lambda: nn.ConvTranspose3d(2, 3, (2, 3, 2), bias=False),
        lambda x, w: mx.conv_transpose3d(x, w),
        "conv_transpose3d",
    ),
}


def _channels_last(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, *range(2, x.dim()), 1).numpy()


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_converted_conv_weights_compute_the_same_in_mlx(tmp_path, out, kind):
    make, mlx_op, rule = LAYERS[kind]
    torch.manual_seed(SEED)
    layer = make().eval()
    src = torch_save({"layer.weight": layer.weight.detach()}, tmp_path / "w.pt")
    convert(src, out, rules=[f"layer\\.weight={rule}"] if rule else ())
    w = mx.load(str(out / "model.safetensors"))["layer.weight"]
    dims = layer.weight.dim() - 2
    x = torch.randn(2, layer.in_channels, *[7] * dims)
    with torch.no_grad():
        expected = layer(x)
    got = np.array(mlx_op(mx.array(_channels_last(x)), w))
    np.testing.assert_allclose(got, _channels_last(expected), rtol=1e-4, atol=1e-5)


def test_hf_conv1d_as_linear(tmp_path, out):
    """HF's Conv1D stores (in, out); with linear_transposed it is an MLX Linear weight (out, in)."""
    torch.manual_seed(SEED)
    w = torch.randn(5, 7)  # (in, out)
    src = torch_save({"attn.c_attn.weight": w}, tmp_path / "w.pt")
    convert(src, out, rules=[r"c_attn\.weight$=linear_transposed"])
    wm = mx.load(str(out / "model.safetensors"))["attn.c_attn.weight"]
    x = torch.randn(3, 5)
    np.testing.assert_allclose(np.array(mx.array(x.numpy()) @ wm.T), (x @ w).numpy(), rtol=1e-5, atol=1e-6)
