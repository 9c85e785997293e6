"""Fine-tune a converted classifier in MLX: trained in torch on one task, converted, adapted in MLX to another.

    python examples/finetune_classifier.py [--quick] [--json]

torch: an MLP trained on synthetic 2-D blobs. MLX: torch2mlx.templates.MLP loaded with the converted
weights (outputs equal torch's), then torch2mlx.recipes.finetune_classifier trains it on blobs that moved,
first only the last layer, then everything. Prints the loss on the new task before and after.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import harness
import numpy as np

CLASSES, DIMS = 4, [2, 32, 32, 4]


def blobs(n: int, seed: int, shift: float = 0.0):
    """Points around four centres (moved by ``shift``); the label is the centre."""
    rng = np.random.default_rng(seed)
    centres = np.array([[2, 2], [-2, 2], [-2, -2], [2, -2]], np.float32) + shift
    y = rng.integers(0, CLASSES, n)
    return (centres[y] + rng.normal(0, 0.8, (n, 2))).astype(np.float32), y.astype(np.int64)


def batches(x, y, size: int):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def main(argv=None) -> dict:
    args = harness.parse(argv, __doc__)
    import mlx.core as mx
    import torch
    from torch import nn

    import torch2mlx
    from torch2mlx.recipes import finetune_classifier
    from torch2mlx.templates import MLP

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    x, y = blobs(512, 0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(20 if args.quick else 100):
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mlp.safetensors")
        torch2mlx.convert(net.eval(), path)
        model = MLP(DIMS)
        model.load_weights(list(torch2mlx.load_converted(path, prefix="layers.").items()), strict=True)
    with torch.no_grad():
        same = float(np.abs(np.array(model(mx.array(x))) - net(torch.from_numpy(x)).numpy()).max())

    new_x, new_y = blobs(512, 1, shift=1.5)  # the task moved
    val = batches(*blobs(256, 2, shift=1.5), 64)
    head = finetune_classifier(
        model, batches(new_x, new_y, 32), val, epochs=2 if args.quick else 5, learning_rate=1e-2, trainable=["layers.4"]
    )
    model.unfreeze()
    full = finetune_classifier(
        model, batches(new_x, new_y, 32), val, epochs=2 if args.quick else 10, learning_rate=3e-3
    )
    out = {
        "converted_max_diff": same,
        "loss_before": head.loss_before,
        "loss_after_head": head.loss_after,
        "loss_after_all": full.loss_after,
        "head_parameters": head.trainable,
        "all_parameters": full.trainable,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"converted MLP vs torch: max logit diff {same:.2e}")
        print(
            f"new task loss: {head.loss_before:.4f} before, {head.loss_after:.4f} after the head "
            f"({head.trainable} params), {full.loss_after:.4f} after all layers ({full.trainable} params)"
        )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
