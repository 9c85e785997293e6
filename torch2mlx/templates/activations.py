"""Activation names as torch spells its modules' defaults, to the MLX module that computes the same."""

from __future__ import annotations

import mlx.nn as nn

from ..errors import Torch2MLXError

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,  # exact (erf), torch's nn.GELU() default
    "gelu_tanh": lambda: nn.GELU(approx="precise"),  # torch's nn.GELU(approximate="tanh")
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(kind) -> nn.Module | None:
    """An MLX activation module from a name (see ``_ACTIVATIONS``), a module or callable, or None."""
    if kind is None or isinstance(kind, nn.Module):
        return kind
    if callable(kind):
        return _Call(kind)
    try:
        return _ACTIVATIONS[kind]()
    except KeyError:
        raise Torch2MLXError(f"unknown activation {kind!r} (known: {', '.join(_ACTIVATIONS)})") from None


class _Call(nn.Module):
    """A plain function (``mx.tanh``, ``nn.relu``) as a parameterless module, so it can sit in a layer list."""

    def __init__(self, fn):
        super().__init__()
        self._fn = fn

    def __call__(self, x):
        return self._fn(x)
