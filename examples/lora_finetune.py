"""LoRA fine-tune of a converted transformer in MLX, merged back and returned to torch.

    python examples/lora_finetune.py [--quick] [--json]

The TransformerEncoder classifier of transformer_classifier.py is trained in torch on one labelling
of synthetic token sequences, converted (torch2mlx.convert) and loaded into its MLX twin. LoRA
adapters on every attention projection (query/key/value/out) and a retrained head learn a new
labelling in MLX (torch2mlx.recipes.lora_finetune); the adapters are merged into the projections
and the merged weights go back into the torch model (torch2mlx.to_torch), which must compute what
MLX computes.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import transformer_classifier as tc  # noqa: E402  (the models and data of that example)


def new_task(n: int, seed: int):
    """The same sequences, relabelled: which of tokens 1..4 occurs least often among the planted ones."""
    x, _ = tc.sequences(n, seed)
    counts = np.stack([(x == k + 1).sum(1) for k in range(tc.CLASSES)], 1)
    return x.astype(np.int32), counts.argmin(1)


def main(argv=None) -> dict:
    args = harness.parse(argv, __doc__)
    import mlx.core as mx
    import torch

    import torch2mlx
    from torch2mlx.recipes import lora_finetune

    torch.manual_seed(0)
    net = tc.torch_model()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for step in range(10 if args.quick else 200):
        x, y = tc.sequences(64, step)
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.safetensors")
        torch2mlx.convert(net, path)
        model = tc.mlx_model()
        model.load_weights(list(torch2mlx.load_converted(path).items()), strict=True)
    model.eval()

    x, y = new_task(1024 if args.quick else 4096, 100)
    train = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]
    val = [tuple(new_task(256, 200))]
    result = lora_finetune(
        model,
        train,
        val,
        rank=4,
        alpha=8,
        also_train=["head"],
        epochs=2 if args.quick else 8,
        learning_rate=3e-3,
        merge=False,
    )
    model.eval()
    probe = mx.array(val[0][0])
    with_adapters = np.array(model(probe))
    from torch2mlx.recipes import merge_lora

    merged = merge_lora(model)
    merge_diff = float(np.abs(np.array(model(probe)) - with_adapters).max())

    from mlx.utils import tree_flatten

    state = torch2mlx.to_torch(dict(tree_flatten(model.parameters())), model=net)
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch_diff = float(np.abs(net(torch.from_numpy(val[0][0]).long()).numpy() - with_adapters).max())
    out = {
        "loss_before": result.loss_before,
        "loss_after": result.loss_after,
        "trainable": result.trainable,
        "merged_projections": merged,
        "merge_max_diff": merge_diff,
        "torch_max_diff": torch_diff,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"new task loss {result.loss_before:.4f} -> {result.loss_after:.4f} training {result.trainable} "
            f"parameters (LoRA + head); {merged} projections merged (max diff {merge_diff:.1e}); "
            f"back in torch: max logit diff {torch_diff:.1e}"
        )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
