"""Quantized MLX weights seen as float tensors, read block by block (``--to torch`` and ``--dequantize``).

mlx-lm (and ``t2mlx stream --q-bits``) store an affine-quantized module's weight
as three tensors: ``<p>.weight`` (uint32, packed codes), ``<p>.scales`` and
``<p>.biases``; the fp modes (mxfp4, nvfp4, mxfp8) as two, with uint8 scales.
They become one *virtual* source entry with the float weight's name, shape and
dtype (the scales' for affine, bfloat16 for the fp modes, as ``mx.dequantize``
returns), whose loader dequantizes just the slice a block asks for. The plan then treats it
like any other source: every layout rule (a transposition, a concatenation)
runs on it, and memory stays bounded by the block, never by the tensor.

Only the last axis is packed, so a slice along any other axis is the same
slice of the three stored tensors; a slice of the last axis is widened to whole
quantization groups, dequantized, and cut.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..core import dtypes, quant, quant_fp
from ..core.dtypes import DType
from ..core.entry import TensorEntry
from ..errors import CheckpointError, Torch2MLXError
from ..formats.checkpoint import Checkpoint
from ..formats.data import DataReader

# Rows dequantized at a time: float32 temporaries of about this many elements stay in cache.
_STEP_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class Quantized:
    """One quantized weight as stored: packed codes, scales, biases (affine only) and how they were made."""

    weight: TensorEntry
    scales: TensorEntry
    biases: TensorEntry | None
    bits: int
    group_size: int
    mode: str = "affine"
    out_dtype: DType | None = None  # fp modes: what to dequantize to (mx.dequantize's dtype=)

    @property
    def parts(self) -> tuple[TensorEntry, ...]:
        return (self.weight, self.scales) if self.biases is None else (self.weight, self.scales, self.biases)

    @property
    def dtype(self):
        """What ``mx.dequantize`` returns without a dtype: the scales' dtype, else bfloat16 (or ``out_dtype``)."""
        if self.mode == "affine":
            return self.scales.dtype
        return self.out_dtype or dtypes.get("bfloat16")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.scales.shape[:-1] + (self.scales.shape[-1] * self.group_size,)


