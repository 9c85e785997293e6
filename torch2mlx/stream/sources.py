"""What ``convert`` and ``to_torch`` take as ``src`` and ``model=``, made into a ``Checkpoint`` and rules.

A source is a checkpoint path, an opened ``Checkpoint``, a state dict ``{name: tensor}`` (torch,
numpy or MLX arrays, held in memory) or a live ``nn.Module`` (its state dict; its exact rules come
from the analyzer through ``core.model_rules``, never imported here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..core import model_rules
from ..core.model_rules import StreamInputs
from ..core.spec import RuleSpec
from ..errors import Torch2MLXError
from ..formats.checkpoint import Checkpoint, open_checkpoint
from .memory import is_module, memory_checkpoint
from .options import Options


def open_source(src, opts: Options, model, *, label: str = "<state dict>") -> tuple[Checkpoint, str, Any]:
    """``(checkpoint, label for reports, model)`` of ``src``; ``model`` as given, or the rules a live module
    gives (``model=None``), or ``False`` for a state dict (in memory: no config.json to look for)."""
    if isinstance(src, Checkpoint):
        return src, src.path, model
    if isinstance(src, (str, os.PathLike)):
        return open_checkpoint(os.fspath(src), key=opts.key, allow_globals=opts.allow_globals), str(src), model
    if is_module(src):
        ck = memory_checkpoint(src.state_dict(), f"<{type(src).__name__} state dict>")
        return ck, ck.path, model_rules.module_inputs(ck, src) if model is None else model
    if isinstance(src, Mapping):
        ck = memory_checkpoint(src, label)
        return ck, ck.path, False if model is None else model
    raise Torch2MLXError(
        "src must be a checkpoint path, a Checkpoint, an nn.Module or a mapping of names to tensors "
        f"(a state dict), got {type(src).__name__}"
    )


def model_choice(model, model_kwargs) -> tuple[str | None, Any, bool, StreamInputs | None]:
    """``model`` as ``convert`` takes it -> (class path, kwargs, whether to look for a model, rules given)."""
    if model is None:
        return None, model_kwargs, True, None
    if model is False:
        return None, model_kwargs, False, None
    if isinstance(model, str):
        return model, model_kwargs, True, None
    given = rules_given(model)
    if given is not None:
        if model_kwargs is not None:
            raise Torch2MLXError("model_kwargs applies to a model class path, not to rules given as objects")
        return None, None, False, given
    raise Torch2MLXError(
        "model must be None (a config.json next to the weights, if any), False (no model), "
        "a class path 'pkg.mod:Class', an analyzer result (StreamInputs) or a list of RuleSpec, "
        f"got {type(model).__name__}"
    )


def rules_given(model) -> StreamInputs | None:
    """An analyzer result as it is, a list of ``RuleSpec`` as one; None for anything else."""
    if hasattr(model, "specs") and hasattr(model, "drop"):
        return model
    if isinstance(model, (list, tuple)) and all(isinstance(s, RuleSpec) for s in model):
        return StreamInputs(specs=list(model))
    return None
