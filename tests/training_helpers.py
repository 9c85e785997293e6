"""A small torch model with a convolution, a Linear and a MultiheadAttention, its MLX twin, and their data.

The layers cover the moment layouts: a conv weight (transposed to channels-last), a packed
attention projection (split in three) and plain Linear weights (unchanged).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import torch
from mlx.utils import tree_flatten
from torch import nn

from torch2mlx.core import rules
from torch2mlx.training import forward_specs

SCALES = (1.0, -2.0, 3.0)  # distinct tokens: every attention parameter gets a real gradient


class TorchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(12, 4)
        # no attention biases: the key bias gets no gradient (softmax ignores it), and Adam would turn
        # the float noise in its zero gradient into full-size steps that differ between frameworks
        self.att = nn.MultiheadAttention(4, 2, bias=False, batch_first=True)

    def forward(self, x):
        h = self.fc(self.conv(x).relu().flatten(1))
        h = torch.tanh(h.unsqueeze(1) * torch.tensor(SCALES).view(1, 3, 1))
        return (self.att(h, h, h, need_weights=False)[0] ** 2).mean()


class MLXNet(mnn.Module):
    def __init__(self):
        super().__init__()
        self.conv = mnn.Conv2d(2, 3, 3)
        self.fc = mnn.Linear(12, 4)
        self.att = mnn.MultiHeadAttention(4, 2, bias=False)

    def __call__(self, x):
        h = mnn.relu(self.conv(x)).transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's flatten order
        h = mx.tanh(self.fc(h)[:, None] * mx.array(SCALES).reshape(1, 3, 1))
        return (self.att(h, h, h) ** 2).mean()


def inputs(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, 4, 4, generator=g) for _ in range(n)]


def torch_steps(model, opt, xs) -> None:
    for x in xs:
        opt.zero_grad()
        model(x).backward()
        opt.step()


def mlx_twin(model):
    """The MLX model holding ``model``'s current weights."""
    twin = MLXNet()
    twin.load_weights(list(converted(model).items()), strict=True)
    return twin


def converted(model) -> dict:
    """``{MLX name: mx.array}`` of a torch model's weights, by the analyzer's rules."""
    w = rules.apply_specs(forward_specs(model), {k: v.detach().numpy() for k, v in model.state_dict().items()})
    return {k: mx.array(v) for k, v in w.items()}


def mlx_steps(model, opt, xs) -> None:
    step = mnn.value_and_grad(model, lambda x: model(x))
    for x in xs:
        _, g = step(mx.array(x.permute(0, 2, 3, 1).numpy()))
        opt.update(model, g)
        mx.eval(model.parameters(), opt.state)


def max_gap(mlx_model, torch_model) -> float:
    want = converted(torch_model)
    have = dict(tree_flatten(mlx_model.parameters()))
    assert set(have) == set(want)
    return max(float(np.abs(np.array(have[k]) - np.array(want[k])).max()) for k in want)
