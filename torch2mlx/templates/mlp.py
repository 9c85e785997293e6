"""MLP: Linear layers with activations between them, indexed as torch's nn.Sequential indexes them."""

from __future__ import annotations

import mlx.nn as nn

from ..errors import Torch2MLXError
from .activations import make_activation


class MLP(nn.Module):
    """``dims=[in, hidden..., out]``: Linear, activation, [Dropout], ..., Linear.

    ``layers`` holds every step, weightless ones too, so ``layers.K`` is torch's
    ``K``-th module of ``nn.Sequential(nn.Linear, nn.ReLU, [nn.Dropout], nn.Linear, ...)``
    built in the same order. ``final_activation`` adds the activation after the last Linear.
    """

    def __init__(
        self,
        dims: list[int],
        activation="relu",
        *,
        bias: bool = True,
        dropout: float = 0.0,
        final_activation: bool = False,
    ):
        super().__init__()
        if len(dims) < 2:
            raise Torch2MLXError("MLP needs at least input and output dims")
        make_activation(activation)  # an unknown name fails here, even when no layer uses it
        self.layers = []
        last = len(dims) - 2
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=False)):
            self.layers.append(nn.Linear(a, b, bias=bias))
            if i < last or final_activation:
                self.layers.append(make_activation(activation))
            if i < last and dropout:
                self.layers.append(nn.Dropout(dropout))

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
