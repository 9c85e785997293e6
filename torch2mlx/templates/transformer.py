"""Transformer encoder blocks that load torch.nn.TransformerEncoderLayer / TransformerEncoder weights.

mlx.nn has these layers too, but builds their attention without biases (torch's
has them) and takes a mask argument always; these follow torch's options:
``bias``, ``norm_first``, ``layer_norm_eps``, the activation. Names are the ones
the registry gives torch's tensors: ``attention.{query,key,value,out}_proj``,
``ln1``, ``ln2``, ``linear1``, ``linear2`` and, for the stack, ``layers.K`` and ``ln``.
"""

from __future__ import annotations

import mlx.nn as nn

from .activations import make_activation


class TransformerBlock(nn.Module):
    """One encoder layer; ``norm_first=True`` is pre-norm (GPT/ViT style), False post-norm (torch's default).

    ``mask`` is MLX's: additive (0 / -inf), boolean with True where attention is allowed
    (torch's boolean masks mean the opposite), or ``"causal"``.
    """

    def __init__(
        self,
        dims: int,
        num_heads: int,
        mlp_dims: int | None = None,
        *,
        dropout: float = 0.0,
        activation="relu",
        norm_first: bool = False,
        bias: bool = True,
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        mlp_dims = mlp_dims or 4 * dims
        self.attention = nn.MultiHeadAttention(dims, num_heads, bias=bias)
        self.ln1 = nn.LayerNorm(dims, eps=layer_norm_eps, bias=bias)
        self.ln2 = nn.LayerNorm(dims, eps=layer_norm_eps, bias=bias)
        self.linear1 = nn.Linear(dims, mlp_dims, bias=bias)
        self.linear2 = nn.Linear(mlp_dims, dims, bias=bias)
        self.activation = make_activation(activation)
        self.dropout = nn.Dropout(dropout)  # inside the feed-forward, as torch's ``dropout``
        self.dropout1 = nn.Dropout(dropout)  # after attention
        self.dropout2 = nn.Dropout(dropout)  # after the feed-forward
        self.norm_first = norm_first

    def _attend(self, x, mask):
        return self.dropout1(self.attention(x, x, x, mask))

    def _feed_forward(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def __call__(self, x, mask=None):
        if self.norm_first:
            x = x + self._attend(self.ln1(x), mask)
            return x + self._feed_forward(self.ln2(x))
        x = self.ln1(x + self._attend(x, mask))
        return self.ln2(x + self._feed_forward(x))


class TransformerEncoder(nn.Module):
    """``num_layers`` TransformerBlocks and, with ``final_norm``, a LayerNorm ``ln`` (torch's ``norm=``)."""

    def __init__(
        self,
        num_layers: int,
        dims: int,
        num_heads: int,
        mlp_dims: int | None = None,
        *,
        final_norm: bool = False,
        layer_norm_eps: float = 1e-5,
        **block_options,
    ):
        super().__init__()
        self.layers = [
            TransformerBlock(dims, num_heads, mlp_dims, layer_norm_eps=layer_norm_eps, **block_options)
            for _ in range(num_layers)
        ]
        if final_norm:
            self.ln = nn.LayerNorm(dims, eps=layer_norm_eps, bias=block_options.get("bias", True))

    def __call__(self, x, mask=None):
        for layer in self.layers:
            x = layer(x, mask)
        return self.ln(x) if "ln" in self else x
