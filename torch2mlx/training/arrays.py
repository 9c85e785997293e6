"""One carrier for tensor values from anywhere: torch, numpy, MLX or a checkpoint read without torch.

``Array`` is what the stream carries: a numpy array (raw bits for bfloat16 and
float8, which numpy lacks) and its dtype. Layout rules only move elements, so
they apply to the carrier as they do in the stream; MLX and torch get the
values back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.dtypes import DType


@dataclass(frozen=True)
class Array:
    dtype: DType
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @classmethod
    def of(cls, name: str, value) -> "Array":
        """A torch tensor, numpy array, MLX array or ``Array`` as an ``Array`` (torch CPU tensors: no copy)."""
        if isinstance(value, Array):
            return value
        from ..stream.memory import carrier

        dt, arr = carrier(name, value)
        return cls(dt, arr)

    def with_data(self, data: np.ndarray) -> "Array":
        return Array(self.dtype, data)

    def to_mlx(self):
        import mlx.core as mx

        a = mx.array(np.ascontiguousarray(self.data))
        return a if self.dtype.exact_numpy else a.view(getattr(mx, self.dtype.name))

    def to_torch(self):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(self.data))
        return t if self.dtype.exact_numpy else t.view(getattr(torch, self.dtype.name))

    def item(self) -> float:
        if not self.dtype.exact_numpy:
            from ..core.casts import to_f32

            return float(to_f32(self.data, self.dtype).reshape(-1)[0])
        return self.data.reshape(-1)[0].item()
