"""``.npz`` archives (what ``mx.savez`` and ``np.savez`` write): one ``.npy`` member per tensor.

Members must be stored uncompressed (``mx.savez``, ``np.savez``) so each
array's bytes can be read in place; the ``.npy`` header is parsed as a
literal, never unpickled. MLX writes bfloat16 as the 2-byte void type ``<V2``.
"""

from __future__ import annotations

import ast
import math
import os
import struct
import zipfile

from ..core import dtypes
from ..core.entry import TensorEntry
from ..errors import CheckpointError
from . import remote, zip_members

_DESCR = {
    "<f8": "float64",
    "<f4": "float32",
    "<f2": "float16",
    "<V2": "bfloat16",
    "|V2": "bfloat16",
    "<i8": "int64",
    "<i4": "int32",
    "<i2": "int16",
    "|i1": "int8",
    "<u8": "uint64",
    "<u4": "uint32",
    "<u2": "uint16",
    "|u1": "uint8",
    "|b1": "bool",
    "<c8": "complex64",
    "<c16": "complex128",
    ">f8": "float64",
    ">f4": "float32",
    ">f2": "float16",
    ">i8": "int64",
    ">i4": "int32",
    ">i2": "int16",
    ">u8": "uint64",
    ">u4": "uint32",
    ">u2": "uint16",
    ">c8": "complex64",
}


def is_npz(path: str) -> bool:
    return path.endswith(".npz")


def _npy_header(f, start: int, size: int, path: str, member: str):
    f.seek(start)
    head = f.read(min(size, 10))
    if head[:6] != b"\x93NUMPY" or len(head) < 10:
        raise CheckpointError(path, f"member {member} is not a .npy array")
    major = head[6]
    if major == 1:
        (hlen,), pre = struct.unpack("<H", head[8:10]), 10
    elif major in (2, 3):
        f.seek(start + 8)
        (hlen,), pre = struct.unpack("<I", f.read(4)), 12
    else:
        raise CheckpointError(path, f"member {member}: unsupported .npy version {major}")
    if pre + hlen > size or hlen > 1 << 20:
        raise CheckpointError(path, f"member {member}: .npy header runs past the member")
    f.seek(start + pre)
    text = f.read(hlen).decode("latin1")
    try:
        d = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):  # the parser's stack overflows on deep nesting
        raise CheckpointError(path, f"member {member}: unreadable .npy header") from None
    if not isinstance(d, dict) or not {"descr", "fortran_order", "shape"} <= set(d):
        raise CheckpointError(path, f"member {member}: .npy header lacks descr/fortran_order/shape")
    return d, start + pre + hlen


def read_entries(path: str) -> tuple[list[TensorEntry], list[str]]:
    far = remote.open_binary(path) if "://" in path else None  # a remote archive: read by range
    try:
        size = remote.file_size(path) if far is not None else os.path.getsize(path)
        zf = zipfile.ZipFile(far or path)
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        EOFError,
        NotImplementedError,
    ) as e:  # NotImplementedError: an unsupported zip version
        raise CheckpointError(path, f"not a readable .npz archive ({e})") from None
    entries = []
    with zf, far or open(path, "rb") as f:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(
                    path,
                    f"member {info.filename} is compressed (savez_compressed); stream needs mx.savez / np.savez output",
                )
            start = zip_members.data_offset(f, info, path)
            if start + info.file_size > size:
                raise CheckpointError(path, f"member {info.filename} runs past the end of the file")
            d, data = _npy_header(f, start, info.file_size, path, info.filename)
            name = info.filename[:-4]
            dt = dtypes.by_name(_DESCR.get(str(d["descr"]), "?"))
            shape = d["shape"]
            if dt is None:
                raise CheckpointError(path, f"array {name!r}: unsupported dtype {d['descr']!r}")
            # numpy's sizes are intp; a bigger one would be written into an output header no reader accepts.
            if not isinstance(shape, tuple) or not all(isinstance(n, int) and 0 <= n < 1 << 63 for n in shape):
                raise CheckpointError(path, f"array {name!r}: bad shape {shape!r}")
            if data + math.prod(shape) * dt.itemsize > start + info.file_size:
                raise CheckpointError(path, f"array {name!r}: data runs past its member")
            strides: tuple[int, ...] | None = None
            if d["fortran_order"] and len(shape) > 1:
                columns, step = [], 1
                for n in shape:
                    columns.append(step)
                    step *= n
                strides = tuple(columns)
            byteorder = "big" if str(d["descr"]).startswith(">") else "little"
            entries.append(
                TensorEntry(
                    name, dt, tuple(shape), path=path, offset=data, strides=strides, byteorder=byteorder, origin=path
                )
            )
    if not entries:
        raise CheckpointError(path, "no .npy arrays in the archive")
    return entries, []
