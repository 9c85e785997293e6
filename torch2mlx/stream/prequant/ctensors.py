"""compressed-tensors (llm-compressor, vLLM) integer formats, from the library's public description.

``quantization_config`` says ``quant_method: compressed-tensors``, a ``format`` (top level, or per
entry of ``config_groups``) and per group of modules the weights' ``num_bits``, ``strategy``
(``group``/``channel``/``tensor``), ``group_size`` and ``symmetric``. Per Linear ``<p>`` of ``in``
inputs and ``out`` outputs, with signed integer codes ``c`` in ``[-2**(b-1), 2**(b-1))``:

- ``pack-quantized`` (W4A16, W8A16, ...): ``weight_packed`` int32 ``(out, in * b / 32)``, the codes
  plus ``2**(b-1)`` packed along the *input* axis, 32 codes in ``b`` words, least significant bits
  first (one continuous bit stream when ``in`` is a multiple of 32); ``weight_shape`` ``[out, in]``;
  ``weight_scale`` ``(out, groups)``; asymmetric: ``weight_zero_point`` int32 ``(out * b / 32, groups)``,
  zero points plus ``2**(b-1)`` packed the same way along the *output* axis;
- ``int-quantized`` / ``naive-quantized`` (W8A8, ...): ``weight`` int8 ``(out, in)`` holding ``c`` as is,
  ``weight_scale`` ``(out, groups)``, optional ``weight_zero_point`` ``(out, groups)`` unpacked;
- ``W[o, i] = scale[o, g] * (c[o, i] - zero[o, g])`` with ``g = i // group_size`` (``channel``: one
  group per row; ``tensor``: one scale for all).

With ``u = c + 2**(b-1)`` (the packed code) this is ``scale * (u - (zero + 2**(b-1)))``: MLX's affine
codes are ``u`` unchanged, and ``weight_packed`` rows are MLX's packed ``weight`` rows as they are.
Activation quantization parameters (``input_scale``, ...) are for kernels MLX has not: not written.
``float-quantized`` (FP8) is read by the float8 path (``core.fp8``), ``nvfp4-pack-quantized`` by ``nvfp4``;
the MX formats are refused.
"""

from __future__ import annotations

import re
import sys

import numpy as np

from ...core import quant
from ...core.casts import to_f32
from ...core.entry import TensorEntry
from ...errors import Torch2MLXError
from . import nvfp4
from .common import Found, Packed

INT_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized")
FLOAT_FORMATS = ("float-quantized",)  # core.fp8 reads these
NVFP4 = "nvfp4-pack-quantized"  # nvfp4.py reads these
DENSE = "dense"  # weights stored unquantized
_ACTIVATIONS = ("input_scale", "input_zero_point", "input_global_scale", "output_scale", "output_zero_point")


def describes(qc: dict) -> bool:
    """Whether this module rewrites the weights ``qc`` describes (float8 ones are core.fp8's)."""
    return _format(qc, qc) not in (*FLOAT_FORMATS, DENSE)


def _format(qc: dict, group: dict) -> str:
    return str(group.get("format") or qc.get("format") or "").lower()


def _groups(qc: dict, path: str) -> list[tuple[list[str], dict, str]]:
    """(targets, weight args, format) per config group."""
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise Torch2MLXError(f"{path}: compressed-tensors quantization_config has no config_groups")
    out = []
    for name, g in groups.items():
        if not isinstance(g, dict):
            raise Torch2MLXError(f"{path}: compressed-tensors config group {name!r} is not an object")
        if not isinstance(g.get("weights"), dict):
            continue  # activations or KV cache only: the weights are float
        targets = g.get("targets") or []
        out.append(
            ([str(t) for t in targets] if isinstance(targets, list) else [str(targets)], g["weights"], _format(qc, g))
        )
    return out


def _scheme(base: str, groups):
    """The group ``base`` belongs to: the first whose ``re:`` target matches it, else the first naming a class."""
    for targets, args, fmt in groups:
        if any(t.startswith("re:") and re.match(t[3:], base) for t in targets):
            return args, fmt
    for targets, args, fmt in groups:
        if any(not t.startswith("re:") for t in targets):
            return args, fmt
    return None


