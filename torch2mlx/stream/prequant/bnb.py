"""bitsandbytes checkpoints (transformers' ``load_in_4bit`` / ``load_in_8bit``), from the format's public description.

4-bit (NF4 / FP4, ``Params4bit``), per Linear ``<p>`` of weight shape ``(out, in)``:

- ``<p>.weight`` uint8 ``(out * in / 2, 1)``: 4-bit codes of the row-major flattened weight, two per
  byte, the first in the *high* nibble;
- ``<p>.weight.quant_map`` float32 ``(16,)``: the value of each code (NF4's normal quantiles, or FP4's);
- ``<p>.weight.absmax``: one scale per block of ``blocksize`` consecutive elements, float32, or with
  double quantization (``bnb_4bit_use_double_quant``) uint8 codes into ``nested_quant_map`` (256 values)
  times ``nested_absmax`` (one per ``nested_blocksize`` blocks) plus ``nested_offset``;
- ``<p>.weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``): uint8 bytes of a JSON object with
  ``quant_type``, ``blocksize``, ``shape``, ``dtype`` and the ``nested_*`` parameters;
- ``W = quant_map[code] * absmax[block]`` in float32, the absmax of a double-quantized block being
  ``nested_quant_map[a] * nested_absmax[block // nested_blocksize] + nested_offset`` (each op rounded to
  float32, as bitsandbytes computes it).

8-bit (LLM.int8, ``Int8Params``): ``<p>.weight`` int8 ``(out, in)``, ``<p>.SCB`` float32 ``(out,)`` (each
row's absmax), ``<p>.weight_format``; ``W = (q * SCB) * 0.007874015718698502`` (bitsandbytes' 1/127, float32).

Neither is MLX affine: NF4's values are not evenly spaced, FP4's neither, and an int8 row's scale
``SCB/127`` times a code does not round as bitsandbytes' two products do. So every module is dequantized
exactly, a block of rows at a time, and requantized (by default to the source's bits in MLX groups of
64, or as ``--q-bits``/``--q-group-size``/``--q-mode`` ask) with the error measured.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from ...core.entry import TensorEntry
from ...errors import CheckpointError, Torch2MLXError
from ...formats.data import DataReader
from .common import Found, Packed

DEQUANTIZED = "bitsandbytes: quant_map[code]*absmax or q*SCB/127 in float32, values MLX affine cannot hold"
_INT8_SCALE = np.float32(7.874015718698502e-3)
_STATE = ".quant_state.bitsandbytes__"
TARGET_GROUP = 64  # MLX group of the requantization (bitsandbytes' default blocksize)


def detect(ck, qc: dict) -> Found:
    path = ck.path
    by_name = {e.name: e for e in ck.entries}
    four = bool(qc.get("load_in_4bit")) or any(_STATE in e.name for e in ck.entries)
    kind = str(qc.get("bnb_4bit_quant_type") or "nf4").lower() if four else "int8"
    found = Found("bitsandbytes", 4 if four else 8, 0, checkpoint_format=kind)
    reader = DataReader()
    try:
        for e in ck.entries:
            if four and _STATE in e.name and e.name.rsplit("__", 1)[-1] in ("nf4", "fp4"):
                weight = e.name[: e.name.index(_STATE)]
                m = _module4(weight, e, by_name, reader)
            elif not four and e.name.endswith(".SCB"):
                base = e.name[: -len(".SCB")]
                m = _module8(base, e, by_name)
            else:
                continue
            found.modules[m.base] = m
            found.hidden.update(n for n in by_name if n == m.base + ".weight" or n.startswith(m.base + ".weight."))
            found.hidden.update(n for n in (m.base + ".SCB", m.base + ".weight_format") if n in by_name)
    finally:
        reader.close()
    if found.modules:
        # the source's blocks (int8: one scale per row, -1), not the requantization's groups
        found.group_size = next(iter(found.modules.values())).extra.get("blocksize", -1)
    if not found.modules and any(e.dtype.name in ("uint8", "int8") and e.name.endswith(".weight") for e in ck.entries):
        raise Torch2MLXError(
            f"{path}: config.json says bitsandbytes but no module has its quantization state "
            f"({'weight' + _STATE + 'nf4/fp4' if four else 'SCB'})"
        )
    return found


def _fail(e: TensorEntry, problem: str):
    raise CheckpointError(e.origin or e.path or "checkpoint", f"{e.name}: {problem}")


def _module4(weight: str, state: TensorEntry, by_name: dict, reader) -> Packed:
    base = weight[: -len(".weight")]
    codes = by_name.get(weight)
    absmax = by_name.get(weight + ".absmax")
    qmap = by_name.get(weight + ".quant_map")
    for e, what in ((codes, weight), (absmax, weight + ".absmax"), (qmap, weight + ".quant_map")):
        if e is None:
            _fail(state, f"a bitsandbytes 4-bit state without {what}")
    assert codes is not None and absmax is not None and qmap is not None
    try:
        qs = json.loads(bytes(reader.read_all(state).astype(np.uint8).reshape(-1)).decode())
        out_f, in_f = (int(x) for x in qs["shape"])
        bs = int(qs["blocksize"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        _fail(state, f"not a bitsandbytes quant state with a 2-D shape and a blocksize ({err})")
    m = Packed(base, codes, absmax, None, None, 4, bs, in_f, out_f, fmt=sys.modules[__name__])
    m.extra.update(state=qs, qmap=qmap, blocksize=bs)
    n = out_f * in_f
    if codes.dtype.name != "uint8" or codes.nbytes * 2 != n or in_f % 2:
        _fail(codes, f"{codes.dtype.name}{list(codes.shape)} does not hold {out_f}x{in_f} 4-bit codes")
    if bs <= 0 or absmax.shape[0] != -(-n // bs) or qmap.shape != (16,) or qmap.dtype.name != "float32":
        _fail(
            absmax,
            f"shape {list(absmax.shape)} does not fit {n} elements in blocks of {bs} (or quant_map is not 16 float32)",
        )
    if absmax.dtype.name == "uint8":
        nested = [by_name.get(weight + ".nested_absmax"), by_name.get(weight + ".nested_quant_map")]
        if None in nested or "nested_offset" not in qs or "nested_blocksize" not in qs:
            _fail(absmax, "uint8 (double-quantized) absmax without nested_absmax/nested_quant_map/nested_offset")
        m.extra["nested"] = nested
    elif absmax.dtype.name != "float32":
        _fail(absmax, f"expected float32 or uint8, got {absmax.dtype.name}")
    m.group_size = TARGET_GROUP
    return m


def _module8(base: str, scb: TensorEntry, by_name: dict) -> Packed:
    codes = by_name.get(base + ".weight")
    if codes is None:
        _fail(scb, f"bitsandbytes int8 scales without {base}.weight")
    assert codes is not None
    if codes.dtype.name != "int8" or len(codes.shape) != 2:
        _fail(codes, f"expected a 2-D int8 tensor next to {scb.name}, got {codes.dtype.name}{list(codes.shape)}")
    if scb.shape != (codes.shape[0],) or scb.dtype.name != "float32":
        _fail(scb, f"expected float32 [{codes.shape[0]}], got {scb.dtype.name}{list(scb.shape)}")
    m = Packed(base, codes, scb, None, None, 8, TARGET_GROUP, codes.shape[1], codes.shape[0], fmt=sys.modules[__name__])
    return m


def group_index(m: Packed, reader) -> None:
    return None  # no affine form: always the float view


def _absmax(m: Packed, reader, b0: int, b1: int) -> np.ndarray:
    """float32 absmax of blocks [b0, b1)."""
    a = reader.read_rows(m.scales, b0, b1, 0).reshape(-1)
    if m.scales.dtype.name == "float32":
        return a.view(np.float32) if a.dtype != np.float32 else a
    nabs, nmap = m.extra["nested"]
    nbs = int(m.extra["state"]["nested_blocksize"])
    table = reader.read_all(nmap).reshape(-1).astype(np.float32)
    top = reader.read_rows(nabs, b0 // nbs, (b1 - 1) // nbs + 1, 0).reshape(-1).astype(np.float32)
    outer = top[np.arange(b0, b1) // nbs - b0 // nbs]
    v = table[a.astype(np.intp)] * outer
    v += np.float32(m.extra["state"]["nested_offset"])
    return v


def dequantized(m: Packed, reader, start: int, stop: int) -> np.ndarray:
    """float32 rows [start, stop) of the weight, as bitsandbytes dequantizes them."""
    if m.bits == 8:
        q = reader.read_rows(m.qweight, start, stop, 0).astype(np.float32)
        s = reader.read_rows(m.scales, start, stop, 0).astype(np.float32)
        q *= s[:, None]
        q *= _INT8_SCALE
        return q
    k, bs = m.in_features, m.extra["blocksize"]
    e0, e1 = start * k, stop * k
    raw = reader.read_rows(m.qweight, e0 // 2, e1 // 2, 0).reshape(-1)
    codes = np.empty(raw.size * 2, np.uint8)
    codes[0::2], codes[1::2] = raw >> 4, raw & 15
    table = reader.read_all(m.extra["qmap"]).reshape(-1).astype(np.float32)
    b0, b1 = e0 // bs, (e1 - 1) // bs + 1
    absmax = _absmax(m, reader, b0, b1)
    v = table[codes]
    if e0 % bs == 0 and (e1 - e0) % bs == 0:  # whole blocks (rows of a multiple of blocksize)
        v = (v.reshape(-1, bs) * absmax[:, None]).reshape(-1)
    else:
        v *= absmax[np.arange(e0, e1) // bs - b0]
    return v.reshape(stop - start, k)
