"""GGML blocks -> MLX affine codes, scales and biases, exactly (the lossless repacks).

Each type below stores groups of 32 weights as ``w = d * q + m`` with unsigned
codes ``q`` (signed types shift theirs: ``d * (q - 8)`` is ``q`` with bias
``-8 * d``), which is MLX's affine ``w = scale * q + bias`` with group size 32:

    Q8_0  d, int8 x         -> 8-bit, code x + 128, bias -128 d
    Q4_0  d, nibbles        -> 4-bit, bias -8 d
    Q4_1  d, m, nibbles     -> 4-bit, bias m
    Q5_0  d, 5-bit          -> 5-bit, bias -16 d
    Q5_1  d, m, 5-bit       -> 5-bit, bias m
    Q4_K  d, dmin, 8 x (sc, m) 6-bit, nibbles -> 4-bit, scale d*sc, bias -dmin*m
    Q5_K  as Q4_K with 5-bit codes            -> 5-bit

In float32 the scales and biases are exact (d and dmin are float16, sc and m
6-bit integers: the products fit in 17 bits), and ``mx.dequantize``'s
``f32(f32(scale * q) + bias)`` performs the very operations gguf-py's
dequantizers do (``d * q`` exact, then one rounded addition, or none when the
bias is a multiple of d): equal bit for bit. Stored as float16 or bfloat16 the
scales and biases round (and MLX then computes in that dtype); the error is
measured and reported.
"""

from __future__ import annotations

import numpy as np

BITS = {"Q8_0": 8, "Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q4_K": 4, "Q5_K": 5}
GROUP = 32


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) codes: low nibbles are elements 0..15, high ones 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes of a Q5_0/Q5_1 block -> (n, 32) fifth bits, bit j for element j."""
    word = np.ascontiguousarray(qh).view("<u4")
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def decode(raw: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw rows ``(n, bytes)`` -> codes ``(n, K)`` uint8, scale and bias ``(n, K/32)`` float32."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import Q4_K

    n = raw.shape[0]
    _, tsize = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    b = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, tsize)
    if qtype == "Q8_0":
        d = _f16(b[:, :2])
        codes = b[:, 2:] ^ np.uint8(0x80)  # int8 x -> x + 128
        scale, bias = d, d * np.float32(-128)
    elif qtype in ("Q4_0", "Q4_1"):
        d = _f16(b[:, :2])
        if qtype == "Q4_0":
            codes, bias = _nibbles(b[:, 2:18]), d * np.float32(-8)
        else:
            codes, bias = _nibbles(b[:, 4:20]), _f16(b[:, 2:4])
        scale = d
    elif qtype in ("Q5_0", "Q5_1"):
        d = _f16(b[:, :2])
        at = 2 if qtype == "Q5_0" else 4
        codes = _nibbles(b[:, at + 4 : at + 20]) | (_high_bits(b[:, at : at + 4]) << 4)
        bias = d * np.float32(-16) if qtype == "Q5_0" else _f16(b[:, 2:4])
        scale = d
    elif qtype in ("Q4_K", "Q5_K"):
        d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
        sc, m = Q4_K.get_scale_min(b[:, 4:16])
        scale = d * sc.reshape(-1, 8).astype(np.float32)
        bias = -(dmin * m.reshape(-1, 8).astype(np.float32))
        qs = b[:, 16:144] if qtype == "Q4_K" else b[:, 48:176]
        # 32-byte chunk i holds sub-block 2i in its low nibbles and 2i+1 in its high ones
        qs = qs.reshape(-1, 4, 1, 32)
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32)
        if qtype == "Q5_K":
            qh = b[:, 16:48].reshape(-1, 1, 32)  # bit j of byte i: the fifth bit of element i of sub-block j
            codes = codes | (((qh >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1) << 4)
    else:
        raise ValueError(f"{qtype} has no lossless MLX repack")
    return codes.reshape(n, -1), scale.reshape(n, -1), bias.reshape(n, -1)