def detect(ck, qc: dict) -> Found | None:
    path = ck.path
    top = _format(qc, qc)
    if top in FLOAT_FORMATS:
        return None  # float8: core.fp8
    groups = [g for g in _groups(qc, path) if g[2] != DENSE]
    if not groups:
        return None  # float weights (fake-quantized or activation-only schemes): converted as they are
    for _, args, fmt in groups:
        if fmt == NVFP4 and str(args.get("type")).lower() == "float" and args.get("num_bits") == 4:
            continue
        if fmt not in INT_FORMATS or str(args.get("type", "int")).lower() != "int":
            raise Torch2MLXError(
                f"{path}: compressed-tensors format {fmt or '?'!r} with {args.get('type', '?')} weights is not "
                f"read (supported: {', '.join(INT_FORMATS)} with int weights, {NVFP4}; float-quantized as float8)"
            )
    first = groups[0][1]
    found = Found(
        "compressed-tensors",
        int(first.get("num_bits") or 0),
        int(first.get("group_size") or -1),
        sym=first.get("symmetric"),
        strategy=str(first.get("strategy") or "tensor").lower(),
        checkpoint_format=top or groups[0][2],
    )
    by_name = {e.name: e for e in ck.entries}
    for e in ck.entries:
        if e.name.endswith(".weight_packed"):
            base = e.name[: -len(".weight_packed")]
        elif e.name.endswith(".weight") and e.dtype.name == "int8" and e.name + "_scale" in by_name:
            base = e.name[: -len(".weight")]
        else:
            continue
        scheme = _scheme(base, groups)
        if scheme is None:
            raise Torch2MLXError(f"{path}: {e.name} is quantized but no compressed-tensors config group targets it")
        if scheme[1] == NVFP4:
            m = nvfp4.packed_module(base, e, by_name)
        else:
            m = _module(base, e, by_name, scheme[0], path)
        found.modules[base] = m
        found.hidden.update(
            n
            for n in (
                base + s
                for s in (
                    ".weight_packed",
                    ".weight",
                    ".weight_scale",
                    ".weight_zero_point",
                    ".weight_shape",
                    ".weight_global_scale",
                )
            )
            if n in by_name
        )
    for e in ck.entries:
        stem, _, leaf = e.name.rpartition(".")
        if leaf in _ACTIVATIONS and stem in found.modules:
            found.hidden.add(e.name)
    return found


