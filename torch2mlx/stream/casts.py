"""Exact dtype casts on numpy arrays, bit-identical to torch's ``Tensor.to``.

bfloat16 and float8 arrive as raw bits (uint16 / uint8). Widening casts are
exact; narrowing casts round to nearest even as torch does, going through
float32 where torch does (float64 -> bfloat16/float16 is rounded twice in
torch, so it is here too).
"""
from __future__ import annotations

import numpy as np

from ..dtypes import DType


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
    val = val.astype(np.float32)
    return val


FLOAT8_TABLES = {
    "float8_e4m3fn": _float8_table(4, 3, 7, ieee=False, fnuz=False),
    "float8_e5m2": _float8_table(5, 2, 15, ieee=True, fnuz=False),
    "float8_e4m3fnuz": _float8_table(4, 3, 8, ieee=False, fnuz=True),
    "float8_e5m2fnuz": _float8_table(5, 2, 16, ieee=False, fnuz=True),
    "float8_e8m0fnu": _e8m0_table(),
}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bits, nearest even; NaN stays a quiet NaN of the same sign."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    out = u + (((u >> 16) & 1) + np.uint32(0x7FFF))
    out >>= 16
    out = out.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
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
    return arr.astype(np.float32)


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
    if dst.name == "float64":
        if src.name == "float32" or src.name == "float16":
            return arr.astype(np.float64)
        return to_f32(arr, src).astype(np.float64)
    wide = to_f32(arr, src) if src.name != "float32" else arr
    if dst.name == "float32":
        return wide if wide is not arr else arr.astype(np.float32)
    if dst.name == "float16":
        return wide.astype(np.float16)
    if dst.name == "bfloat16":
        return f32_to_bf16(wide)
    raise ValueError(f"casting to {dst.name} is not supported")
