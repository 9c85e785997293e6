"""The ``data.pkl`` of a torch zip checkpoint, written opcode by opcode (no torch needed).

The pickle is a dict ``name -> tensor`` where each tensor is
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``
and each storage a persistent id ``('storage', torch.<Type>Storage, key, 'cpu', numel)``.
dtypes without a typed storage class (uint16/32/64, float8) use
``_rebuild_tensor_v3`` with ``UntypedStorage`` (numel in bytes) and the dtype,
as ``torch.save`` does. These are exactly the globals ``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import pickle
import struct

from ...core.dtypes import DType


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return pickle.BININT1 + bytes([n])
    if -(2**31) <= n < 2**31:
        return pickle.BININT + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(raw)]) + raw


def _tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _contiguous(shape) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return list(reversed(strides))


def data_pkl(tensors: list[tuple[str, DType, tuple[int, ...], str]]) -> bytes:
    """Pickle for ``[(name, dtype, shape, storage key)]``, each tensor its own contiguous storage."""
    out = [pickle.PROTO + b"\x02", pickle.EMPTY_DICT]
    if tensors:
        out.append(pickle.MARK)
    empty_odict = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    for name, dt, shape, key in tensors:
        numel = 1
        for n in shape:
            numel *= n
        size = _tuple([_int(n) for n in shape])
        stride = _tuple([_int(n) for n in _contiguous(shape)])
        if dt.storage:
            pid = _tuple([_str("storage"), _global("torch", dt.storage), _str(key), _str("cpu"), _int(numel)])
            args = [pid + pickle.BINPERSID, _int(0), size, stride, pickle.NEWFALSE, empty_odict]
            rebuild = _global("torch._utils", "_rebuild_tensor_v2")
        else:
            pid = _tuple(
                [
                    _str("storage"),
                    _global("torch.storage", "UntypedStorage"),
                    _str(key),
                    _str("cpu"),
                    _int(numel * dt.itemsize),
                ]
            )
            args = [
                pid + pickle.BINPERSID,
                _int(0),
                size,
                stride,
                pickle.NEWFALSE,
                empty_odict,
                _global("torch", dt.name),
            ]
            rebuild = _global("torch._utils", "_rebuild_tensor_v3")
        out += [_str(name), rebuild, _tuple(args), pickle.REDUCE]
    if tensors:
        out.append(pickle.SETITEMS)
    out.append(pickle.STOP)
    return b"".join(out)
