"""Train a small CNN on synthetic 28x28 "digits" in PyTorch, convert it, run it in MLX, compare.

    python examples/cnn_digits.py [--quick] [--json]

The MLX model is written by hand with mlx.nn layers of the same names. One thing
differs from torch: MLX images are channels-last (N, H, W, C), so before the
flatten that feeds the first Linear, the MLX model moves channels back in front;
torch's Linear was trained on features in (C, H, W) order.
"""

from __future__ import annotations

import sys

import harness
import numpy as np


def digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 1, 28, 28): each class a fixed smooth stroke pattern, shifted a little, plus noise."""
    rng = np.random.default_rng(1234)  # the classes are the same for every seed
    coarse = rng.standard_normal((10, 7, 7)) > 0.6
    templates = np.kron(coarse, np.ones((4, 4))).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    shifts = rng.integers(-2, 3, (n, 2))
    x = np.stack([np.roll(templates[c], tuple(s), (0, 1)) for c, s in zip(labels, shifts, strict=True)])
    x = x + 0.5 * rng.standard_normal(x.shape).astype(np.float32)
    return x[:, None].astype(np.float32), labels


def torch_model():
    from torch import nn

    class DigitCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(32 * 7 * 7, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            x = self.pool(self.conv1(x).relu())
            x = self.pool(self.conv2(x).relu())
            return self.fc2(self.fc1(x.flatten(1)).relu())

    return DigitCNN()


def mlx_model():
    import mlx.nn as nn

    class DigitCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.pool = nn.MaxPool2d(2, stride=2)
            self.fc1 = nn.Linear(32 * 7 * 7, 64)
            self.fc2 = nn.Linear(64, 10)

        def __call__(self, x):  # x: (N, 28, 28, 1)
            x = self.pool(nn.relu(self.conv1(x)))
            x = self.pool(nn.relu(self.conv2(x)))
            x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's (C, H, W) flatten order
            return self.fc2(nn.relu(self.fc1(x)))

    return DigitCNN()


def main(argv=None) -> dict:
    return harness.main(
        argv,
        __doc__,
        "cnn_digits",
        data=digits,
        torch_model=torch_model,
        mlx_model=mlx_model,
        to_mlx=lambda x: np.moveaxis(x, 1, -1),  # NCHW -> NHWC
        quick=dict(steps=25, batch=32, n_eval=128),
        full=dict(steps=300, batch=64, n_eval=1024),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
