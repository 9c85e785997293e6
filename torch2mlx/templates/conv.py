"""ConvBlock (conv -> norm -> activation -> max pool) and ConvStack, for channels-last (N, H, W, C) input."""

from __future__ import annotations

import mlx.nn as nn

from ..errors import Torch2MLXError
from .activations import make_activation

_NORMS = {
    "batch": lambda c, groups: nn.BatchNorm(c),
    "group": lambda c, groups: nn.GroupNorm(groups, c, pytorch_compatible=True),
    "instance": lambda c, groups: nn.InstanceNorm(c, affine=True),
}


class ConvBlock(nn.Module):
    """``conv`` (Conv2d), then ``norm`` ("batch", "group" or "instance"; None for none), activation, max pool.

    ``norm_groups`` is GroupNorm's group count (at most the channel count).

    Loads a torch block with the same attributes: ``conv = nn.Conv2d(...)``, ``norm =
    nn.BatchNorm2d / GroupNorm / InstanceNorm2d(affine=True)``; the activation and the
    pool hold no weights. ``padding=None`` keeps the size for odd kernels (k // 2);
    ``bias=None`` means a bias only without a norm (the usual torch choice).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm: str | None = "batch",
        norm_groups: int = 32,
        activation="relu",
        pool: int | None = None,
    ):
        super().__init__()
        padding = dilation * (kernel_size // 2) if padding is None else padding
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=norm is None if bias is None else bias,
        )
        if norm is not None:
            if norm not in _NORMS:
                raise Torch2MLXError(f"unknown norm {norm!r} (known: {', '.join(_NORMS)})")
            self.norm = _NORMS[norm](out_channels, min(norm_groups, out_channels))
        self.act = make_activation(activation)
        self.pool = nn.MaxPool2d(pool, stride=pool) if pool else None

    def __call__(self, x):
        x = self.conv(x)
        if "norm" in self:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return self.pool(x) if self.pool is not None else x


class ConvStack(nn.Module):
    """ConvBlocks from ``channels[0]`` through each of ``channels[1:]``; ``blocks.K`` is block K.

    ``block_options`` go to every ConvBlock (kernel_size, stride, norm, activation, pool, ...).
    """

    def __init__(self, channels: list[int], **block_options):
        super().__init__()
        if len(channels) < 2:
            raise Torch2MLXError("ConvStack needs input channels and at least one block's output channels")
        self.blocks = [ConvBlock(a, b, **block_options) for a, b in zip(channels[:-1], channels[1:], strict=False)]

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return x
