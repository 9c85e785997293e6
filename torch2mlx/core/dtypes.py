"""One table of tensor dtypes: torch, numpy, MLX and safetensors names.

numpy has no bfloat16 or float8: those are carried as raw bits in an unsigned
integer array of the same width (``carrier``) and cast with exact bit
arithmetic in ``torch2mlx.core.casts``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # torch's name without the "torch." prefix
    safetensors: str | None  # safetensors dtype code, None when the format has none
    itemsize: int
    numpy: str  # numpy dtype that holds the values, or the raw-bit carrier
    exact_numpy: bool  # False: ``numpy`` is only a carrier of the bits
    kind: str  # float | int | uint | bool | complex
    mlx: str | None  # mlx.core dtype name, None when MLX has no such dtype
    storage: str | None  # torch typed storage class (legacy pickles name it)

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.numpy)

    @property
    def torch_name(self) -> str:
        return "torch." + self.name


DTYPES: tuple[DType, ...] = (
    DType("float64", "F64", 8, "<f8", True, "float", "float64", "DoubleStorage"),
    DType("float32", "F32", 4, "<f4", True, "float", "float32", "FloatStorage"),
    DType("float16", "F16", 2, "<f2", True, "float", "float16", "HalfStorage"),
    DType("bfloat16", "BF16", 2, "<u2", False, "float", "bfloat16", "BFloat16Storage"),
    DType("float8_e4m3fn", "F8_E4M3", 1, "u1", False, "float", None, None),
    DType("float8_e5m2", "F8_E5M2", 1, "u1", False, "float", None, None),
    DType("float8_e4m3fnuz", "F8_E4M3FNUZ", 1, "u1", False, "float", None, None),
    DType("float8_e5m2fnuz", "F8_E5M2FNUZ", 1, "u1", False, "float", None, None),
    DType("float8_e8m0fnu", "F8_E8M0", 1, "u1", False, "float", None, None),
    DType("int64", "I64", 8, "<i8", True, "int", "int64", "LongStorage"),
    DType("int32", "I32", 4, "<i4", True, "int", "int32", "IntStorage"),
    DType("int16", "I16", 2, "<i2", True, "int", "int16", "ShortStorage"),
    DType("int8", "I8", 1, "i1", True, "int", "int8", "CharStorage"),
    DType("uint64", "U64", 8, "<u8", True, "uint", "uint64", None),
    DType("uint32", "U32", 4, "<u4", True, "uint", "uint32", None),
    DType("uint16", "U16", 2, "<u2", True, "uint", "uint16", None),
    DType("uint8", "U8", 1, "u1", True, "uint", "uint8", "ByteStorage"),
    DType("bool", "BOOL", 1, "?", True, "bool", "bool", "BoolStorage"),
    DType("complex64", "C64", 8, "<c8", True, "complex", "complex64", "ComplexFloatStorage"),
    DType("complex128", None, 16, "<c16", True, "complex", None, "ComplexDoubleStorage"),
)

_BY_NAME = {d.name: d for d in DTYPES}
_BY_SAFETENSORS = {d.safetensors: d for d in DTYPES if d.safetensors}
_BY_STORAGE = {d.storage: d for d in DTYPES if d.storage}
# torch spells some dtypes two ways (torch.half, torch.long, ...).
_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}


def by_name(name: str) -> DType | None:
    name = name.removeprefix("torch.")
    return _BY_NAME.get(_ALIASES.get(name, name))


def by_safetensors(code: str) -> DType | None:
    return _BY_SAFETENSORS.get(code)


def by_storage(cls_name: str) -> DType | None:
    return _BY_STORAGE.get(cls_name)


def get(name: str) -> DType:
    """Look a dtype up by torch name, alias or safetensors code; KeyError if unknown."""
    d = by_name(name) or by_safetensors(name)
    if d is None:
        raise KeyError(name)
    return d


def mlx_target(d: DType) -> DType:
    """The dtype an MLX checkpoint stores for ``d``.

    MLX has no float8 (every e4m3/e5m2 value is exact in bfloat16) and no
    complex128; float64 exists in MLX only on the CPU, so it becomes float32
    (reported as a lossy mapping by the plan).
    """
    if d.mlx and d.name != "float64":
        return d
    if d.name.startswith("float8"):
        return _BY_NAME["bfloat16"]
    if d.name == "complex128":
        return _BY_NAME["complex64"]
    return _BY_NAME["float32"]


def load_numpy() -> None:
    """Finish importing numpy in this thread, before worker threads that compute with it start.

    The CLI defers numpy's import to its first use (a passthrough never uses it); before Python 3.12
    a deferred module is not safe to load from two threads at once.
    """
    np.dtype("uint8")
