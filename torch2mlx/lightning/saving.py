"""Save MLX module weights through torch2mlx's shard writer (index + manifest, written atomically)."""

from __future__ import annotations

import json
import os


def weight_arrays(module) -> dict:
    """``{name: (numpy carrier, dtype name)}`` of an MLX module's parameters (bfloat16 as raw bits)."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    out = {}
    for name, a in tree_flatten(module.parameters()):
        dt = str(a.dtype).removeprefix("mlx.core.")
        out[name] = (np.array(a.view(mx.uint16)) if dt == "bfloat16" else np.array(a), dt)
    return out


def save_weights(module, out_dir: str, *, extra: dict | None = None, optimizer=None) -> str:
    """Write ``module``'s weights to ``out_dir`` (``model.safetensors`` + index + ``torch2mlx.json``).

    ``extra`` goes to ``trainer_state.json``; an ``optimizer``'s state goes to
    ``optimizer.safetensors`` (flattened names, as ``mlx.utils.tree_flatten`` gives them).
    ``load_converted(out_dir)`` reads the weights back.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from ..stream.writers.incremental import ShardWriter

    with ShardWriter(out_dir, overwrite=True, metadata={"format": "mlx"}) as w:
        for name, (arr, dt) in weight_arrays(module).items():
            w.add(name, arr, dt)
    if optimizer is not None:
        flat = dict(tree_flatten(optimizer.state))
        mx.save_safetensors(os.path.join(out_dir, "optimizer.safetensors"), flat)
    if extra is not None:
        with open(os.path.join(out_dir, "trainer_state.json"), "w", encoding="utf-8") as f:
            json.dump(extra, f, indent=1, sort_keys=True)
    return out_dir
