"""Typed tensor values for user code: what ``tensors()`` yields, a transform receives and ``ShardWriter.add`` takes.

Internally bfloat16 and float8 travel as raw bits in numpy integer arrays (numpy
has no such dtypes); user code must never see those bits, since arithmetic or a
cast on them silently gives wrong numbers. It sees ``mx.array`` instead: MLX is
already a dependency, has bfloat16, and is what the output is loaded into.
Dtypes MLX lacks arrive as the converter would store them: float8 as bfloat16
(exact), complex128 as complex64. The conversion happens only at the boundary
with user code; the plain conversion path never calls this module.
"""

from __future__ import annotations

import sys

import numpy as np

from ..core import casts, dtypes
from ..core.dtypes import DType
from ..errors import Torch2MLXError


def to_mx(arr: np.ndarray, dt: DType, upcast: bool = False):
    """``arr`` (values, or raw bits of ``dt``) as an ``mx.array`` holding the values."""
    import mlx.core as mx

    shape = arr.shape  # np.ascontiguousarray and the casts make a 0-d array 1-d
    if upcast and dt.is_float and not dt.exact_numpy:
        arr, dt = casts.to_f32(arr, dt), dtypes.get("float32")
    target = dtypes.mlx_target(dt) if dt.name != "float64" else dt
    if target != dt:
        arr, dt = casts.cast(arr, dt, target), target
    arr = np.ascontiguousarray(arr).reshape(shape)
    assert dt.mlx is not None  # mlx_target's choice, or float64
    if not dt.exact_numpy:  # bfloat16 bits: same width in MLX, reinterpret
        return mx.array(arr.view(np.uint16)).view(mx.bfloat16)
    return mx.array(arr, dtype=getattr(mx, dt.mlx if dt.mlx != "bool" else "bool_"))


def _from_mx(a) -> tuple[np.ndarray, DType]:
    import mlx.core as mx

    name = str(a.dtype).rsplit(".", 1)[-1]
    dt = dtypes.by_name(name)
    if dt is None:
        raise Torch2MLXError(f"mx.array of {name} has no safetensors equivalent")
    if dt.name == "bfloat16":
        return np.array(a.view(mx.uint16)), dt
    return np.array(a), dt


def _from_torch(t) -> tuple[np.ndarray, DType]:
    # Reached only with a torch tensor in hand, so torch is loaded: use that module rather than
    # import it, which keeps the stream layer free of any torch import (tests/test_layers.py).
    torch = sys.modules["torch"]
    t = t.detach().cpu().contiguous()
    dt = dtypes.by_name(str(t.dtype))
    if dt is None:
        raise Torch2MLXError(f"torch tensor of {t.dtype} has no safetensors equivalent")
    if not dt.exact_numpy:  # bfloat16/float8: numpy gets the bits, the DType says what they mean
        return t.view(torch.uint8 if dt.itemsize == 1 else torch.int16).numpy().view(dt.np_dtype), dt
    return t.numpy(), dt


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def _is_mx(x) -> bool:
    return type(x).__module__.split(".")[0] == "mlx"


def dtype_of(spec) -> DType | None:
    """A dtype named as torch2mlx, torch, MLX or numpy names it (``"bfloat16"``, ``mx.bfloat16``, ``np.float32``)."""
    if isinstance(spec, DType):
        return spec
    if isinstance(spec, str):
        return dtypes.by_name(spec) or dtypes.by_safetensors(spec)
    text = str(spec)
    if text.startswith(("torch.", "mlx.core.")):
        return dtypes.by_name(text.rsplit(".", 1)[-1])
    try:
        return dtypes.by_name(np.dtype(spec).name)
    except TypeError:
        return None


def from_user(array, dtype=None, name: str = "") -> tuple[np.ndarray, DType]:
    """An ``mx.array``, torch tensor or numpy array as (numpy values or bits, DType), cast to ``dtype`` if given.

    A cast is exact, as torch's ``Tensor.to``. An integer array is never read as the bits of a
    float dtype: that is the mistake typed values exist to prevent.
    """
    dt: DType | None
    if _is_mx(array):
        arr, dt = _from_mx(array)
    elif _is_torch(array):
        arr, dt = _from_torch(array)
    else:
        arr = np.asarray(array)
        arr = arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.byteorder == ">" else arr
        dt = next((d for d in dtypes.DTYPES if d.exact_numpy and d.np_dtype == arr.dtype), None)
        if dt is None:
            raise Torch2MLXError(f"{name}: numpy dtype {arr.dtype} has no safetensors equivalent")
    if dtype is None:
        return arr, dt
    want = dtype_of(dtype)
    if want is None:
        raise Torch2MLXError(f"{name}: unknown dtype {dtype!r}")
    if want == dt:
        return arr, dt
    try:
        return casts.cast(arr, dt, want), want
    except ValueError:
        if not dt.is_float and not want.exact_numpy:
            raise Torch2MLXError(
                f"{name}: a {dt.name} array is never read as the raw bits of {want.name}; "
                f"pass float values to cast, or a torch tensor of {want.name}"
            ) from None
        raise Torch2MLXError(
            f"{name}: no cast from {dt.name} to {want.name} here; pass a torch tensor of {want.name}"
        ) from None
