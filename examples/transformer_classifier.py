"""Train a TransformerEncoder sequence classifier in PyTorch on synthetic tokens, convert it, run it in MLX.

    python examples/transformer_classifier.py [--quick] [--json]

torch: Embedding + a learned position table + nn.TransformerEncoder (pre-norm, final
LayerNorm) + mean pooling + Linear. MLX: the same with torch2mlx.templates.TransformerEncoder,
whose names are the ones the registry gives torch's layers (self_attn -> attention,
norm1 -> ln1, ..., in_proj split into query/key/value projections).
"""

from __future__ import annotations

import sys

import harness
import numpy as np

VOCAB, LENGTH, DIM, HEADS, LAYERS, CLASSES = 32, 16, 32, 4, 2, 4


def sequences(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens; the label is which of tokens 1..4 occurs most often (ties: the smallest)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, (n, LENGTH))
    labels = rng.integers(0, CLASSES, n)
    for row, c in zip(x, labels, strict=True):  # plant the answer a few extra times
        row[rng.choice(LENGTH, 4, replace=False)] = c + 1
    counts = np.stack([(x == k + 1).sum(1) for k in range(CLASSES)], 1)
    return x.astype(np.int64), counts.argmax(1)


def torch_model():
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, DIM)
            self.pos = nn.Parameter(torch.randn(LENGTH, DIM) * 0.02)
            layer = nn.TransformerEncoderLayer(DIM, HEADS, 2 * DIM, dropout=0.1, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, LAYERS, norm=nn.LayerNorm(DIM), enable_nested_tensor=False)
            self.head = nn.Linear(DIM, CLASSES)

        def forward(self, tokens):
            return self.head(self.encoder(self.embed(tokens) + self.pos).mean(1))

    return Classifier()


def mlx_model():
    import mlx.core as mx
    import mlx.nn as nn

    from torch2mlx.templates import TransformerEncoder

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, DIM)
            self.pos = mx.zeros((LENGTH, DIM))
            self.encoder = TransformerEncoder(
                LAYERS, DIM, HEADS, 2 * DIM, dropout=0.1, norm_first=True, final_norm=True
            )
            self.head = nn.Linear(DIM, CLASSES)

        def __call__(self, tokens):
            return self.head(self.encoder(self.embed(tokens) + self.pos).mean(1))

    return Classifier()


def main(argv=None) -> dict:
    return harness.main(
        argv,
        __doc__,
        "transformer_classifier",
        data=sequences,
        torch_model=torch_model,
        mlx_model=mlx_model,
        to_mlx=lambda x: x.astype(np.int32),
        lr=2e-3,
        quick=dict(steps=30, batch=32, n_eval=128),
        full=dict(steps=400, batch=64, n_eval=1024),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
