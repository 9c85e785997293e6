"""MLX's floating-point quantization modes (mxfp4, nvfp4, mxfp8), bit-identical to ``mx.quantize`` on the CPU.

numpy only, like ``quant`` (affine): the stream converter quantizes while it
streams. Each group of ``group_size`` consecutive elements of the last axis
shares one uint8 scale; there are no biases:

    mode    group  element codes               scale
    mxfp4   32     e2m1 (4 bits, 2 per byte)    e8m0 (a power of two)
    nvfp4   16     e2m1                         e4m3
    mxfp8   32     e4m3 (1 byte)                e8m0

What MLX 0.32 computes (checked bit for bit against its CPU backend, float32,
float16 and bfloat16 inputs, random bits included), per group, with ``T`` the
dtype of the weight and ``T(.)`` a rounding to it:

    amax = max |w|                                   # NaN if the group holds one
    x    = T(amax / (6 or 448))                      # e2m1's / e4m3's largest value
    nvfp4: s = e4m3(x) (saturating, RNE); d = value of s
    mx*:   n = rint(log2 x), as int32 (INT_MIN for +-inf/NaN); n += 1 if not 2**n >= x;
           n = 0 if x == 0; d = 2**n; s = (n + 127) mod 256
           (so a tiny group's exponent wraps around; a non-finite group stores 128 for
           float32 weights, 0 for float16/bfloat16 ones)
    q    = T(w / d)
    code = e4m3(q) (mxfp8), or the index of the nearest of e2m1's 16 values (mxfp4,
           nvfp4) in the order 0, .5, 1, 1.5, 2, 3, 4, 6, -0, -.5, ... -6, the first on a tie
           (so ties go to the smaller magnitude, and -0.25 becomes +0); NaN -> code 0

``mx.dequantize`` is ``T(T(scale) * value(code))``; without a dtype it returns bfloat16.
"""

from __future__ import annotations

import math

import numpy as np

from . import dtypes
from .casts import to_f32
from .dtypes import DType
from .quant import _from_f32, row_blocks

# mode -> (group size, bits): MLX accepts no other pair
MODES = {"mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}
# e2m1's values by code, and the midpoints between neighbouring magnitudes
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
_MIDPOINTS = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)  # ties go to the smaller


def _dtype(d: DType | str) -> DType:
    return d if isinstance(d, DType) else dtypes.get(d)


