"""Quantized MLX weights seen as float tensors, read block by block (for the way back to PyTorch).

mlx-lm (and ``t2mlx stream --q-bits``) store a quantized module's weight as
three tensors: ``<p>.weight`` (uint32, packed codes), ``<p>.scales`` and
``<p>.biases``. For the reverse stream the three become one *virtual* source
entry with the float weight's name, shape and dtype (the scales'), whose
loader dequantizes just the slice a block asks for. The plan then treats it
like any other source: every layout rule (a transposition, a concatenation)
runs on it, and memory stays bounded by the block, never by the tensor.

Only the last axis is packed, so a slice along any other axis is the same
slice of the three stored tensors; a slice of the last axis is widened to whole
quantization groups, dequantized, and cut.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..core import quant
from ..core.entry import TensorEntry
from ..errors import CheckpointError, Torch2MLXError
from ..formats.checkpoint import Checkpoint
from ..formats.data import DataReader

# Rows dequantized at a time: float32 temporaries of about this many elements stay in cache.
_STEP_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class Quantized:
    """One quantized weight as stored: packed codes, scales, biases and how they were made."""

    weight: TensorEntry
    scales: TensorEntry
    biases: TensorEntry
    bits: int
    group_size: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.scales.shape[:-1] + (self.scales.shape[-1] * self.group_size,)


class DequantRows:
    """``loader`` of a virtual entry: ``read(axis, start, stop)`` -> dequantized slice (carrier dtype)."""

    def __init__(self, q: Quantized, reader: DataReader):
        self.q, self.reader = q, reader
        # what reading the whole weight costs: the report counts bytes read, not bytes made
        self.nbytes_read = q.weight.nbytes + q.scales.nbytes + q.biases.nbytes

    def read(self, axis: int, start: int, stop: int) -> np.ndarray:
        q = self.q
        last = len(q.shape) - 1
        if axis % len(q.shape) != last:
            parts = [self.reader.read_rows(e, start, stop, axis) for e in (q.weight, q.scales, q.biases)]
            return self._dequantize(*parts)
        gs, words = q.group_size, q.group_size * q.bits // 32  # a group is a whole number of words
        g0, g1 = start // gs, -(-stop // gs)
        packed = self.reader.read_rows(q.weight, g0 * words, g1 * words, last)
        scales = self.reader.read_rows(q.scales, g0, g1, last)
        biases = self.reader.read_rows(q.biases, g0, g1, last)
        lo = start - g0 * gs
        return np.ascontiguousarray(self._dequantize(packed, scales, biases)[..., lo : lo + stop - start])

    def _dequantize(self, packed: np.ndarray, scales: np.ndarray, biases: np.ndarray) -> np.ndarray:
        q = self.q
        lead, k = scales.shape[:-1], scales.shape[-1] * q.group_size
        packed, scales, biases = (a.reshape(-1, a.shape[-1]) for a in (packed, scales, biases))
        out = np.empty((packed.shape[0], k), q.scales.dtype.np_dtype)
        step = max(1, _STEP_ELEMENTS // max(k, 1))
        for r in range(0, out.shape[0], step):
            out[r : r + step] = quant.dequantize(
                packed[r : r + step], scales[r : r + step], biases[r : r + step], q.bits, q.group_size, q.scales.dtype
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
    """The stored triple as a ``Quantized``, or an error naming what does not fit."""
    if mode != "affine":
        raise Torch2MLXError(f"{base}: quantization mode {mode!r} cannot be undone (only affine)")
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


def view(ck: Checkpoint, quantized: dict[str, Quantized], reader: DataReader) -> Checkpoint:
    """``ck`` with each quantized triple replaced by one virtual float entry named ``<p>.weight``."""
    parts = {q.weight.name: q for q in quantized.values()}
    hidden = {n for q in quantized.values() for n in (q.scales.name, q.biases.name)}
    entries = []
    for e in ck.entries:
        if e.name in hidden:
            continue
        q = parts.get(e.name)
        if q is not None:
            # path/offset of the packed codes keep the plan's file order (sequential reads)
            e = TensorEntry(
                e.name,
                q.scales.dtype,
                q.shape,
                path=e.path,
                offset=e.offset,
                loader=DequantRows(q, reader),
                origin=e.origin,
            )
        entries.append(e)
    return replace(ck, entries=entries)
