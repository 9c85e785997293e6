"""Batches from torch DataLoaders or plain iterables as MLX arrays.

A CPU torch tensor becomes a numpy view (no copy), which MLX copies once into
its own buffer (MLX owns its memory; on Apple silicon that buffer is what the
GPU reads). bfloat16 travels as its raw bits. float64 becomes float32: MLX's
GPU has no float64, and torch models train in float32 too.
"""

from __future__ import annotations


def to_mlx(batch):
    """Tensors and arrays anywhere in tuples, lists and dicts -> ``mx.array``; other leaves unchanged."""
    import mlx.core as mx
    import numpy as np

    if isinstance(batch, mx.array):
        return batch
    kind = type(batch).__module__.split(".")[0]
    if kind == "torch" and hasattr(batch, "numpy"):
        import torch

        t = batch.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            return mx.array(t.view(torch.uint16).numpy()).view(mx.bfloat16)
        batch = t.numpy()
    if isinstance(batch, np.ndarray):
        return mx.array(batch.astype(np.float32) if batch.dtype == np.float64 else batch)
    if isinstance(batch, dict):
        return type(batch)((k, to_mlx(v)) for k, v in batch.items())
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(to_mlx(v) for v in batch)
    if hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(to_mlx(v) for v in batch))
    return batch
