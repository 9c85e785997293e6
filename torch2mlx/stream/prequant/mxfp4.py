"""MXFP4 checkpoints (gpt-oss's ``*_blocks`` / ``*_scales``) -> MLX ``mxfp4``, byte for byte.

gpt-oss stores each expert projection as two uint8 tensors: ``<p>_blocks``
``[..., rows, G, 16]`` (e2m1 codes, two per byte, low nibble first, 32 codes per
block) and ``<p>_scales`` ``[..., rows, G]`` (e8m0: 2**(s-127)). MLX's mxfp4 mode
holds exactly these numbers in exactly these bytes: packed codes as uint32
``[..., rows, G*4]`` (the same bytes read four at a time, little-endian) and the
same uint8 scales, code 0 and 255 included (2**-127 and inf in both). So nothing
is dequantized: every output is a view of the source's bytes.

Names as mlx-lm's ``gpt_oss`` model wants them once sanitized (it skips its
own ``sanitize`` when ``gate_proj.weight`` is present, so all of it is done here):
``gate_up_proj`` holds gate and up rows interleaved (even rows gate, odd rows
up), so it becomes ``gate_proj``/``up_proj`` ``.weight`` + ``.scales`` and its
``gate_up_proj_bias`` splits the same way; every other ``<p>_blocks`` becomes
``<p>.weight``/``<p>.scales`` and ``<p>_bias`` becomes ``<p>.bias``. The
interleaved halves are strided views (every second row), read in place.

Which checkpoints: config.json's ``quantization_config`` says ``quant_method: mxfp4``
(``describes_mxfp4``); the plan hook is ``view``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...core import dtypes
from ...core.entry import TensorEntry
from ...errors import CheckpointError
from ...formats.checkpoint import Checkpoint

QUANTIZATION = {"group_size": 32, "bits": 4, "mode": "mxfp4"}  # the config block mlx-lm reads
_BLOCK_BYTES = 16  # 32 e2m1 codes
_INTERLEAVED = "gate_up_proj"  # gate rows even, up rows odd
_U32 = dtypes.get("uint32")


def describes_mxfp4(quantization_config) -> bool:
    """Whether a ``quantization_config`` (config.json) announces MXFP4 weights."""
    return isinstance(quantization_config, dict) and str(quantization_config.get("quant_method", "")).lower() == "mxfp4"


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, step = [0] * len(shape), 1
    for i in range(len(shape) - 1, -1, -1):
        out[i] = step
        step *= shape[i]
    return out


def _rows(e: TensorEntry, name: str, dtype, shape: tuple[int, ...], half: int | None) -> TensorEntry:
    """``e``'s bytes as ``dtype`` of ``shape`` (axis -2 = rows); ``half`` 0/1: only its even/odd rows."""
    if half is None:
        if e.array is not None:
            arr = np.ascontiguousarray(e.array).view(dtype.np_dtype).reshape(shape)
            return TensorEntry(name, dtype, shape, array=arr, origin=e.origin)
        return TensorEntry(name, dtype, shape, path=e.path, offset=e.offset, origin=e.origin)
    full = shape[:-2] + (shape[-2] * 2, shape[-1])
    if e.array is not None:
        arr = np.ascontiguousarray(e.array).view(dtype.np_dtype).reshape(full)[..., half::2, :]
        return TensorEntry(name, dtype, shape, array=np.ascontiguousarray(arr), origin=e.origin)
    strides = _strides(full)
    strides[-2] *= 2
    offset = e.offset + half * shape[-1] * dtype.itemsize
    return TensorEntry(name, dtype, shape, path=e.path, offset=offset, strides=tuple(strides), origin=e.origin)


def _readable(e: TensorEntry) -> bool:
    return e.array is not None or (e.in_file and e.contiguous)


