"""Affine group quantization, bit-identical to ``mlx.core.quantize`` (mode "affine") on the CPU.

numpy only: the stream converter quantizes while it streams and must not need
MLX or torch. Rows are independent, so a tensor can be quantized one block of
rows at a time and the results concatenated.

What MLX computes (CPU backend, checked bit for bit against mlx 0.32), per
group of ``group_size`` consecutive elements of the last axis, in float32 on
the values of the scale dtype ``T`` (float32, float16 or bfloat16):

    n_bins = 2**bits - 1
    bits >= 2:
      scale = max((w_max - w_min) / n_bins, 1e-7)
      edge  = w_min if |w_min| > |w_max| else w_max     # the end of larger magnitude
      scale = scale if edge is w_min else -scale        # (negative when it is w_max)
      q0    = rint(edge / scale)
      if q0 != 0: scale = edge / q0; bias = edge        # edge maps exactly onto code 0
      else:       bias = 0
    bits == 1:
      scale = max(w_max - w_min, 1e-7); bias = w_min
    q = clip(rint((w - bias) / scale), 0, n_bins)       # with the float32 scale
    scales, biases = T(scale), T(bias)                  # rounded only when stored

``rint`` rounds half to even; min/max skip NaNs like a sequential
``std::min``/``std::max`` loop; NaN codes become 0. Codes are packed
least-significant bits first into one continuous little-endian bit stream, so
3-, 5- and 6-bit codes straddle uint32 words; 8 codes always fill exactly
``bits`` bytes.

``mx.dequantize`` is ``T(T(scale * q) + bias)``: two rounded ops, no fused
multiply-add.

MLX's Metal kernel (a Mac's default device) is not this path: it starts the
group max at 0 rather than -inf, rounds half away from zero and divides in
Metal float arithmetic, so mlx-lm converting on a GPU can differ from this
module (and from MLX on the CPU) in groups with no positive value and in codes
at a rounding tie.
"""

from __future__ import annotations

import math

import numpy as np

from . import dtypes
from .casts import cast, f32_to_bf16, f32_to_f16, to_f32
from .dtypes import DType

