"""Train a small ResNet (BatchNorm, skip connections) in PyTorch on synthetic images, convert it, run it in MLX.

    python examples/resnet_cnn.py [--quick] [--json]

Training updates BatchNorm's running statistics, which the conversion carries
over (its step counter, num_batches_tracked, has no MLX counterpart and is
dropped). The MLX model is built from torch2mlx.templates: ConvBlock for every
conv -> BatchNorm (-> ReLU) unit and AdaptiveAvgPool2d, which MLX lacks.
"""

from __future__ import annotations

import sys

import harness
import numpy as np

CLASSES = 5


def images(n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, size, size): each class a colour-striped pattern at its own frequency, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    grid = np.arange(size, dtype=np.float32) / size
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    waves = np.sin(2 * np.pi * (labels[:, None, None] + 1) * grid[None, None, :] + phase)
    colour = np.eye(3, dtype=np.float32)[labels % 3]
    x = colour[:, :, None, None] * waves[:, None] + 0.7 * rng.standard_normal((n, 3, size, size))
    return x.astype(np.float32), labels


def torch_model():
    from torch import nn

    class ConvBN(nn.Module):
        """conv -> BatchNorm -> optional ReLU: the attributes torch2mlx.templates.ConvBlock has."""

        def __init__(self, cin, cout, k=3, stride=1, act=True):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
            self.norm = nn.BatchNorm2d(cout)
            self.act = nn.ReLU() if act else nn.Identity()

        def forward(self, x):
            return self.act(self.norm(self.conv(x)))

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.a = ConvBN(cin, cout, stride=stride)
            self.b = ConvBN(cout, cout, act=False)
            self.shortcut = (
                ConvBN(cin, cout, k=1, stride=stride, act=False) if stride != 1 or cin != cout else nn.Identity()
            )

        def forward(self, x):
            return (self.b(self.a(x)) + self.shortcut(x)).relu()

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = ConvBN(3, 16)
            self.layers = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2), BasicBlock(32, 64, stride=2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, CLASSES)

        def forward(self, x):
            return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))

    return ResNet()


def mlx_model():
    import mlx.nn as nn

    from torch2mlx.templates import AdaptiveAvgPool2d, ConvBlock

    def conv_bn(cin, cout, k=3, stride=1, act=True):
        return ConvBlock(cin, cout, k, stride=stride, bias=False, norm="batch", activation="relu" if act else None)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.a = conv_bn(cin, cout, stride=stride)
            self.b = conv_bn(cout, cout, act=False)
            if stride != 1 or cin != cout:
                self.shortcut = conv_bn(cin, cout, k=1, stride=stride, act=False)

        def __call__(self, x):
            skip = self.shortcut(x) if "shortcut" in self else x
            return nn.relu(self.b(self.a(x)) + skip)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(3, 16)
            self.layers = [BasicBlock(16, 16), BasicBlock(16, 32, stride=2), BasicBlock(32, 64, stride=2)]
            self.pool = AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, CLASSES)

        def __call__(self, x):  # x: (N, H, W, 3)
            x = self.stem(x)
            for block in self.layers:
                x = block(x)
            return self.fc(self.pool(x).reshape(x.shape[0], -1))

    return ResNet()


def main(argv=None) -> dict:
    return harness.main(
        argv,
        __doc__,
        "resnet_cnn",
        data=images,
        torch_model=torch_model,
        mlx_model=mlx_model,
        to_mlx=lambda x: np.moveaxis(x, 1, -1),  # NCHW -> NHWC
        quick=dict(steps=20, batch=32, n_eval=64, size=16),
        full=dict(steps=200, batch=64, n_eval=512, size=32),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