def check_mode(mode: str, bits: int | None = None, group_size: int | None = None) -> tuple[int, int]:
    """(group size, bits) of ``mode``; an error when ``bits``/``group_size`` name another pair."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    gs, b = MODES[mode]
    if (bits is not None and bits != b) or (group_size is not None and group_size != gs):
        raise ValueError(f"{mode} quantizes {b}-bit codes in groups of {gs}, not bits={bits}, group_size={group_size}")
    return gs, b


def _round_to(x: np.ndarray, dt: DType) -> np.ndarray:
    return x if dt.name == "float32" else to_f32(_from_f32(x, dt), dt)


# ---- float8 e4m3 (MLX's saturating cast: +-inf and NaN become +-448) -----------------

_E4M3_SAT = np.uint32(543 << 21)  # 464.0: from here on, 448 (0x7E)
_E4M3_NORMAL = np.uint32(121 << 23)  # 2**-6: below it, subnormal codes
_DENORM = np.uint32(141 << 23)


def e4m3_codes(x: np.ndarray) -> np.ndarray:
    """float32 -> e4m3 codes, round to nearest even, saturating (as MLX's ``ToFP8``)."""
    f = np.ascontiguousarray(x, np.float32).view(np.uint32)
    sign = f & np.uint32(0x80000000)
    f = f ^ sign
    with np.errstate(over="ignore"):
        # adding 2**-1 (as float) leaves the rounded subnormal code in the low bits
        sub = (f.view(np.float32) + _DENORM.view(np.float32)).view(np.uint32) - _DENORM
        norm = (f + np.uint32((7 - 127) << 23 & 0xFFFFFFFF) + np.uint32(0x7FFFF) + ((f >> 20) & 1)) >> 20
    code = np.where(f >= _E4M3_SAT, np.uint32(0x7E), np.where(f < _E4M3_NORMAL, sub, norm)) & np.uint32(0xFF)
    return (code | (sign >> 24)).astype(np.uint8)


def _e4m3_table() -> np.ndarray:
    c = np.arange(256)
    e, m = (c >> 3) & 15, c & 7
    v = np.where(e == 0, m / 8 * 2.0**-6, (1 + m / 8) * 2.0 ** (e - 7))
    v[(c & 0x7F) == 0x7F] = np.nan
    return np.where(c & 0x80, -v, v).astype(np.float32)


E4M3 = _e4m3_table()


def e8m0_values(s: np.ndarray) -> np.ndarray:
    """e8m0 scale codes -> float32 as MLX reads them: 2**(s-127), code 0 is 2**-127, 255 is +inf."""
    s = np.asarray(s, np.uint8)
    return np.where(s == 0, np.uint32(0x00400000), s.astype(np.uint32) << 23).view(np.float32)


def _code_table() -> np.ndarray:
    """e2m1 code by ``ceil(float32 bits / 2**16)``, sign included; 0xFF beyond 8.0 (and for NaN).

    Every midpoint between e2m1 magnitudes has its low 16 bits zero, so a positive value is
    above midpoint m exactly when the ceiling of its bits over 2**16 is above m's top bits:
    one addition, one shift and one lookup decide the nearest value, ties going down.
    """
    mids = (_MIDPOINTS.view(np.uint32) >> 16).astype(np.int64)
    assert not (_MIDPOINTS.view(np.uint32) & 0xFFFF).any()
    t = np.arange(1 << 16)
    mag = t & 0x7FFF
    code = np.searchsorted(mids, mag, side="left").astype(np.uint8)  # midpoints strictly below
    code = np.where(((t & 0x8000) != 0) & (code > 0), code | 8, code).astype(np.uint8)
    code[mag > 0x4100] = 0xFF
    return code


_CODES = _code_table()


def _e2m1_codes(q: np.ndarray) -> np.ndarray:
    """Index of the nearest e2m1 value, first on ties (MLX takes an argmin over the 16 values)."""
    bits = np.ascontiguousarray(q, np.float32).view(np.uint32)
    code = _CODES[(bits + np.uint32(0xFFFF)) >> 16]
    far = code == 0xFF
    if far.any():
        # |q| > 8 or NaN. Out here float32 rounding of |q - v| ties values that are not tied: do as MLX does.
        qf = q.reshape(code.shape)[far]
        with np.errstate(invalid="ignore"):
            d = np.abs(qf[:, None] - E2M1)
        idx = np.argmin(d, axis=1)
        idx[np.isnan(qf)] = 0
        code[far] = idx
    return code


def _quantize_groups(g: np.ndarray, mode: str, bits: int, t: DType) -> tuple[np.ndarray, np.ndarray]:
    """float32 values of ``t``, ``(groups, gs)`` -> (code bytes ``(groups, gs*bits/8)``, uint8 scales ``(groups,)``)."""
    with np.errstate(all="ignore"):
        amax = np.abs(g).max(axis=1)
        x = _round_to(amax / np.float32(6.0 if bits == 4 else 448.0), t)
        if mode == "nvfp4":
            scales = e4m3_codes(x)
            div = E4M3[scales]
        else:
            n = np.rint(np.log2(x))
            n = np.where(np.isfinite(n), n, np.float32(-(2**31))).astype(np.int64)
            n += ~(np.exp2(n.astype(np.float32)) >= x)
            n[x == 0] = 0
            scales = ((n + 127) & 0xFF).astype(np.uint8)
            if t.name != "float32":
                scales[~np.isfinite(x)] = 0
            div = np.exp2(n.astype(np.float32))
        q = _round_to(g / div[:, None], t)
    if bits == 8:
        return e4m3_codes(q), scales
    c = _e2m1_codes(q)
    return c[:, 0::2] | (c[:, 1::2] << 4), scales


def quantize(
    w: np.ndarray,
    mode: str,
    src_dtype: DType | str | None = None,
    out_dtype: DType | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``mx.quantize(w.astype(T), mode=mode)`` in numpy: (uint32 packed codes, uint8 scales).

    ``w``, ``src_dtype`` and ``out_dtype`` (``T``, default: what MLX stores for the
    source dtype) as for ``quant.quantize``. Rows are independent, so a stream can
    quantize any block of rows.
    """
    gs, bits = check_mode(mode)
    lead, k, t, blocks = row_blocks(w, gs, src_dtype, out_dtype)
    n = math.prod(lead)
    packed = np.empty((n, k * bits // 8), np.uint8)
    scales = np.empty((n, k // gs), np.uint8)
    for r, block in blocks:
        step = block.shape[0]
        vals = to_f32(np.ascontiguousarray(block), t).reshape(-1, gs)
        codes, s = _quantize_groups(vals, mode, bits, t)
        packed[r : r + step] = codes.reshape(block.shape[0], -1)
        scales[r : r + step] = s.reshape(block.shape[0], -1)
    return packed.view("<u4").astype(np.uint32, copy=False).reshape(*lead, -1), scales.reshape(*lead, -1)


def dequantize(packed: np.ndarray, scales: np.ndarray, mode: str, dtype: DType | str = "bfloat16") -> np.ndarray:
    """``mx.dequantize(packed, scales, mode=mode, dtype=dtype)`` in numpy (bfloat16 as uint16 bits)."""
    gs, bits = check_mode(mode)
    dt = _dtype(dtype)
    raw = np.ascontiguousarray(packed, dtype="<u4").view(np.uint8)
    lead = raw.shape[:-1]
    if bits == 8:
        v = E4M3[raw]
    else:
        v = E2M1[np.stack([raw & 15, raw >> 4], -1).reshape(*lead, -1)]
    s = np.asarray(scales, np.uint8)
    sv = E4M3[s] if mode == "nvfp4" else e8m0_values(s)
    sv = _round_to(sv, dt)
    k = v.shape[-1]
    with np.errstate(invalid="ignore", over="ignore"):
        out = v.reshape(*lead, k // gs, gs) * sv[..., None]
    return _from_f32(out.reshape(*lead, k), dt)
