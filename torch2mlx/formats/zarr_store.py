"""zarr stores (v2 and v3) as a source: a group whose arrays are tensors, read chunk by chunk.

Nested groups become dotted names (``model/layers/0/weight`` -> ``model.layers.0.weight``).
zarr has no bfloat16: torch2mlx's zarr sink stores it as uint16 with the
attribute ``torch2mlx_dtype``, which is honoured here.

Our sink escapes each dotted part of a name (``array_path``), so every name
has its own path (``x.y`` -> ``x/y`` but ``x/y`` -> ``x%2Fy``) and no part is
empty, ``..`` or reserved; the root attribute ``torch2mlx_names`` says so and
names are decoded back. It also marks the root ``torch2mlx_complete: false``
until the run has finished: such a store is refused here.
"""

from __future__ import annotations

import string
import urllib.parse
import warnings

import numpy as np

from ..core import dtypes
from ..core.entry import TensorEntry
from ..errors import CheckpointError, Torch2MLXError

DTYPE_ATTR = "torch2mlx_dtype"
NAMES_ATTR = "torch2mlx_names"  # "escaped": array paths are array_path(name)
COMPLETE_ATTR = "torch2mlx_complete"  # False while the sink writes, True once its manifest is written
_SAFE = frozenset(string.ascii_letters + string.digits + "_-")


def _escape(part: str) -> str:
    if part == "":
        return "%"  # an empty part ("a..b", ".x"): no escape spells a lone %
    out = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in part)
    return "%5F" + out[1:] if out.startswith("__") else out  # zarr v3 reserves names starting "__"


def array_path(name: str) -> str:
    """The store path of tensor ``name``: one group per dotted part, each part escaped (reversibly)."""
    return "/".join(_escape(p) for p in name.split("."))


def name_of(path: str) -> str:
    """The tensor name ``array_path`` made ``path`` from."""
    return ".".join("" if p == "%" else urllib.parse.unquote(p, errors="strict") for p in path.split("/"))


def is_zarr(path: str) -> bool:
    import os

    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zgroup", ".zattrs", ".zarray")
    )


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
            arrays = (
                [("", root)]
                if isinstance(root, zarr.Array)
                else [(name, node) for name, node in root.members(max_depth=None) if isinstance(node, zarr.Array)]
            )
        except Exception as e:  # zarr raises several types for unreadable stores
            raise CheckpointError(path, f"not a readable zarr store ({type(e).__name__}: {e})") from None
        attrs = dict(root.attrs) if not isinstance(root, zarr.Array) else {}
    if attrs.get(COMPLETE_ATTR) is False:
        raise CheckpointError(
            path,
            "a zarr store from a conversion that did not finish (marked incomplete): "
            "its arrays may be partly written; convert the source again with --overwrite",
        )
    escaped = attrs.get(NAMES_ATTR) == "escaped"
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
        try:
            tensor = name_of(name) if escaped else name.replace("/", ".")
        except UnicodeDecodeError:
            raise CheckpointError(path, f"array {name!r}: its escaped name is not valid UTF-8") from None
        entries.append(
            TensorEntry(
                tensor or "tensor",
                dt,
                tuple(arr.shape),
                path=path,
                loader=_Rows(arr, f"{path}/{name}"),
                origin=f"{path}/{name}",
            )
        )
    if not entries:
        raise CheckpointError(path, "zarr store holds no arrays")
    return entries, [], attrs