def _module(base: str, codes: TensorEntry, by_name: dict, args: dict, path: str) -> Packed:
    bits = args.get("num_bits")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise Torch2MLXError(f"{path}: compressed-tensors num_bits {bits!r} for {base} (supported: 1..8)")
    strategy = str(args.get("strategy") or "tensor").lower()
    if strategy not in ("group", "channel", "tensor"):
        raise Torch2MLXError(f"{path}: compressed-tensors strategy {strategy!r} for {base} is not read")
    packed = codes.name.endswith(".weight_packed")
    where = codes.origin or codes.path or "checkpoint"
    scales = by_name.get(base + ".weight_scale")
    if scales is None:
        from ...errors import CheckpointError

        raise CheckpointError(where, f"{codes.name} is quantized but {base}.weight_scale is missing")
    zeros = by_name.get(base + ".weight_zero_point")
    m = Packed(base, codes, scales, zeros, None, bits, 0, 0, 0, fmt=sys.modules[__name__])
    m.shape = by_name.get(base + ".weight_shape")
    if len(codes.shape) != 2 or codes.dtype.name != ("int32" if packed else "int8"):
        m.fail(
            codes, f"expected a 2-D {'int32' if packed else 'int8'} tensor, got {codes.dtype.name}{list(codes.shape)}"
        )
    out = codes.shape[0]
    m.out_features = out
    m.in_features = codes.shape[1] * 32 // bits if packed else codes.shape[1]
    if packed and codes.shape[1] * 32 % bits:
        m.fail(codes, f"{codes.shape[1]} packed words per row do not hold whole {bits}-bit codes")
    if scales.dtype.name not in quant.SCALE_DTYPES or len(scales.shape) not in (1, 2):
        m.fail(scales, f"expected float16/bfloat16/float32 scales, got {scales.dtype.name}{list(scales.shape)}")
    gs = args.get("group_size")
    m.group_size = int(gs) if strategy == "group" and isinstance(gs, int) and gs > 0 else m.in_features
    if strategy == "group" and not (isinstance(gs, int) and gs > 0):
        m.fail(codes, f"strategy group without a positive group_size ({gs!r})")
    groups = -(-m.in_features // m.group_size)
    want = [(1,), (1, 1)] if strategy == "tensor" else [(out, groups)]
    if tuple(scales.shape) not in want:
        m.fail(
            scales,
            f"shape {list(scales.shape)}, expected {list(want[0])} for {out} outputs x {m.in_features} "
            f"inputs ({strategy} strategy, groups of {m.group_size})",
        )
    if zeros is not None:
        zw = (-(-out * bits // 32), groups) if packed and strategy != "tensor" else tuple(scales.shape)
        if tuple(zeros.shape) != zw or zeros.dtype.is_float:
            m.fail(zeros, f"expected an integer tensor of shape {list(zw)}, got {zeros.dtype.name}{list(zeros.shape)}")
    return m


def group_index(m: Packed, reader) -> np.ndarray:
    if m.shape is not None:  # weight_shape: the true input count (a row's codes are padded to 32)
        shape = [int(x) for x in reader.read_all(m.shape).reshape(-1)]
        if shape != [m.out_features, m.in_features]:
            m.fail(m.shape, f"{shape} disagrees with {m.qweight.name} {list(m.qweight.shape)} of {m.bits}-bit codes")
    if m.in_features % 32:
        m.fail(m.qweight, f"{m.in_features} inputs: torch2mlx reads rows of a multiple of 32 codes only")
    return np.arange(m.in_features) // m.group_size


def words(m: Packed, reader, start: int, stop: int) -> np.ndarray:
    raw = reader.read_rows(m.qweight, start, stop, 0)
    if m.qweight.dtype.name == "int32":
        return np.ascontiguousarray(raw.view(np.uint32))
    u = (raw.astype(np.int16) + (1 << (m.bits - 1))).astype(np.uint8)
    return quant.pack_codes(u, m.bits)


def read_scales(m: Packed, reader, start: int, stop: int) -> np.ndarray:
    if m.scales.shape[0] == 1 and m.out_features != 1 or len(m.scales.shape) == 1:  # tensor strategy
        s = to_f32(reader.read_all(m.scales), m.scales.dtype).reshape(1, 1)
        return np.repeat(s, stop - start, axis=0)
    return np.ascontiguousarray(to_f32(reader.read_rows(m.scales, start, stop, 0), m.scales.dtype))


def zeros(m: Packed, reader, start: int, stop: int) -> np.ndarray:
    """``zero + 2**(b-1)`` of output rows [start, stop), float32 (rows, groups)."""
    half = np.float32(1 << (m.bits - 1))
    groups = -(-m.in_features // m.group_size)
    z = m.qzeros
    if z is None:
        return np.full((stop - start, groups), half, np.float32)
    if m.qweight.dtype.name != "int32" or z.shape == m.scales.shape:  # stored unpacked, signed
        if z.shape[0] == 1 and m.out_features != 1:
            return np.full((stop - start, groups), np.float32(reader.read_all(z).reshape(-1)[0]) + half, np.float32)
        return reader.read_rows(z, start, stop, 0).astype(np.float32) + half
    # packed along the output axis: word rows [w0, w1) hold whole runs of 32 outputs
    b = m.bits
    w0, w1 = start // 32 * b, min(-(-stop // 32) * b, z.shape[0])
    packed = reader.read_rows(z, w0, w1, 0).view(np.uint32).T  # (groups, words)
    pad = -packed.shape[1] % b
    if pad:
        packed = np.concatenate([packed, np.zeros((packed.shape[0], pad), np.uint32)], axis=1)
    codes = quant.unpack_codes(np.ascontiguousarray(packed), b)
    lo = start - w0 * 32 // b
    return np.ascontiguousarray(codes[:, lo : lo + stop - start].T).astype(np.float32)
