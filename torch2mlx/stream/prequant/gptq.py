"""GPTQ (AutoGPTQ / GPTQModel / transformers' GPTQ integration), from its public description.

Per Linear ``<p>`` of ``in`` inputs and ``out`` outputs, ``bits`` in 2/3/4/8:

- ``qweight`` int32 ``(in * bits / 32, out)``: codes packed along the *input* axis, least
  significant bits first, as one continuous bit stream per column (3-bit codes straddle words);
- ``qzeros`` int32 ``(groups, out * bits / 32)``: zero points packed the same way along the output axis;
- ``scales`` float16 ``(groups, out)``; ``g_idx`` int32 ``(in,)``: the group of each input
  (``i // group_size`` unless act-order, ``desc_act``, permuted it);
- ``W[o, i] = scales[g, o] * (q[i, o] - z[g, o])`` with ``g = g_idx[i]``, where ``z`` is the stored zero
  plus one in the original (v1) format and the stored zero in ``checkpoint_format: gptq_v2``.

A column of ``qweight`` is therefore exactly a row of MLX's packed ``weight`` (MLX packs each row's
codes into one continuous little-endian bit stream too): the repack is a transposition.
"""

from __future__ import annotations

import re
import sys

import numpy as np

from ...core.entry import TensorEntry
from ...errors import Torch2MLXError
from .common import Found, Packed, check_int32, codes_along_out, config_int, modules_of, need

BITS = (2, 3, 4, 8)


def detect(ck, qc: dict) -> Found:
    path = ck.path
    bits = config_int(qc, "bits", 4, path)
    gs = config_int(qc, "group_size", 128, path)
    fmt = str(qc.get("checkpoint_format") or "gptq").lower()
    if bits not in BITS:
        raise Torch2MLXError(f"{path}: GPTQ bits={bits} (supported: {', '.join(map(str, BITS))})")
    if fmt not in ("gptq", "gptq_v2"):
        raise Torch2MLXError(f"{path}: GPTQ checkpoint_format {fmt!r} (supported: gptq, gptq_v2)")
    found = Found(
        "gptq",
        bits,
        gs,
        sym=qc.get("sym"),
        desc_act=qc.get("desc_act"),
        checkpoint_format=fmt,
    )
    dynamic = _dynamic(qc.get("dynamic"), path)
    for base, parts in modules_of(ck.entries).items():
        mb, mg = bits, gs
        for pattern, override in dynamic:
            if pattern.match(base):
                mb = config_int(override, "bits", bits, path)
                mg = config_int(override, "group_size", gs, path)
                break
        if mb not in BITS:
            raise Torch2MLXError(f"{path}: GPTQ bits={mb} for {base} (supported: {', '.join(map(str, BITS))})")
        m = _module(base, parts, mb, mg, 0 if fmt == "gptq_v2" else 1)
        found.modules[base] = m
        found.hidden.update(e.name for e in parts.values())
    return found


def _dynamic(dynamic, path: str) -> list[tuple[re.Pattern, dict]]:
    """GPTQModel's per-module overrides: ``{"[+:]regex": {"bits": ..., "group_size": ...}}``, first match wins.

    ``-:`` patterns name modules left unquantized: they hold no ``qweight``, so they need no entry here.
    """
    if dynamic is None:
        return []
    if not isinstance(dynamic, dict):
        raise Torch2MLXError(f"{path}: config.json quantization_config.dynamic must be an object, got {dynamic!r}")
    out = []
    for key, override in dynamic.items():
        if str(key).startswith("-:"):
            continue
        try:
            pattern = re.compile(str(key).removeprefix("+:"))
        except re.error as e:
            raise Torch2MLXError(f"{path}: quantization_config.dynamic pattern {key!r} is not a regex ({e})") from None
        out.append((pattern, override if isinstance(override, dict) else {}))
    return out


def _module(base: str, parts: dict[str, TensorEntry], bits: int, gs: int, zero_offset: int) -> Packed:
    qw = parts[".qweight"]
    scales, qzeros = need(base, parts, ".scales", qw), need(base, parts, ".qzeros", qw)
    g_idx = parts.get(".g_idx")
    m = Packed(base, qw, scales, qzeros, g_idx, bits, gs, 0, 0, fmt=sys.modules[__name__])
    m.zero_offset = zero_offset
    check_int32(m, qw, qzeros)
    rows, out = qw.shape
    if rows * 32 % bits:
        m.fail(qw, f"{rows} packed rows do not hold whole {bits}-bit codes")
    m.in_features, m.out_features = rows * 32 // bits, out
    if bits == 3 and out % 32:
        m.fail(qw, f"3-bit GPTQ needs a multiple of 32 outputs, got {out}")
    m.group_size = m.in_features if gs <= 0 else gs
    groups = -(-m.in_features // m.group_size)
    if g_idx is not None and (g_idx.shape != (m.in_features,) or g_idx.dtype.is_float):
        m.fail(
            qw,
            f"shape {list(qw.shape)} holds {m.in_features} inputs of {bits}-bit codes, but {g_idx.name} is "
            f"{g_idx.dtype.name}{list(g_idx.shape)}",
        )
    if scales.shape[1] != out or (g_idx is None and scales.shape[0] != groups):
        m.fail(
            scales,
            f"shape {list(scales.shape)} does not fit {m.in_features} inputs x {out} outputs "
            f"in groups of {m.group_size} ({list(qw.shape)} qweight of {bits}-bit codes)",
        )
    if qzeros.shape != (scales.shape[0], out * bits // 32):
        m.fail(
            qzeros, f"shape {list(qzeros.shape)}, expected {[scales.shape[0], out * bits // 32]} for {bits}-bit zeros"
        )
    return m


def group_index(m: Packed, reader) -> np.ndarray:
    """The group of each input (read from ``g_idx`` when stored: a few KB)."""
    if m.g_idx is None:
        return np.arange(m.in_features) // m.group_size
    g = reader.read_all(m.g_idx).astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= m.groups):
        m.fail(m.g_idx, f"group indices outside [0, {m.groups})")
    return g


def words(m: Packed, reader, start: int, stop: int) -> np.ndarray:
    """MLX's packed ``weight`` rows [start, stop): the qweight columns, transposed."""
    return np.ascontiguousarray(reader.read_rows(m.qweight, start, stop, 1).view(np.uint32).T)


def zeros(m: Packed, reader, start: int, stop: int) -> np.ndarray:
    """float32 zero points of output rows [start, stop): (rows, groups)."""
    assert m.qzeros is not None  # GPTQ always stores them (sym included)
    z = codes_along_out(m.qzeros, m.bits, reader, start, stop).astype(np.float32)
    return np.ascontiguousarray(z.T) + np.float32(m.zero_offset)
