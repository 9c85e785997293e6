"""Unquantized gpt-oss experts under the names and layout mlx-lm's ``gpt_oss`` model loads.

transformers' ``GptOssExperts`` holds, per MoE layer, ``gate_up_proj`` ``[E, hidden, 2*I]`` (used as
``x @ W``: inputs first) whose last axis interleaves gate and up outputs (even columns gate, odd up),
``gate_up_proj_bias`` ``[E, 2*I]`` interleaved the same way, ``down_proj`` ``[E, I, hidden]`` and
``down_proj_bias``. mlx-lm's model wants ``gate_proj``/``up_proj``/``down_proj`` ``.weight`` as
``[E, out, in]`` and ``.bias``; its ``sanitize`` splits only the MXFP4 form (``prequant.mxfp4`` does
that one), and skips itself once ``gate_proj.weight`` is present. So each tensor here becomes a strided
view of the source bytes -- the transposition and the even/odd split are strides, nothing is copied
until the plan reads a block of experts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..core.entry import TensorEntry
from ..core.spec import RuleSpec
from ..formats.checkpoint import Checkpoint
from .prequant.mxfp4 import _bias, _strides, describes_mxfp4

_GATE_UP, _DOWN = "mlp.experts.gate_up_proj", "mlp.experts.down_proj"


def _is_gpt_oss(config) -> bool:
    cfg = config or {}
    return cfg.get("model_type") == "gpt_oss" or "GptOssForCausalLM" in (cfg.get("architectures") or [])


def _view(e: TensorEntry, name: str, shape, perm, step: int, first: int) -> TensorEntry | None:
    """``e`` (3-D) with its axes ordered ``perm``, axis 1 of the result taking every ``step``-th index from
    ``first``; None when ``e`` is a view this cannot express (not in a file nor in memory)."""
    if e.array is not None:
        arr = np.asarray(e.array).reshape(e.shape).transpose(perm)[:, first::step, :]
        return TensorEntry(name, e.dtype, shape, array=np.ascontiguousarray(arr), origin=e.origin)
    if not e.in_file:
        return None
    src = list(e.strides) if e.strides is not None else _strides(e.shape)
    strides = [src[p] for p in perm]
    offset = e.offset + first * strides[1] * e.dtype.itemsize
    strides[1] *= step
    return TensorEntry(name, e.dtype, shape, path=e.path, offset=offset, strides=tuple(strides), origin=e.origin)


def view(ck: Checkpoint) -> tuple[Checkpoint, list[str], set[str]] | None:
    """``ck`` with its gpt-oss expert tensors as mlx-lm's, notes and the names made; None when not gpt-oss,
    quantized (MXFP4: ``prequant.mxfp4``) or holding no unsplit expert tensors."""
    cfg = ck.config or {}
    if not _is_gpt_oss(cfg) or describes_mxfp4(cfg.get("quantization_config")):
        return None
    made: dict[str, list[TensorEntry]] = {}
    for e in ck.entries:
        if len(e.shape) == 3 and e.name.endswith(_GATE_UP) and e.shape[2] % 2 == 0:
            n, h, two_i = e.shape
            stem = e.name[: -len("gate_up_proj")]
            parts = [
                _view(e, f"{stem}{p}.weight", (n, two_i // 2, h), (0, 2, 1), 2, half)
                for half, p in ((0, "gate_proj"), (1, "up_proj"))
            ]
        elif len(e.shape) == 3 and e.name.endswith(_DOWN):
            n, i, h = e.shape
            parts = [_view(e, e.name + ".weight", (n, h, i), (0, 2, 1), 1, 0)]
        elif len(e.shape) == 2 and e.name.endswith(_GATE_UP + "_bias") and e.shape[1] % 2 == 0:
            if not (e.array is not None or (e.in_file and e.contiguous)):
                return None
            stem = e.name[: -len("gate_up_proj_bias")]
            shape = (e.shape[0], e.shape[1] // 2)
            parts = [_bias(e, f"{stem}{p}.bias", shape, half) for half, p in ((0, "gate_proj"), (1, "up_proj"))]
        elif e.name.endswith(_DOWN + "_bias"):
            parts = [dataclasses.replace(e, name=e.name[: -len("_bias")] + ".bias")]
        else:
            continue
        if any(p is None for p in parts):
            return None
        made[e.name] = [p for p in parts if p is not None]
    if not made:
        return None
    entries = [x for e in ck.entries for x in made.get(e.name, [e])]
    layers = sum(1 for n in made if n.endswith(_GATE_UP))
    notes = [
        f"gpt-oss experts of {layers} layer(s): gate_up_proj split into gate_proj/up_proj (even/odd outputs) and "
        "every expert weight transposed to [experts, out, in], as mlx-lm's gpt_oss model loads them"
    ]
    return dataclasses.replace(ck, entries=entries), notes, {x.name for xs in made.values() for x in xs}


def identity_specs(specs: list[RuleSpec] | None, made: set[str]) -> list[RuleSpec]:
    """``specs`` with the views ``made`` copied as they are (a 3-D ``*.weight`` would be guessed a conv)."""
    kept = [s for s in specs or [] if not made.intersection(s.sources) and s.out not in made]
    return kept + [RuleSpec(n, (n,), "identity", rule_source="gpt-oss layout") for n in sorted(made)]
