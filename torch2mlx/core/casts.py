"""Exact dtype casts on numpy arrays, bit-identical to torch's ``Tensor.to`` on CPU.

bfloat16 and float8 arrive as raw bits (uint16 / uint8). Widening casts are
exact; narrowing casts round to nearest even as torch does, going through
float32 where torch does (float64 -> bfloat16/float16 is rounded twice in
torch, so it is here too). NaNs get the bit patterns torch's x86 CPU kernels
give them (IEEE leaves NaN payloads to the implementation).

numpy's own float32 -> float16 cast runs at ~30 MB/s, so the narrowing casts
are written as integer arithmetic, and 16-bit -> 16-bit casts are table
lookups: every bfloat16 value in float16's range is exact there, so a
65,536-entry table is the whole function.
"""

from __future__ import annotations

import functools

import numpy as np

from .dtypes import DType

# Plain ints, made np.uint16 where used: numpy is imported on first use (a passthrough never needs it).
_F32_NAN_TO_BF16 = 0xFFFF  # torch's vectorized float->bfloat16 kernel
_F16_NAN_TO_BF16 = 0x7FC0  # torch's scalar Half->BFloat16 path


def _float8_table(exp_bits: int, man_bits: int, bias: int, *, ieee: bool, fnuz: bool) -> np.ndarray:
    """float32 value of every float8 bit pattern, built from the format's definition."""
    codes = np.arange(256, dtype=np.uint32)
    sign = (codes >> 7) & 1
    exp = ((codes >> man_bits) & ((1 << exp_bits) - 1)).astype(np.int64)
    man = (codes & ((1 << man_bits) - 1)).astype(np.float64)
    normal = np.ldexp(1.0 + man / (1 << man_bits), (exp - bias).astype(np.int32))
    subnormal = np.ldexp(man / (1 << man_bits), 1 - bias)
    val = np.where(exp == 0, subnormal, normal)
    val = np.where(sign == 1, -val, val)
    top = (1 << exp_bits) - 1
    if fnuz:
        # No negative zero: the pattern 0x80 is the only NaN.
        val[0x80] = np.nan
    elif ieee:
        val = np.where((exp == top) & (man == 0), np.where(sign == 1, -np.inf, np.inf), val)
        val = np.where((exp == top) & (man != 0), np.nan, val)
    else:
        # "fn" formats: no infinities, only S.1111.111 is NaN.
        val = np.where((codes & 0x7F) == 0x7F, np.nan, val)
    return val.astype(np.float32)


def _e8m0_table() -> np.ndarray:
    e = np.arange(256, dtype=np.int32)
    val = np.ldexp(np.ones(256), e - 127)
    val[255] = np.nan
    return val.astype(np.float32)


def _torch_nans(table: np.ndarray, man_bits: int) -> np.ndarray:
    """float32 bits torch gives each float8 NaN: sign, quiet bit, mantissa moved to the top."""
    bits = table.view(np.uint32).copy()
    codes = np.arange(256, dtype=np.uint32)
    nan = np.isnan(table)
    payload = (codes & ((1 << man_bits) - 1)) << (23 - man_bits)
    bits[nan] = ((codes[nan] >> 7) << 31) | 0x7FC00000 | payload[nan]
    return bits.view(np.float32)


class _BuiltOnFirstUse(dict):
    """``{name: table}`` whose tables are computed the first time each is asked for.

    Membership needs no table: a run that casts nothing never imports numpy for them."""

    def __init__(self, builders: dict) -> None:
        super().__init__()
        self._builders = builders

    def __contains__(self, name) -> bool:
        return name in self._builders

    def __missing__(self, name):
        table = self[name] = self._builders[name]()
        return table


