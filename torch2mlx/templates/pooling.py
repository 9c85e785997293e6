"""AdaptiveAvgPool2d: torch's adaptive average pooling, which MLX lacks, for channels-last input."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    """torch's bins: output i averages rows floor(i*size/out) .. ceil((i+1)*size/out) (they may overlap)."""
    return [(i * size // out, math.ceil((i + 1) * size / out)) for i in range(out)]


class AdaptiveAvgPool2d(nn.Module):
    """Average (N, H, W, C) down to (N, oh, ow, C); ``output_size`` an int, a pair, or None in a pair (keep).

    A size that divides the input is a reshape and a mean; otherwise each output
    cell averages its own (possibly overlapping) window, exactly as torch does.
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def __call__(self, x):
        n, h, w, c = x.shape
        oh, ow = (s if s is not None else d for s, d in zip(self.output_size, (h, w), strict=True))
        if h % oh == 0 and w % ow == 0:
            return x.reshape(n, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
        rows = [x[:, a:b].mean(axis=1, keepdims=True) for a, b in _bins(h, oh)]
        x = mx.concatenate(rows, axis=1)
        cols = [x[:, :, a:b].mean(axis=2, keepdims=True) for a, b in _bins(w, ow)]
        return mx.concatenate(cols, axis=2)
