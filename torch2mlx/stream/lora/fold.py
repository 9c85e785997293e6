"""A LoRA module's own scale folded into its ``lora_b`` (mlx-lm has one scale per adapter)."""

from __future__ import annotations

import math

import numpy as np

from ...core import casts, dtypes
from ...core.dtypes import DType

F32 = dtypes.get("float32")


def is_power_of_two(x: float) -> bool:
    """``x`` = 2**k: multiplying by it is exact (barring overflow and subnormals)."""
    if not (x > 0 and math.isfinite(x)):
        return False
    mant, _ = math.frexp(x)
    return mant == 0.5


def fold(b: np.ndarray, dt: DType, ratio: float) -> tuple[np.ndarray, float]:
    """``b * ratio`` in ``dt`` and its largest relative rounding error (0 when exact)."""
    b64 = casts.to_f32(b, dt).astype(np.float64)
    want = b64 * ratio
    got = casts.cast((want).astype(np.float32), F32, dt)
    if is_power_of_two(ratio):
        return got, 0.0
    err = np.abs(casts.to_f32(got, dt).astype(np.float64) - want).max(initial=0.0)
    return got, float(err / max(np.abs(want).max(initial=0.0), np.finfo(np.float64).tiny))
