"""LoRA for converted transformers: low-rank adapters on attention projections, trained in MLX, merged back.

An adapted projection computes ``W x + b + (alpha / rank) * B A x`` with the converted
``W`` and ``b`` frozen, ``A`` (rank x in) small random and ``B`` (out x rank) zero, so
training starts from the converted model's exact outputs. ``merge_lora`` folds
``(alpha / rank) * B A`` into ``W`` and puts plain ``nn.Linear`` layers back: the
merged model has the original names and shapes, so ``torch2mlx.to_torch`` takes it
back to the torch model.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ..errors import Torch2MLXError
from .classifier import FineTuned, finetune_classifier

#: The projections of MLX's MultiHeadAttention (what torch2mlx names torch's attention projections).
ATTENTION = ("query_proj", "key_proj", "value_proj", "out_proj")


class LoRALinear(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int = 8, alpha: float = 16.0, seed: int | None = None):
        super().__init__()
        out_dims, in_dims = linear.weight.shape
        if rank < 1 or rank > min(out_dims, in_dims):
            raise Torch2MLXError(f"LoRA rank {rank} does not fit a {in_dims} -> {out_dims} projection")
        self.linear = linear
        self.scale = alpha / rank
        key = mx.random.key(seed) if seed is not None else None
        bound = 1.0 / math.sqrt(in_dims)
        self.lora_a = mx.random.uniform(-bound, bound, (rank, in_dims), key=key)
        self.lora_b = mx.zeros((out_dims, rank))

    def __call__(self, x):
        return self.linear(x) + self.scale * ((x @ self.lora_a.T) @ self.lora_b.T)

    def merged(self) -> nn.Linear:
        """A plain Linear computing the same: ``W + scale * B A`` (in the weight's dtype)."""
        w = self.linear.weight
        has_bias = "bias" in self.linear
        out = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
        out.weight = (w + self.scale * (self.lora_b @ self.lora_a)).astype(w.dtype)
        if has_bias:
            out.bias = self.linear.bias
        return out


def _replace(model, pick) -> int:
    """Replace every direct child Linear that ``pick(name, child)`` maps to a new module; count them."""
    n = 0
    for _, module in model.named_modules():
        for key, child in list(module.children().items()):
            new = pick(key, child) if isinstance(child, nn.Module) else None
            if new is not None:
                setattr(module, key, new)
                n += 1
    return n


def apply_lora(model, targets=ATTENTION, rank: int = 8, alpha: float = 16.0, seed: int = 0) -> int:
    """Wrap every ``nn.Linear`` attribute named in ``targets`` with a LoRALinear; returns how many."""
    counter = iter(range(1 << 30))
    n = _replace(
        model,
        lambda key, child: (
            LoRALinear(child, rank, alpha, seed + next(counter))
            if key in targets and isinstance(child, nn.Linear)
            else None
        ),
    )
    if not n:
        raise Torch2MLXError(f"no nn.Linear named {', '.join(targets)} in the model to adapt")
    return n


def merge_lora(model) -> int:
    """Fold every LoRALinear back into an ``nn.Linear`` (in place); returns how many."""
    n = _replace(model, lambda key, child: child.merged() if isinstance(child, LoRALinear) else None)
    mx.eval(model.parameters())
    return n


def lora_finetune(
    model,
    train_data,
    val_data=None,
    *,
    targets=ATTENTION,
    rank: int = 8,
    alpha: float = 16.0,
    also_train=(),
    epochs: int = 3,
    learning_rate: float = 1e-3,
    merge: bool = True,
    progress: bool = False,
) -> FineTuned:
    """Adapt ``targets`` with LoRA, train the adapters (and ``also_train`` submodules, e.g. a new head),
    then merge (``merge=False`` keeps the adapters). The rest of the model stays frozen."""
    adapted = apply_lora(model, targets, rank, alpha)
    model.freeze()
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.unfreeze(recurse=False, keys=["lora_a", "lora_b"])
    modules = dict(model.named_modules())
    for path in also_train:
        if path not in modules:
            raise Torch2MLXError(f"no submodule {path!r} to train")
        modules[path].unfreeze()
    # finetune_classifier must keep this selection: trainable=None leaves freezing as it is
    result = finetune_classifier(
        model,
        train_data,
        val_data,
        epochs=epochs,
        learning_rate=learning_rate,
        weight_decay=0.0,
        trainable=None,
        progress=progress,
    )
    result.notes.append(f"{adapted} projection(s) adapted with rank {rank}")
    if merge:
        merge_lora(model)
        result.notes.append("adapters merged into the projections")
    return result
