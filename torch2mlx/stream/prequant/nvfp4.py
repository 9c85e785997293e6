"""compressed-tensors ``nvfp4-pack-quantized`` (NVFP4: W4A4 / W4A16 FP4), from the library's description.

Per Linear ``<p>`` of ``in`` inputs and ``out`` outputs:

- ``weight_packed`` uint8 ``(out, in / 2)``: e2m1 codes, two per byte, the first in the *low* nibble,
  code ``k`` meaning ``[0, .5, 1, 1.5, 2, 3, 4, 6][k & 7]`` negated when ``k & 8`` -- MLX's nvfp4 codes,
  byte for byte;
- ``weight_scale`` float8 e4m3 ``(out, in / 16)``: one scale per group of 16 inputs -- MLX's nvfp4 scales;
- ``weight_global_scale`` float32 ``(1,)``: the tensor's scale divisor;
- ``W = value(code) * (scale / global_scale)`` (``scale / global_scale`` rounded to float32).

MLX's nvfp4 Linear has no global scale (mlx-lm gives one to MoE switch layers only), and
``scale / global_scale`` is an e4m3 number only in special cases (a global scale of 1, or a power of two
in range). So each module is dequantized exactly and quantized again with ``mx.quantize(..., mode="nvfp4")``
(the plan's usual step, error measured): with a global scale of 1 that gives back the same scales and
codes (but -0 codes, which become +0) -- a group whose largest code is 6 has largest magnitude 6 times
its scale, so MLX finds the same scale, and every value divides exactly -- error 0; otherwise the
measured error of re-rounding the folded scales.
"""

from __future__ import annotations

import sys

import numpy as np

from ...core import quant_fp, quant_recipes
from ...core.entry import TensorEntry
from .common import Packed

DEQUANTIZED = "NVFP4: e2m1 value * e4m3 scale / global scale in float32; MLX's nvfp4 Linear has no global scale"
GROUP = 16


def packed_module(base: str, packed: TensorEntry, by_name: dict) -> Packed:
    scale = by_name.get(base + ".weight_scale")
    gscale = by_name.get(base + ".weight_global_scale")
    m = Packed(base, packed, scale, None, None, 4, GROUP, 0, 0, fmt=sys.modules[__name__])  # type: ignore[arg-type]
    for e, what in ((scale, ".weight_scale"), (gscale, ".weight_global_scale")):
        if e is None:
            m.fail(packed, f"NVFP4 codes without {base}{what}")
    assert scale is not None and gscale is not None
    if packed.dtype.name != "uint8" or len(packed.shape) != 2:
        m.fail(packed, f"expected 2-D uint8 e2m1 codes, got {packed.dtype.name}{list(packed.shape)}")
    m.out_features, m.in_features = packed.shape[0], packed.shape[1] * 2
    if m.in_features % GROUP or scale.shape != (m.out_features, m.in_features // GROUP):
        m.fail(scale, f"shape {list(scale.shape)}, expected {[m.out_features, m.in_features // GROUP]}")
    if scale.dtype.name not in ("float8_e4m3fn", "uint8"):
        m.fail(scale, f"expected float8_e4m3fn scales, got {scale.dtype.name}")
    if gscale.dtype.name != "float32" or int(np.prod(gscale.shape or (1,))) != 1:
        m.fail(gscale, f"expected one float32 value, got {gscale.dtype.name}{list(gscale.shape)}")
    m.extra["global_scale"] = gscale
    return m


def group_index(m: Packed, reader) -> None:
    return None  # no affine form: always the float view


def target(m: Packed) -> quant_recipes.QuantSpec:
    return quant_recipes.QuantSpec(GROUP, 4, "nvfp4")


def dequantized(m: Packed, reader, start: int, stop: int) -> np.ndarray:
    raw = reader.read_rows(m.qweight, start, stop, 0)
    codes = np.stack([raw & 15, raw >> 4], -1).reshape(stop - start, -1)
    s = quant_fp.E4M3[reader.read_rows(m.scales, start, stop, 0).view(np.uint8)]
    gs = reader.read_all(m.extra["global_scale"]).reshape(-1).view(np.float32)[0]
    s = s / gs  # float32, as compressed-tensors folds them
    v = quant_fp.E2M1[codes].reshape(stop - start, -1, GROUP) * s[:, :, None]
    return v.reshape(stop - start, -1)
