"""AWQ, GEMM packing (AutoAWQ / llm-awq ``version: gemm``), from its public description.

Per Linear ``<p>`` of ``in`` inputs and ``out`` outputs, 4-bit codes:

- ``qweight`` int32 ``(in, out / 8)``: eight codes of neighbouring *outputs* per word, nibble ``k``
  (bits ``4k .. 4k+3``) holding output ``8j + ORDER[k]`` with ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``;
- ``qzeros`` int32 ``(in / group_size, out / 8)``, packed the same way; ``scales`` float16 ``(groups, out)``;
- ``W[o, i] = scales[g, o] * (q[i, o] - z[g, o])`` with ``g = i // group_size`` (no act-order).

The repack unpacks, undoes the interleaving and packs each output's codes along the input axis as MLX does.
"""

from __future__ import annotations

import sys

import numpy as np

from ...core import quant
from ...core.entry import TensorEntry
from ...errors import Torch2MLXError
from .common import Found, Packed, check_int32, config_int, modules_of, need

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # output (within a run of 8) held by nibble k
_UNDO = np.argsort(ORDER)  # nibble holding output j


def detect(ck, qc: dict) -> Found:
    path = ck.path
    bits = config_int(qc, "bits", config_int(qc, "w_bit", 4, path), path)
    gs = config_int(qc, "group_size", config_int(qc, "q_group_size", 128, path), path)
    version = str(qc.get("version") or "gemm").lower()
    if bits != 4:
        raise Torch2MLXError(f"{path}: AWQ bits={bits}: the GEMM packing holds 4-bit codes only")
    if version != "gemm":
        raise Torch2MLXError(f"{path}: AWQ version {version!r} is not read (only the GEMM packing)")
    found = Found("awq", bits, gs, zero_point=qc.get("zero_point"), version=version)
    for base, parts in modules_of(ck.entries).items():
        found.modules[base] = _module(base, parts, gs)
        found.hidden.update(e.name for e in parts.values())
    return found


def _module(base: str, parts: dict[str, TensorEntry], gs: int) -> Packed:
    qw = parts[".qweight"]
    scales, qzeros = need(base, parts, ".scales", qw), need(base, parts, ".qzeros", qw)
    m = Packed(base, qw, scales, qzeros, None, 4, gs, 0, 0, fmt=sys.modules[__name__])
    check_int32(m, qw, qzeros)
    m.in_features, m.out_features = qw.shape[0], qw.shape[1] * 8
    m.group_size = m.in_features if gs <= 0 else gs
    groups = -(-m.in_features // m.group_size)
    if scales.shape != (groups, m.out_features):
        m.fail(
            scales,
            f"shape {list(scales.shape)}, expected {[groups, m.out_features]} for a {list(qw.shape)} "
            f"qweight (4-bit, groups of {m.group_size})",
        )
    if qzeros.shape != (groups, qw.shape[1]):
        m.fail(qzeros, f"shape {list(qzeros.shape)}, expected {[groups, qw.shape[1]]}")
    return m


def group_index(m: Packed, reader) -> np.ndarray:
    return np.arange(m.in_features) // m.group_size


def _along_out(entry: TensorEntry, reader, start: int, stop: int) -> np.ndarray:
    """Codes of outputs [start, stop) of an AWQ-packed tensor, interleaving undone: (rows of entry, stop-start)."""
    w0, w1 = start // 8, -(-stop // 8)
    nib = quant.unpack_codes(np.ascontiguousarray(reader.read_rows(entry, w0, w1, 1).view(np.uint32)), 4)
    codes = nib.reshape(nib.shape[0], -1, 8)[:, :, _UNDO].reshape(nib.shape[0], -1)
    return codes[:, start - w0 * 8 : stop - w0 * 8]


def words(m: Packed, reader, start: int, stop: int) -> np.ndarray:
    return quant.pack_codes(np.ascontiguousarray(_along_out(m.qweight, reader, start, stop).T), 4)


def zeros(m: Packed, reader, start: int, stop: int) -> np.ndarray:
    assert m.qzeros is not None  # AWQ GEMM always stores them
    return np.ascontiguousarray(_along_out(m.qzeros, reader, start, stop).T).astype(np.float32)
