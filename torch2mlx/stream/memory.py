"""In-memory sources for the stream: a state dict's tensors as ``TensorEntry(array=...)`` records.

torch tensors become numpy arrays that share their memory (``Tensor.numpy()``
is a view); numpy has no bfloat16 or float8, so those are viewed as the raw
16/8-bit words the stream carries them in. Non-contiguous tensors stay views:
their entries record strides, so the executor copies one block at a time
instead of the whole tensor per block. MLX arrays (the input of ``to_torch``)
are copied once, as ``numpy.array`` does. torch is never imported here: a torch
tensor in hand means torch is loaded, and its own module is used.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import numpy as np

from ..core import dtypes
from ..core.dtypes import DType
from ..core.entry import TensorEntry, contiguous_strides
from ..errors import Torch2MLXError
from ..formats.checkpoint import Checkpoint


def is_module(x) -> bool:
    """A torch ``nn.Module`` (checked by its attributes: no torch import needed to tell)."""
    return hasattr(x, "state_dict") and hasattr(x, "named_modules") and hasattr(x, "_parameters")


def _from_torch(name: str, t) -> tuple[DType, np.ndarray]:
    torch = sys.modules["torch"]  # the tensor's own torch (see the module doc)

    t = t.detach()
    if t.device.type == "meta":
        raise Torch2MLXError(
            f"{name}: a tensor on the meta device has no values to convert (load or initialize the weights first)"
        )
    if t.layout != torch.strided:
        raise Torch2MLXError(f"{name}: {t.layout} tensors are not supported (convert to dense first)")
    if t.device.type != "cpu":
        t = t.cpu()
    dt = dtypes.by_name(str(t.dtype))
    if dt is None:
        raise Torch2MLXError(f"{name}: dtype {t.dtype} has no MLX counterpart")
    t = t.resolve_conj().resolve_neg()
    if not dt.exact_numpy:  # bfloat16 / float8: the same bytes as unsigned words
        t = t.view(torch.uint16 if dt.itemsize == 2 else torch.uint8)
    return dt, t.numpy()


def _from_mlx(name: str, a) -> tuple[DType, np.ndarray]:
    import mlx.core as mx

    dt = dtypes.by_name(str(a.dtype).removeprefix("mlx.core."))
    if dt is None:
        raise Torch2MLXError(f"{name}: MLX dtype {a.dtype} is not supported")
    if not dt.exact_numpy:
        a = a.view(mx.uint16)
    return dt, np.array(a)


def _from_numpy(name: str, a: np.ndarray) -> tuple[DType, np.ndarray]:
    dt = dtypes.by_name(a.dtype.name) if a.dtype.kind in "fiubc" else None
    if dt is None:
        raise Torch2MLXError(f"{name}: numpy dtype {a.dtype} is not supported")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return dt, a


def carrier(name: str, value) -> tuple[DType, np.ndarray]:
    """``(dtype, numpy array)`` for a torch tensor, an MLX array or a numpy array (bits for bfloat16/float8)."""
    kind = type(value).__module__.split(".")[0]
    if kind == "torch":
        return _from_torch(name, value)
    if kind == "mlx":
        return _from_mlx(name, value)
    if isinstance(value, np.ndarray):
        return _from_numpy(name, value)
    raise Torch2MLXError(f"{name}: expected a tensor or array, got {type(value).__name__}")


def _entry(name: str, dt: DType, arr: np.ndarray) -> TensorEntry:
    shape = tuple(arr.shape)
    strides = None
    if not arr.flags.c_contiguous and all(s % arr.itemsize == 0 and s >= 0 for s in arr.strides):
        strides = tuple(s // arr.itemsize for s in arr.strides)
        if strides == contiguous_strides(shape):
            strides = None
    elif not arr.flags.c_contiguous:  # negative or odd strides: numpy may hand us those; make them plain
        arr = np.ascontiguousarray(arr)
    return TensorEntry(name, dt, shape, strides=strides, array=arr, origin=f"<memory>:{name}")


def memory_checkpoint(tensors: Mapping, label: str = "<state dict>") -> Checkpoint:
    """A ``Checkpoint`` over ``{name: tensor}`` held in memory; nothing is copied for CPU tensors."""
    if not isinstance(tensors, Mapping):
        raise Torch2MLXError(f"expected an nn.Module or a mapping of names to tensors, got {type(tensors).__name__}")
    entries = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise Torch2MLXError(f"tensor names must be strings, got {name!r}")
        entries.append(_entry(name, *carrier(name, value)))
    return Checkpoint(label, entries, [], "memory")


def names_only(state: Mapping, label: str = "<model>") -> Checkpoint:
    """A state dict's tensor names, dtypes and shapes (no values: meta tensors too), all rule matching needs."""
    entries = []
    for n, t in state.items():
        dt = dtypes.by_name(str(t.dtype).removeprefix("torch."))
        if dt is None:
            raise Torch2MLXError(f"{n}: dtype {t.dtype} has no MLX counterpart")
        entries.append(TensorEntry(n, dt, tuple(t.shape)))
    return Checkpoint(label, entries, [], "memory")