BITS = (1, 2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
SCALE_DTYPES = ("float32", "float16", "bfloat16")
_EPS = 1e-7  # as np.float32 where used: numpy is imported on first use
# Rows are processed in steps of about this many elements: the float32 temporaries
# stay in cache (throughput drops ~2x on multi-MB steps) and memory stays bounded.
_STEP_ELEMENTS = 1 << 17


def _dtype(d: DType | str) -> DType:
    return d if isinstance(d, DType) else dtypes.get(d)


def _check(bits: int, group_size: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")


def _from_f32(x: np.ndarray, dt: DType) -> np.ndarray:
    """Round float32 to ``dt`` as MLX's CPU conversions do (RNE; MLX's own NaN encodings)."""
    if dt.name == "float32":
        return x
    with np.errstate(over="ignore"):  # out of range -> inf, as MLX's cast gives
        out = f32_to_bf16(x) if dt.name == "bfloat16" else f32_to_f16(x).view(np.float16)
    nan = np.isnan(x)
    if nan.any():
        # Reached when a group holds +-inf (inf - inf) or NaN. MLX writes bfloat16 NaN
        # as 0x7FC0 whatever the sign, float16 NaN as sign | 0x7D00.
        bits = out.view(np.uint16)
        if dt.name == "bfloat16":
            bits[nan] = 0x7FC0
        else:
            bits[nan] = (x[nan].view(np.uint32) >> 16).astype(np.uint16) & 0x8000 | 0x7D00
    return out


# ---- bit packing: runs of 8 codes <-> `bits` bytes ---------------------------------


def _byte_pieces(bits: int):
    """(byte j, code i, shift) for every code bit range overlapping byte j of a run.

    Code i occupies bits [i*bits, (i+1)*bits) of the run; a positive shift moves it
    left within byte j, a negative one right.
    """
    return [
        (j, i, i * bits - 8 * j)
        for j in range(bits)
        for i in range(8)
        if i * bits < 8 * (j + 1) and (i + 1) * bits > 8 * j
    ]


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes ``(..., K)`` (K % 32 == 0) into uint32 ``(..., K*bits/32)``, LSB first."""
    lead, k = codes.shape[:-1], codes.shape[-1]
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes.view("<u4").reshape(*lead, k // 4).astype(np.uint32, copy=False)
    runs = codes.reshape(-1, 8)
    cols = [np.ascontiguousarray(runs[:, i]) for i in range(8)]
    out = np.zeros((runs.shape[0], bits), np.uint8)
    for j, i, shift in _byte_pieces(bits):
        # uint8 shifts drop the bits that belong to the neighbouring bytes.
        out[:, j] |= cols[i] << shift if shift >= 0 else cols[i] >> -shift
    return out.reshape(*lead, k * bits // 8).view("<u4").astype(np.uint32, copy=False)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of ``pack_codes``: uint32 ``(..., W)`` -> uint8 codes ``(..., W*32/bits)``."""
    lead, w = packed.shape[:-1], packed.shape[-1]
    raw = np.ascontiguousarray(packed, dtype="<u4").view(np.uint8)
    if bits == 8:
        return raw.reshape(*lead, w * 4)
    runs = raw.reshape(-1, bits)
    cols = [np.ascontiguousarray(runs[:, j]) for j in range(bits)]
    out = np.zeros((runs.shape[0], 8), np.uint8)
    for j, i, shift in _byte_pieces(bits):
        out[:, i] |= cols[j] >> shift if shift >= 0 else cols[j] << -shift
    out &= np.uint8((1 << bits) - 1)
    return out.reshape(*lead, w * 32 // bits)


# ---- one block of groups, held transposed -----------------------------------------
# The quantizer works on groups laid out as columns, ``xT`` of shape (group_size, G):
# reductions and per-group broadcasts then run along long contiguous rows, about
# twice as fast as numpy's reductions over a short last axis.


def _group_min_max(xT: np.ndarray):
    """Per-group (min, max), as MLX's sequential ``std::min``/``std::max`` loop finds them.

    That loop skips NaNs (a comparison with NaN is false) and an all-NaN group keeps
    the start values (+inf, -inf); numpy propagates NaN, so the rare groups holding
    one are redone with their NaNs replaced by those start values. (Not with
    ``np.fmin``/``np.fmax``: their reductions restart after a signalling NaN, which
    random bits and some corrupt checkpoints hold.)
    """
    w_min, w_max = xT.min(axis=0), xT.max(axis=0)
    bad = np.isnan(w_max)
    if bad.any():
        sub = xT[:, bad]
        nan = np.isnan(sub)
        w_min[bad] = np.where(nan, np.float32(np.inf), sub).min(axis=0)
        w_max[bad] = np.where(nan, np.float32(-np.inf), sub).max(axis=0)
    return w_min, w_max


def _signed_zero_min(xT: np.ndarray, w_min: np.ndarray) -> np.ndarray:
    """``w_min`` with the sign of zero MLX keeps: that of the group's first zero.

    The sequential loop keeps the first of equal values, and -0.0 == 0.0; numpy
    makes no promise. Only 1-bit biases store ``w_min`` as is.
    """
    zero = w_min == 0
    if zero.any():
        sub = xT[:, zero]
        w_min = w_min.copy()
        w_min[zero] = sub[np.argmax(sub == 0, axis=0), np.arange(sub.shape[1])]
    return w_min


def _snapped_scale_bias(w_min: np.ndarray, w_max: np.ndarray, n_bins: np.float32):
    """Per-group float32 (scale, bias) for bits >= 2, see the module docstring."""
    low_edge = np.abs(w_min) > np.abs(w_max)
    scale = np.maximum((w_max - w_min) / n_bins, np.float32(_EPS))
    scale = np.where(low_edge, scale, -scale)
    edge = np.where(low_edge, w_min, w_max)
    q0 = np.rint(edge / scale)
    snap = q0 != 0
    scale = np.where(snap, edge / np.where(snap, q0, 1), scale).astype(np.float32)
    bias = np.where(snap, edge, np.float32(0)).astype(np.float32)
    return scale, bias


def _codes_T(xT: np.ndarray, bits: int):
    """float32 ``(gs, G)`` -> (uint8 codes ``(gs, G)``, float32 scale ``(G,)``, bias ``(G,)``)."""
    n_bins = np.float32((1 << bits) - 1)
    w_min, w_max = _group_min_max(xT)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if bits == 1:
            scale = np.maximum(w_max - w_min, np.float32(_EPS))
            bias = _signed_zero_min(xT, w_min)
        else:
            scale, bias = _snapped_scale_bias(w_min, w_max, n_bins)
        q = np.subtract(xT, bias)
        np.divide(q, scale, out=q)
        np.rint(q, out=q)
        np.clip(q, 0, n_bins, out=q)
    nan = np.isnan(q)
    if nan.any():
        # NaN w, or 0/0 in an all-equal group of |w| > ~1e31: MLX's float->integer
        # conversion yields 0 there (x86 and ARM alike, bits above the field dropped).
        q[nan] = 0
    return q.astype(np.uint8), scale, bias


def _pack_T(codesT: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """``pack_codes`` for codes held transposed: ``(gs, G)`` -> uint32 ``(rows, K*bits/32)``."""
    gs, g = codesT.shape
    if bits == 8:
        return np.ascontiguousarray(codesT.T).reshape(rows, -1).view("<u4").astype(np.uint32, copy=False)
    out = np.zeros((bits, gs // 8, g), np.uint8)  # byte j of run r of group n
    for j, i, shift in _byte_pieces(bits):
        c = codesT[i::8]  # code i of every run, (gs/8, G)
        out[j] |= c << shift if shift >= 0 else c >> -shift
    raw = np.ascontiguousarray(out.transpose(2, 1, 0)).reshape(rows, -1)
    return raw.view("<u4").astype(np.uint32, copy=False)


def _groups_T(block: np.ndarray, dt: DType, group_size: int) -> np.ndarray:
    """Rows of ``dt`` values/bits -> float32 groups as columns ``(group_size, G)``."""
    # Transposing the (narrower) source before widening moves fewer bytes.
    return to_f32(np.ascontiguousarray(block.reshape(-1, group_size).T), dt)


def row_blocks(w, group_size: int, src_dtype, out_dtype):
    """``w`` checked as ``mx.quantize`` checks it, for any mode: ``(lead, K, out, blocks)``, where ``blocks``
    yields ``(first row, rows cast to out)`` over ``w`` seen as ``(rows, K)``, a few hundred KB at a time."""
    w = np.asarray(w)
    if src_dtype is None:
        if w.dtype.kind != "f":
            raise ValueError(f"{w.dtype} holds raw bits: name src_dtype (e.g. 'bfloat16')")
        src_dtype = str(w.dtype)
    src = _dtype(src_dtype)
    out = _dtype(out_dtype) if out_dtype is not None else dtypes.mlx_target(src)
    if out.name not in SCALE_DTYPES:
        raise ValueError(f"MLX quantizes only {SCALE_DTYPES}, not {out.name}")
    if w.ndim < 1 or w.shape[-1] % group_size:
        raise ValueError(f"last axis of shape {w.shape} is not divisible by group_size {group_size}")
    lead, k = w.shape[:-1], w.shape[-1]
    rows = w.reshape(-1, k)
    step = max(1, _STEP_ELEMENTS // k)

    def blocks():
        for r in range(0, rows.shape[0], step):
            block = rows[r : r + step]
            yield r, (cast(block, src, out) if src.name != out.name else block)

    return lead, k, out, blocks()


def quantize(
    w: np.ndarray,
    bits: int = 4,
    group_size: int = 64,
    src_dtype: DType | str | None = None,
    out_dtype: DType | str | None = None,
):
    """Quantize ``w`` along its last axis exactly as ``mx.quantize(w.astype(T), group_size, bits)``.

    ``w``: values (float32/float16/...) or raw bits (bfloat16 as uint16, float8 as
    uint8) of ``src_dtype`` (default: ``w``'s numpy float dtype; raw bits need it
    named); any leading axes; last axis divisible by ``group_size``.
    ``out_dtype`` (default: what MLX stores for ``src_dtype``, i.e. itself, or
    float32 for float64, bfloat16 for float8) is ``T``, the float dtype the MLX model
    holds: the input is first cast to it exactly, and scales/biases come back in it
    (bfloat16 as uint16 bits).

    Returns ``(packed, scales, biases)``: uint32 ``(..., K*bits/32)`` and two
    ``(..., K/group_size)`` arrays. Rows are independent: quantizing any block of
    rows gives those rows of the whole result, so a stream can bound its memory.
    """
    _check(bits, group_size)
    lead, k, out, blocks = row_blocks(w, group_size, src_dtype, out_dtype)
    n, groups = math.prod(lead), k // group_size
    packed = np.empty((n, k * bits // 32), np.uint32)
    scales = np.empty((n, groups), np.float32)
    biases = np.empty((n, groups), np.float32)
    for r, block in blocks:
        step = block.shape[0]
        codes, scale, bias = _codes_T(_groups_T(block, out, group_size), bits)
        packed[r : r + step] = _pack_T(codes, bits, block.shape[0])
        scales[r : r + step] = scale.reshape(-1, groups)
        biases[r : r + step] = bias.reshape(-1, groups)
    return (
        packed.reshape(*lead, k * bits // 32),
        _from_f32(scales, out).reshape(*lead, groups),
        _from_f32(biases, out).reshape(*lead, groups),
    )


def dequantize(
    packed: np.ndarray,
    scales: np.ndarray,
    biases: np.ndarray,
    bits: int = 4,
    group_size: int = 64,
    dtype: DType | str = "float32",
) -> np.ndarray:
    """``mx.dequantize(packed, scales, biases, group_size, bits)`` in numpy.

    ``dtype`` is the dtype of ``scales``/``biases`` (bfloat16 as uint16 bits) and
    of the result. Computed as ``T(T(scale * q) + bias)``, as MLX does.
    """
    _check(bits, group_size)
    dt = _dtype(dtype)
    q = unpack_codes(np.asarray(packed), bits).astype(np.float32)
    lead, k = q.shape[:-1], q.shape[-1]
    q = q.reshape(*lead, k // group_size, group_size)
    s = to_f32(np.asarray(scales), dt)[..., None]
    b = to_f32(np.asarray(biases), dt)[..., None]
    with np.errstate(invalid="ignore", over="ignore"):
        prod = to_f32(_from_f32(q * s, dt), dt)
        return _from_f32(prod + b, dt).reshape(*lead, k)
