"""Quantizers for llama.cpp's K-quant blocks Q4_K, Q5_K and Q6_K, in numpy.

gguf-py ships dequantizers for these types but no quantizer (``gguf.quants.quantize`` raises
``NotImplementedError``); these write the blocks from the format's layout (super-blocks of 256
weights), and gguf-py's dequantizer is the test oracle. Scales are chosen by a simple sound method,
not llama.cpp's optimizer (the bytes differ from llama-quantize's, the format is the same):

- Q4_K / Q5_K: 8 sub-blocks of 32, ``w = d * sc * q - dmin * m`` with 6-bit ``sc``/``m`` and 4-/5-bit
  ``q``. Each sub-block's range [min(0, lo), hi] gives a scale and a min; ``d``/``dmin`` (float16) are
  the largest of them over 63, the 6-bit integers are rounded against them, and the codes are rounded
  against the quantized scale and min. One least-squares refit of each sub-block's (scale, min) to its
  codes follows, kept per sub-block only where it lowers that sub-block's squared error.
- Q6_K: 16 groups of 16, ``w = d * sc * q`` with int8 ``sc`` and 6-bit ``q`` in [-32, 31]; each group's
  scale is its max |w| / 31 (its extreme lands on +-31), ``d`` (float16) the largest over 127.
"""

from __future__ import annotations

import numpy as np

QK = 256
BLOCK_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


def _f16(x: np.ndarray) -> np.ndarray:
    """float32 values that are exactly representable in float16 (overflow saturates at the f16 max)."""
    with np.errstate(over="ignore"):
        return np.clip(x, 0, 65504).astype(np.float16)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0).astype(np.float32)


def _pack_scale_min(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The 12 bytes of 8 6-bit scales and 8 6-bit mins (gguf-py's ``Q4_K.get_scale_min`` in reverse)."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    b0 = (sc[:, :4] & 0x3F) | ((sc[:, 4:] & 0x30) << 2)
    b1 = (m[:, :4] & 0x3F) | ((m[:, 4:] & 0x30) << 2)
    b2 = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return np.concatenate([b0, b1, b2], axis=-1)


def _affine_blocks(x: np.ndarray, nmax: int):
    """(d, dmin as float16, sc, m as uint8 (n, 8), codes uint8 (n, 8, 32)) for blocks ``x`` (n, 256)."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32)
    lo = np.minimum(sub.min(axis=-1), 0)
    hi = sub.max(axis=-1)
    scale = (hi - lo) / nmax
    mins = -lo
    d = _f16(scale.max(axis=-1) / 63)
    dmin = _f16(mins.max(axis=-1) / 63)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]

    def ints(scale, mins):
        sc = np.clip(np.rint(_div(scale, d32)), 0, 63)
        m = np.clip(np.rint(_div(mins, dmin32)), 0, 63)
        return sc, m

    def codes(sc, m):
        a = (d32 * sc)[..., None]
        b = (dmin32 * m)[..., None]
        q = np.clip(np.rint(_div(sub + b, np.broadcast_to(a, sub.shape))), 0, nmax)
        err = ((a * q - b - sub) ** 2).sum(axis=-1)
        return q, err

    sc, m = ints(scale, mins)
    q, err = codes(sc, m)
    # Least squares of w ~ a * q - b over each sub-block, the codes held fixed.
    k = np.float32(32)
    sq, sqq = q.sum(axis=-1), (q * q).sum(axis=-1)
    sw, sqw = sub.sum(axis=-1), (q * sub).sum(axis=-1)
    den = k * sqq - sq * sq
    a = _div(k * sqw - sq * sw, den)
    b = np.where(den > 0, (a * sq - sw) / k, mins)
    ok = (den > 0) & (a > 0) & (b >= 0)
    sc2, m2 = ints(np.where(ok, a, scale), np.where(ok, b, mins))
    q2, err2 = codes(sc2, m2)
    better = err2 < err
    sc, m = np.where(better, sc2, sc), np.where(better, m2, m)
    q = np.where(better[..., None], q2, q)
    return d, dmin, sc, m, q.astype(np.uint8)


def _q4_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d, dmin, sc, m, q = _affine_blocks(x, 15)
    q = q.reshape(n, 4, 2, 32)  # sub-blocks 2j (low nibbles) and 2j + 1 (high) share 32 bytes
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)
    return np.concatenate(
        [d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), _pack_scale_min(sc, m), qs], axis=-1
    )


def _q5_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d, dmin, sc, m, q = _affine_blocks(x, 31)
    high = (q >> 4) & 1  # bit k of byte i: the fifth bit of element i of sub-block k
    qh = np.zeros((n, 32), np.uint8)
    for k in range(8):
        qh |= high[:, k] << np.uint8(k)
    low = (q & 0x0F).reshape(n, 4, 2, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    return np.concatenate(
        [d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), _pack_scale_min(sc, m), qh, qs], axis=-1
    )


def _q6_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    g = x.reshape(n, 16, 16)
    scale = np.abs(g).max(axis=-1) / 31
    d = _f16(scale.max(axis=-1) / 127)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_div(scale, d32)), 0, 127)
    step = (d32 * sc)[..., None]
    q = np.clip(np.rint(_div(g, np.broadcast_to(step, g.shape))), -32, 31).astype(np.int16) + 32
    q = q.astype(np.uint8).reshape(n, 2, 4, 32)  # two halves of 128; within one, four runs of 32
    lo = q & 0x0F
    ql = (lo[:, :, 0:2].reshape(n, 2, 64) | (lo[:, :, 2:4].reshape(n, 2, 64) << 4)).reshape(n, 128)
    hi = q >> 4
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d.view(np.uint8).reshape(n, 2)], axis=-1)


_QUANTIZERS = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def quantize(x: np.ndarray, qtype: str) -> np.ndarray:
    """Rows of ``x`` (float, last axis a multiple of 256) as ``qtype`` blocks: uint8 (..., bytes per row)."""
    if x.shape[-1] % QK:
        raise ValueError(f"{qtype}: rows of {x.shape[-1]} are not whole blocks of {QK}")
    flat = np.asarray(x, np.float32).reshape(-1, QK)
    if not np.isfinite(flat).all():
        raise ValueError(f"{qtype}: cannot quantize non-finite values")
    out = _QUANTIZERS[qtype](flat) if flat.size else np.zeros((0, BLOCK_BYTES[qtype]), np.uint8)
    return np.ascontiguousarray(out).reshape(x.shape[:-1] + (x.shape[-1] // QK * BLOCK_BYTES[qtype],))