FLOAT8_TABLES: dict[str, np.ndarray] = _BuiltOnFirstUse(
    {
        "float8_e4m3fn": lambda: _torch_nans(_float8_table(4, 3, 7, ieee=False, fnuz=False), 3),
        "float8_e5m2": lambda: _torch_nans(_float8_table(5, 2, 15, ieee=True, fnuz=False), 2),
        "float8_e4m3fnuz": lambda: _float8_table(4, 3, 8, ieee=False, fnuz=True),
        "float8_e5m2fnuz": lambda: _float8_table(5, 2, 16, ieee=False, fnuz=True),
        "float8_e8m0fnu": _e8m0_table,
    }
)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    out = np.empty(bits.shape, dtype=np.uint32)
    np.left_shift(bits, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


def f32_to_bf16(x: np.ndarray, nan_bits=_F32_NAN_TO_BF16) -> np.ndarray:
    """Round float32 to bfloat16 bits, nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    t = u >> 16
    t &= 1
    t += np.uint32(0x7FFF)
    t += u
    t >>= 16
    out = t.astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        out[nan] = nan_bits
    return out


_L2_ELEMS = 1 << 16  # slices that stay in cache across the ~10 passes below


def f32_to_f16(x: np.ndarray) -> np.ndarray:
    """Round float32 to float16 bits, nearest even (what F16C's vcvtps2ph does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint32)
    out = np.empty(u.shape, dtype=np.uint16)
    for i in range(0, len(u), _L2_ELEMS):
        out[i : i + _L2_ELEMS] = _f32_to_f16_slice(u[i : i + _L2_ELEMS])
    return out.reshape(np.shape(x))


def _f32_to_f16_slice(u: np.ndarray) -> np.ndarray:
    a = u & np.uint32(0x7FFFFFFF)
    # Normal range: rebias the exponent, round the 13 dropped mantissa bits to even.
    res = (a >> 13) & 1
    res += a
    res += np.uint32(0xC8000FFF)  # ((15 - 127) << 23) + 0xFFF, wrapping
    res >>= 13
    # Below float16's smallest normal (2**-14), adding 0.5 makes the FPU round
    # at float16's subnormal spacing (2**-24); computed everywhere, kept where small.
    with np.errstate(all="ignore"):
        sub = (a.view(np.float32) + np.float32(0.5)).view(np.uint32)
    sub -= np.uint32(0x3F000000)
    np.copyto(res, sub, where=a < np.uint32(0x38800000))
    np.copyto(res, np.uint32(0x7C00), where=a >= np.uint32(0x47800000))  # overflow, infinity
    nan = a > np.uint32(0x7F800000)
    if nan.any():
        res[nan] = np.uint32(0x7E00) | ((a[nan] >> 13) & np.uint32(0x3FF))
    res |= (u >> 16) & np.uint32(0x8000)
    return res


@functools.cache
def _tables():
    """The 16-bit cast tables (bfloat16 -> float16, float16 -> bfloat16), made on the first 16-bit cast."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    bf16_to_f16 = f32_to_f16(bf16_to_f32(bits))
    with np.errstate(all="ignore"):
        f16_to_bf16 = f32_to_bf16(bits.view(np.float16).astype(np.float32), _F16_NAN_TO_BF16)
    return bf16_to_f16, f16_to_bf16


_F8_CACHE: dict = {}


def _float8_to(src: str, dst: str) -> np.ndarray:
    """256-entry table float8 -> float16/bfloat16 bits (torch's float8 -> bfloat16 NaN is 0x7FC0)."""
    key = (src, dst)
    if key not in _F8_CACHE:
        f = FLOAT8_TABLES[src]
        _F8_CACHE[key] = f32_to_f16(f) if dst == "float16" else f32_to_bf16(f, _F16_NAN_TO_BF16)
    return _F8_CACHE[key]


def bf16_to_f16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits -> float16 bits, exact where float16 has the value.

    Inside float16's normal range (2**-14 <= |x| < 65520) the cast only moves
    bits: rebias the exponent, shift the 7 mantissa bits up. Twice as fast as
    the table, which is kept for the rest (zeros, subnormals, overflow, NaN).
    """
    a = bits & np.uint16(0x7FFF)
    out = a - np.uint16(0x3800)  # (exponent - 112) << 7 | mantissa, wrapping outside the range
    out <<= 3
    out |= bits & np.uint16(0x8000)
    rest = (a < np.uint16(0x3880)) | (a >= np.uint16(0x4780))
    if rest.any():
        out[rest] = _tables()[0][bits[rest]]
    return out


def to_f32(arr: np.ndarray, src: DType) -> np.ndarray:
    """Widen any float dtype to float32 (exact except float64, which rounds)."""
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as in torch
        return _to_f32(arr, src)


def _to_f32(arr: np.ndarray, src: DType) -> np.ndarray:
    if src.name == "bfloat16":
        return bf16_to_f32(arr)
    if src.name in FLOAT8_TABLES:
        return FLOAT8_TABLES[src.name][arr]
    if src.name == "float32":
        return arr
    with np.errstate(all="ignore"):
        out = arr.astype(np.float32)
    if src.name == "float16":
        # The hardware conversion torch uses quiets signalling NaNs; numpy keeps them signalling.
        bits = out.view(np.uint32)
        np.bitwise_or(bits, np.uint32(0x00400000), out=bits, where=np.isnan(out))
    return out


def cast(arr: np.ndarray, src: DType, dst: DType) -> np.ndarray:
    """Cast ``arr`` (values or raw bits of ``src``) to ``dst`` exactly as torch does."""
    with np.errstate(over="ignore"):  # overflow to inf is the cast's defined result, not a warning
        return _cast(arr, src, dst)


def _cast(arr: np.ndarray, src: DType, dst: DType) -> np.ndarray:
    if src.name == dst.name:
        return arr
    if not src.is_float or not dst.is_float:
        if src.exact_numpy and dst.exact_numpy:
            return arr.astype(dst.np_dtype)
        raise ValueError(f"no exact cast from {src.name} to {dst.name}")
    if src.name == "bfloat16" and dst.name == "float16":
        return bf16_to_f16(arr).view(np.float16)
    if src.name == "float16" and dst.name == "bfloat16":
        return _tables()[1][arr.view(np.uint16)]
    if src.name in FLOAT8_TABLES and dst.name in ("float16", "bfloat16"):
        return _float8_to(src.name, dst.name)[arr].view(dst.np_dtype)
    if dst.name == "float64":
        return to_f32(arr, src).astype(np.float64)
    wide = to_f32(arr, src)
    if dst.name == "float32":
        return wide
    if dst.name == "float16":
        return f32_to_f16(wide).view(np.float16)
    if dst.name == "bfloat16":
        return f32_to_bf16(wide)
    raise ValueError(f"casting to {dst.name} is not supported")


def _float8_codes(dst: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted float32 bit patterns of ``dst``'s non-NaN values, the code of each)."""
    key = ("codes", dst)
    if key not in _F8_CACHE:
        table = FLOAT8_TABLES[dst]
        codes = np.flatnonzero(~np.isnan(table)).astype(np.uint8)
        bits = table[codes].view(np.uint32)
        order = np.argsort(bits, kind="stable")
        _F8_CACHE[key] = bits[order], codes[order]
    return _F8_CACHE[key]


def to_float8_exact(arr: np.ndarray, src: DType, dst: DType) -> tuple[np.ndarray, int]:
    """float values -> ``dst`` float8 codes, for values ``dst`` holds exactly.

    The way back from MLX: float8 weights travel as bfloat16 (exactly), so
    the round trip needs only an exact lookup, not a rounding cast. Returns the
    codes and how many elements were *not* exact (their codes are meaningless).
    NaN becomes the format's NaN (forward casts keep no NaN payload), and -0.0
    becomes +0.0 in the formats without a negative zero (the fnuz ones).
    """
    keys, codes = _float8_codes(dst.name)
    bits = np.ascontiguousarray(to_f32(arr, src)).view(np.uint32)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if dst.name.endswith("fnuz"):
        bits = np.where(bits == np.uint32(0x80000000), np.uint32(0), bits)
    at = np.minimum(np.searchsorted(keys, bits), len(keys) - 1)
    out = codes[at]
    miss = (keys[at] != bits) & ~nan
    if nan.any():
        if dst.name.endswith(("fnuz", "e8m0fnu")):  # one NaN pattern: 0x80 (fnuz), 0xFF (e8m0)
            signed = np.uint8(np.flatnonzero(np.isnan(FLOAT8_TABLES[dst.name]))[0])
            unsigned = signed
        else:  # S.1111.111 keeps the sign, as torch's casts do
            signed, unsigned = np.uint8(0xFF), np.uint8(0x7F)
        out = np.where(nan, np.where(bits >> 31, signed, unsigned), out)
    return out.astype(np.uint8), int(miss.sum())
