"""Read a training checkpoint without torch: weights, optimizer states, scheduler states, hyper-parameters.

Lightning's ``.ckpt`` (and a plain ``torch.save({"model": ..., "optimizer": ...})``)
is a pickle; the stream's restricted unpickler reads it (nothing from the file is
ever called) and every tensor record becomes an ``Array`` read from its bytes.
Training state is small next to a model's weights, so it is read whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import CheckpointError, Torch2MLXError
from ..formats import nested
from ..formats.pickled import entry_of, open_pickle
from ..formats.unpickler import TensorRef
from .arrays import Array

_OPTIMIZER_KEYS = ("optimizer_states", "optimizer", "optimizer_state_dict", "optimizer_state", "optim")
_SCHEDULER_KEYS = ("lr_schedulers", "scheduler", "lr_scheduler", "scheduler_state_dict")


@dataclass
class TrainingCheckpoint:
    path: str
    state_dict: dict[str, Array]
    optimizer_states: list[dict] = field(default_factory=list)
    lr_schedulers: list[dict] = field(default_factory=list)
    hyper_parameters: dict = field(default_factory=dict)
    epoch: int | None = None
    global_step: int | None = None
    raw: dict = field(default_factory=dict)  # the whole object graph, tensors as Arrays


def _materialize(obj, ck, reader, path=(), depth=0):
    if depth > 64:
        raise CheckpointError(ck.path, "nesting deeper than 64 levels")
    if isinstance(obj, TensorRef):
        name = ".".join(path)
        entry = entry_of(ck, name, obj)
        return Array(entry.dtype, reader.read_all(entry).reshape(entry.shape))
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v, ck, reader, path + (str(k),), depth + 1)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, ck, reader, path + (str(i),), depth + 1) for i, v in enumerate(obj))
    return obj


def _listed(root: dict, keys) -> list[dict]:
    for k in keys:
        v = root.get(k)
        if isinstance(v, dict):
            return [v]
        if isinstance(v, (list, tuple)) and all(isinstance(x, dict) for x in v):
            return list(v)
    return []


def read_training_checkpoint(path, *, key: str | None = None) -> TrainingCheckpoint:
    """Everything a training run saved, read without torch (Lightning ``.ckpt`` or a plain torch pickle)."""
    from ..formats.data import DataReader

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise Torch2MLXError(f"{path}: no such file")
    ck = open_pickle(path)
    obj, _ = ck.load()
    refs, _, _ = nested.select(obj, path, key)
    with DataReader() as reader:
        weights = {n: _materialize(r, ck, reader, (n,)) for n, r in refs.items()}
        raw = _materialize(obj, ck, reader) if isinstance(obj, dict) else {}
    hp = raw.get("hyper_parameters")
    return TrainingCheckpoint(
        path,
        weights,
        _listed(raw, _OPTIMIZER_KEYS),
        _listed(raw, _SCHEDULER_KEYS),
        dict(hp) if isinstance(hp, dict) else {},
        raw.get("epoch") if isinstance(raw.get("epoch"), int) else None,
        raw.get("global_step") if isinstance(raw.get("global_step"), int) else None,
        raw,
    )