def _check(blocks: TensorEntry, scales: TensorEntry | None, base: str) -> None:
    where = blocks.origin or blocks.path or "?"
    if scales is None:
        raise CheckpointError(where, f"{blocks.name}: MXFP4 blocks without {base}_scales")
    if blocks.dtype.name != "uint8" or scales.dtype.name != "uint8":
        raise CheckpointError(
            where, f"{blocks.name}: MXFP4 blocks and scales are uint8, got {blocks.dtype.name} and {scales.dtype.name}"
        )
    if len(blocks.shape) < 3 or blocks.shape[-1] != _BLOCK_BYTES or blocks.shape[:-1] != scales.shape:
        raise CheckpointError(
            where,
            f"{blocks.name}: shape {list(blocks.shape)} is not [..., rows, blocks, 16] "
            f"matching {scales.name} {list(scales.shape)}",
        )
    if base.endswith(_INTERLEAVED) and blocks.shape[-3] % 2:
        raise CheckpointError(where, f"{blocks.name}: {blocks.shape[-3]} rows cannot hold gate and up rows in pairs")
    for e in (blocks, scales):
        if not _readable(e):
            raise CheckpointError(where, f"{e.name}: MXFP4 tensors are read in place; this one is a strided view")


def view(ck: Checkpoint) -> tuple[Checkpoint, list[str], set[str]] | None:
    """``ck`` with its MXFP4 tensors as MLX mxfp4 tensors under mlx-lm's gpt-oss names, notes, and the
    names made (no model has them: they are MLX already); None when config.json does not describe MXFP4."""
    if not describes_mxfp4((ck.config or {}).get("quantization_config")):
        return None
    by_name = {e.name: e for e in ck.entries}
    made: dict[str, list[TensorEntry]] = {}  # source name -> its replacements
    pairs = 0
    for e in ck.entries:
        if not e.name.endswith("_blocks"):
            continue
        base = e.name[: -len("_blocks")]
        scales = by_name.get(base + "_scales")
        _check(e, scales, base)
        assert scales is not None  # _check refused it
        rows, groups = e.shape[-3], e.shape[-2]
        lead = e.shape[:-3]
        bias = by_name.get(base + "_bias")
        if base.endswith(_INTERLEAVED):
            stem = base[: -len(_INTERLEAVED)]
            halves: list[tuple[str, int | None]] = [(stem + "gate_proj", 0), (stem + "up_proj", 1)]
            w_shape, s_shape = lead + (rows // 2, groups * 4), lead + (rows // 2, groups)
        else:
            halves = [(base, None)]
            w_shape, s_shape = lead + (rows, groups * 4), lead + (rows, groups)
        made[e.name] = [_rows(e, p + ".weight", _U32, w_shape, h) for p, h in halves]
        made[scales.name] = [_rows(scales, p + ".scales", scales.dtype, s_shape, h) for p, h in halves]
        if bias is not None:
            if bias.shape != lead + (rows,) or not _readable(bias):
                raise CheckpointError(
                    bias.origin or "?", f"{bias.name}: shape {list(bias.shape)}, expected {list(lead + (rows,))}"
                )
            b_shape = lead + (rows // len(halves),)
            made[bias.name] = [_bias(bias, p + ".bias", b_shape, h) for p, h in halves]
        pairs += 1
    if not pairs:
        return None
    entries = [x for e in ck.entries for x in made.get(e.name, [e])]
    cfg = dict(ck.config or {})
    notes = [
        f"{pairs} MXFP4 weight(s) repacked as MLX mxfp4 without dequantizing (the same bytes), "
        "named as mlx-lm's gpt_oss model expects"
    ]
    names = {x.name for xs in made.values() for x in xs}
    return dataclasses.replace(ck, entries=entries, config=cfg), notes, names


def _bias(e: TensorEntry, name: str, shape: tuple[int, ...], half: int | None) -> TensorEntry:
    """A bias ``[..., rows]``: whole, or its even/odd elements."""
    if half is None:
        return dataclasses.replace(e, name=name)
    if e.array is not None:
        return TensorEntry(name, e.dtype, shape, array=np.ascontiguousarray(e.array[..., half::2]), origin=e.origin)
    strides = _strides(shape[:-1] + (shape[-1] * 2,))
    strides[-1] = 2
    offset = e.offset + half * e.dtype.itemsize
    return TensorEntry(name, e.dtype, shape, path=e.path, offset=offset, strides=tuple(strides), origin=e.origin)
