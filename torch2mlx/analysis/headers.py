"""Analysis without a model: a checkpoint's names, shapes and dtypes, with the rules the stream would infer."""

from __future__ import annotations

from ..core import rules
from ..formats.checkpoint import Checkpoint
from .report import Report
from .tree import TensorInfo


def tensor_info(e) -> TensorInfo:
    guess = rules.infer(e.name, e.shape, e.dtype.is_float)
    rule = guess or "identity"
    shape = tuple(rules.get(rule).out_shape([e.shape], {}))
    return TensorInfo(
        e.name, (e.name,), (tuple(e.shape),), shape, e.dtype.name, rule, {}, "inferred" if guess else "default", "?"
    )


def report(ck: Checkpoint, source: str, notes: list[str]) -> Report:
    tensors = [tensor_info(e) for e in ck.entries]
    notes = (
        list(notes)
        + list(ck.notes)
        + ["no model: coverage and blockers need one (a config.json transformers knows, or --model pkg.mod:Class)"]
    )
    return Report(source, None, "headers", sum(e.numel for e in ck.entries), None, {}, [], tensors, [], None, notes)
