"""Fine-tune a converted classifier in MLX: cross-entropy, AdamW, optionally only some submodules."""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from ..errors import Torch2MLXError
from ..lightning import MLXModule, MLXTrainer
from ..lightning.data import to_mlx
from ..lightning.source import OptimConfig


class Wrapped(MLXModule):
    """Any MLX classifier as an MLXModule (its parameters under ``model.``), default classification steps."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def __call__(self, x):
        return self.model(x)


@dataclass
class FineTuned:
    model: object  # the MLX model, trained in place
    trainer: MLXTrainer
    loss_before: float
    loss_after: float
    trainable: int  # parameters that were trained
    notes: list = field(default_factory=list)


def mean_loss(model, data) -> float:
    """Mean cross-entropy of ``model`` over ``(inputs, labels)`` batches, in eval mode, weighted by batch size."""
    model.eval()
    total, n = 0.0, 0
    for batch in data:
        x, y = to_mlx(batch)
        total += float(nn.losses.cross_entropy(model(x), y, reduction="sum").item())
        n += y.shape[0]
    model.train()
    if not n:
        raise Torch2MLXError("no batches to measure the loss on")
    return total / n


def set_trainable(model, trainable) -> int:
    """Freeze ``model`` except the submodules named in ``trainable`` (dotted paths; None: train all)."""
    from mlx.utils import tree_flatten

    if trainable is not None:
        model.freeze()
        modules = dict(model.named_modules())
        for path in trainable:
            if path not in modules:
                raise Torch2MLXError(f"no submodule {path!r} to train (have e.g. {sorted(modules)[:8]})")
            modules[path].unfreeze()
    return sum(a.size for _, a in tree_flatten(model.trainable_parameters()))


def finetune_classifier(
    model,
    train_data,
    val_data=None,
    *,
    epochs: int = 3,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
    optimizer=None,
    trainable=None,
    callbacks=(),
    progress: bool = False,
) -> FineTuned:
    """Fine-tune an MLX classifier (e.g. a template holding converted torch weights) on new labels.

    ``train_data`` / ``val_data``: torch DataLoaders or iterables of ``(inputs, integer labels)``.
    ``trainable``: submodule paths to train, the rest frozen (e.g. ``["head"]``); None keeps the
    model's own selection (all parameters unless some were frozen before).
    ``optimizer``: an ``mlx.optimizers`` optimizer (default AdamW). The loss before and after is
    measured on ``val_data`` (else ``train_data``).
    """
    count = set_trainable(model, trainable)
    measure = val_data if val_data is not None else train_data
    before = mean_loss(model, measure)
    wrapped = Wrapped(model)
    opt = optimizer or optim.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    object.__setattr__(wrapped, "_t2m_optim", OptimConfig(opt))
    trainer = MLXTrainer(max_epochs=epochs, callbacks=list(callbacks), enable_progress_bar=progress)
    trainer.fit(wrapped, train_data, val_data)
    mx.eval(model.parameters())
    return FineTuned(model, trainer, before, mean_loss(model, measure), count)
