"""Training state from PyTorch to MLX: optimizer moments, hyper-parameters, LR schedules.

    from torch2mlx.training import convert_optimizer, convert_optimizer_state, convert_scheduler
    conv = convert_optimizer(torch_opt, model, schedule=torch_sched)   # an mlx.optimizers optimizer, state loaded
    sched = convert_scheduler(torch_sched)                              # callable: step -> learning rate
    ck = read_training_checkpoint("run.ckpt")                          # Lightning's, read without torch

Nothing is imported until used: ``import torch2mlx.training`` loads neither torch nor MLX.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "convert_optimizer": ".convert",
    "ConvertedOptimizer": ".convert",
    "convert_optimizer_state": ".optimizer_state",
    "optimizer_state_to_torch": ".optimizer_state",
    "OptimizerState": ".optimizer_state",
    "forward_specs": ".optimizer_state",
    "convert_scheduler": ".schedules",
    "Schedule": ".schedules",
    "read_training_checkpoint": ".checkpoint",
    "TrainingCheckpoint": ".checkpoint",
    "TrainingReport": ".report",
    "InexactConversionWarning": ".report",
    "Array": ".arrays",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'torch2mlx.training' has no attribute {name!r}")
