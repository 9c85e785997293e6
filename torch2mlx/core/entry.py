"""``TensorEntry``: everything known about a tensor before a byte of it is read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .dtypes import DType


class Loader(Protocol):
    """A chunked store (zarr) reading its own blocks."""

    def read(self, axis: int, start: int, stop: int) -> np.ndarray: ...


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    path: str | None = None  # file holding the bytes; None for in-memory arrays
    offset: int = 0  # byte offset of the first element in ``path``
    strides: tuple[int, ...] | None = None  # element strides; None means C-contiguous
    byteorder: str = "little"
    array: np.ndarray | None = field(default=None, compare=False, repr=False)
    loader: Loader | None = field(default=None, compare=False, repr=False)
    origin: str = ""  # where it came from, for messages (file, member)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def nbytes_read(self) -> int:
        """Bytes a full read takes from the source (a dequantized view reads packed codes, scales, biases)."""
        if self.loader is None:  # summed over every tensor of a plan, several times a run
            return math.prod(self.shape) * self.dtype.itemsize
        return getattr(self.loader, "nbytes_read", self.nbytes)

    @property
    def in_file(self) -> bool:
        """Bytes lie in place in a file (kernel copies and flat reads are possible)."""
        return self.path is not None and self.array is None and self.loader is None

    @property
    def contiguous(self) -> bool:
        if self.strides is None or self.numel <= 1:
            return True
        return all(
            s == c for n, s, c in zip(self.shape, self.strides, contiguous_strides(self.shape), strict=True) if n > 1
        )

    @property
    def span(self) -> int:
        """Bytes from ``offset`` that hold every element (the storage region a view needs)."""
        if self.numel == 0:
            return 0
        if self.strides is None:
            return self.nbytes
        last = sum((n - 1) * s for n, s in zip(self.shape, self.strides, strict=True))
        return (last + 1) * self.dtype.itemsize

    def describe(self) -> dict:
        return {
            "name": self.name,
            "dtype": self.dtype.name,
            "shape": list(self.shape),
            "file": self.path,
            "offset": self.offset,
            "contiguous": self.contiguous,
        }