class DequantRows:
    """``loader`` of a virtual entry: ``read(axis, start, stop)`` -> dequantized slice (carrier dtype)."""

    def __init__(self, q: Quantized, reader: DataReader):
        self.q, self.reader = q, reader
        # what reading the whole weight costs: the report counts bytes read, not bytes made
        self.nbytes_read = sum(e.nbytes for e in q.parts)

    def read(self, axis: int, start: int, stop: int) -> np.ndarray:
        q = self.q
        last = len(q.shape) - 1
        if axis % len(q.shape) != last:
            return self._dequantize(*[self.reader.read_rows(e, start, stop, axis) for e in q.parts])
        gs, words = q.group_size, q.group_size * q.bits // 32  # a group is a whole number of words
        g0, g1 = start // gs, -(-stop // gs)
        parts = [self.reader.read_rows(q.weight, g0 * words, g1 * words, last)]
        parts += [self.reader.read_rows(e, g0, g1, last) for e in q.parts[1:]]
        lo = start - g0 * gs
        return np.ascontiguousarray(self._dequantize(*parts)[..., lo : lo + stop - start])

    def _dequantize(self, packed: np.ndarray, scales: np.ndarray, biases: np.ndarray | None = None) -> np.ndarray:
        q = self.q
        lead, k = scales.shape[:-1], scales.shape[-1] * q.group_size
        packed, scales = packed.reshape(-1, packed.shape[-1]), scales.reshape(-1, scales.shape[-1])
        if biases is not None:
            biases = biases.reshape(-1, biases.shape[-1])
        out = np.empty((packed.shape[0], k), q.dtype.np_dtype)
        step = max(1, _STEP_ELEMENTS // max(k, 1))
        for r in range(0, out.shape[0], step):
            rows = slice(r, r + step)
            if biases is None:
                out[rows] = quant_fp.dequantize(packed[rows], scales[rows], q.mode, q.dtype)
            else:
                out[rows] = quant.dequantize(
                    packed[rows], scales[rows], biases[rows], q.bits, q.group_size, q.scales.dtype
                )
        return out.reshape(lead + (k,))


def find(entries: list[TensorEntry]) -> dict[str, tuple[TensorEntry, TensorEntry, TensorEntry | None]]:
    """Module path -> (weight, scales, biases or None) for every ``<p>.scales`` next to a uint32 ``<p>.weight``."""
    by_name = {e.name: e for e in entries}
    found = {}
    for e in entries:
        if not e.name.endswith(".scales"):
            continue
        base = e.name[: -len(".scales")]
        w = by_name.get(base + ".weight")
        if w is not None and w.dtype.name == "uint32":
            found[base] = (w, e, by_name.get(base + ".biases"))
    return found


def check(
    base: str, w: TensorEntry, s: TensorEntry, b: TensorEntry | None, bits: int, group_size: int, mode: str = "affine"
) -> Quantized:
    """The stored triple (pair, for the fp modes) as a ``Quantized``, or an error naming what does not fit."""
    if mode in quant_fp.MODES:
        return _check_fp(base, w, s, bits, group_size, mode)
    if mode != "affine":
        raise Torch2MLXError(f"{base}: unknown quantization mode {mode!r}")
    if b is None:
        raise CheckpointError(w.origin, f"{base}.weight is quantized but {base}.biases is missing")
    if bits not in quant.BITS or group_size not in quant.GROUP_SIZES:
        raise Torch2MLXError(f"{base}: bits={bits}, group_size={group_size} is not an MLX affine quantization")
    if s.dtype.name not in quant.SCALE_DTYPES or b.dtype != s.dtype or b.shape != s.shape:
        raise CheckpointError(
            w.origin,
            f"{base}: scales {s.dtype.name}{list(s.shape)} and biases "
            f"{b.dtype.name}{list(b.shape)} must share a float dtype and shape",
        )
    if len(w.shape) < 2 or w.shape[:-1] != s.shape[:-1] or w.shape[-1] * 32 != s.shape[-1] * group_size * bits:
        raise CheckpointError(
            w.origin,
            f"{base}: packed weight {list(w.shape)} does not hold {list(s.shape)} groups "
            f"of {group_size} {bits}-bit codes",
        )
    return Quantized(w, s, b, bits, group_size)


def _check_fp(base: str, w: TensorEntry, s: TensorEntry, bits: int, group_size: int, mode: str) -> Quantized:
    try:
        quant_fp.check_mode(mode, bits, group_size)
    except ValueError as e:
        raise Torch2MLXError(f"{base}: {e}") from None
    if s.dtype.name != "uint8":
        raise CheckpointError(w.origin, f"{base}: {mode} scales are uint8, not {s.dtype.name}")
    if len(w.shape) < 2 or w.shape[:-1] != s.shape[:-1] or w.shape[-1] * 32 != s.shape[-1] * group_size * bits:
        raise CheckpointError(
            w.origin,
            f"{base}: packed weight {list(w.shape)} does not hold {list(s.shape)} groups "
            f"of {group_size} {bits}-bit codes",
        )
    return Quantized(w, s, None, bits, group_size, mode)


def view(
    ck: Checkpoint, quantized: dict[str, Quantized], reader: DataReader, fp_dtype: DType | None = None
) -> Checkpoint:
    """``ck`` with each quantized triple replaced by one virtual float entry named ``<p>.weight``.

    ``fp_dtype``: what the fp modes dequantize to (default bfloat16). Affine weights come in their
    scales' dtype: a later cast of that equals ``mx.dequantize(..., dtype=)``, the fp modes' does not.
    """
    if fp_dtype is not None:
        quantized = {k: q if q.mode == "affine" else replace(q, out_dtype=fp_dtype) for k, q in quantized.items()}
    parts = {q.weight.name: q for q in quantized.values()}
    hidden = {e.name for q in quantized.values() for e in q.parts[1:]}
    entries = []
    for e in ck.entries:
        if e.name in hidden:
            continue
        q = parts.get(e.name)
        if q is not None:
            # path/offset of the packed codes keep the plan's file order (sequential reads)
            e = TensorEntry(
                e.name,
                q.dtype,
                q.shape,
                path=e.path,
                offset=e.offset,
                loader=DequantRows(q, reader),
                origin=e.origin,
            )
        entries.append(e)
    return replace(ck, entries=entries)
