"""zarr stores (v2 and v3) as a source: a group whose arrays are tensors, read chunk by chunk.

Nested groups become dotted names (``model/layers/0/weight`` -> ``model.layers.0.weight``).
zarr has no bfloat16: torch2mlx's zarr sink stores it as uint16 with the
attribute ``torch2mlx_dtype``, which is honoured here.
"""
from __future__ import annotations

import warnings

import numpy as np

from ... import dtypes
from ...errors import CheckpointError, Torch2MLXError
from ..entry import TensorEntry

DTYPE_ATTR = "torch2mlx_dtype"


def is_zarr(path: str) -> bool:
    import os
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zgroup", ".zattrs", ".zarray"))


class _Rows:
    """Blocks of a zarr array; zarr reads only the chunks a slice touches."""

    def __init__(self, array, origin: str):
        self.array, self.origin = array, origin

    def read(self, axis: int, start: int, stop: int) -> np.ndarray:
        try:
            if self.array.ndim == 0:
                return np.asarray(self.array[()])
            idx = [slice(None)] * self.array.ndim
            idx[axis] = slice(start, stop)
            return np.asarray(self.array[tuple(idx)])
        except Exception as e:  # codecs and zarr raise many types for chunk bytes that do not decode
            raise CheckpointError(self.origin, f"unreadable chunk data ({type(e).__name__}: {e})") from None


def _zarr(what: str):
    """The zarr module; without it, an error that names ``what`` needed it (a store, or --format zarr)."""
    try:
        import zarr
    except ImportError:
        raise Torch2MLXError(f"{what} needs the zarr package: pip install 'torch2mlx[zarr]'") from None
    return zarr


def read_entries(path: str) -> tuple[list[TensorEntry], list[str], dict]:
    """Entries, notes, and the root's attributes (``format: mlx`` marks our own sink's output)."""
    zarr = _zarr(f"{path}: reading a zarr store")
    with warnings.catch_warnings():
        # Sidecar files (config.json, torch2mlx.json) are not zarr nodes; zarr warns about each.
        warnings.simplefilter("ignore")
        try:
            root = zarr.open(path, mode="r")
            arrays = [("", root)] if isinstance(root, zarr.Array) else [
                (name, node) for name, node in root.members(max_depth=None) if isinstance(node, zarr.Array)]
        except Exception as e:  # zarr raises several types for unreadable stores
            raise CheckpointError(path, f"not a readable zarr store ({type(e).__name__}: {e})") from None
        attrs = dict(root.attrs) if not isinstance(root, zarr.Array) else {}
    entries = []
    for name, arr in sorted(arrays, key=lambda t: t[0]):
        tag = arr.attrs.get(DTYPE_ATTR)
        dt = dtypes.by_name(tag) if isinstance(tag, str) else None
        if dt is None:
            np_dt = np.dtype(arr.dtype)
            dt = next((d for d in dtypes.DTYPES if d.exact_numpy and d.np_dtype == np_dt.newbyteorder("<")), None)
        if dt is None:
            raise CheckpointError(path, f"array {name!r}: unsupported dtype {arr.dtype}")
        if np.dtype(arr.dtype).itemsize != dt.itemsize:
            raise CheckpointError(path, f"array {name!r}: {arr.dtype} cannot carry {dt.name}")
        entries.append(TensorEntry(name.replace("/", ".") or "tensor", dt, tuple(arr.shape), path=path,
                                   loader=_Rows(arr, f"{path}/{name}"), origin=f"{path}/{name}"))
    if not entries:
        raise CheckpointError(path, "zarr store holds no arrays")
    return entries, [], attrs
