"""safetensors header parser, validated against the format's rules before any data is read.

Layout: 8-byte little-endian header length N, N bytes of JSON (an object of
tensor records plus an optional ``__metadata__`` of string pairs), then the
data buffer. Each record's ``data_offsets`` are relative to the buffer; the
records must tile the buffer exactly, without overlaps or holes.
"""

from __future__ import annotations

import json
import os
import struct

from ..core import dtypes
from ..core.entry import TensorEntry
from ..errors import CheckpointError

MAX_HEADER = 100 * 1024 * 1024
_RECORD_KEYS = {"dtype", "shape", "data_offsets"}


def _no_duplicates(pairs):
    out = dict(pairs)  # one call per JSON object: a header holds 100,000 of them
    if len(out) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r}")
            seen.add(k)
    return out


def _local_source(path: str):
    """``(size, read(offset, n))`` of a file on disk."""
    size = os.path.getsize(path)

    def read(offset: int, n: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)

    return size, read


def read_header(path: str, source=None) -> tuple[dict, dict, int]:
    """Return (records, metadata, data_start) after checking the header's framing.

    ``source``: ``(size, read(offset, n))`` for a file not on the local disk (read by range).
    """
    try:
        size, read = source or _local_source(path)
        head = read(0, 8)
        if len(head) < 8:
            raise CheckpointError(path, f"truncated safetensors file ({size} bytes, no header length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise CheckpointError(path, f"safetensors header length {n} exceeds the {MAX_HEADER}-byte limit")
        if 8 + n > size:
            raise CheckpointError(path, f"safetensors header length {n} runs past the end of the file ({size} bytes)")
        raw = read(8, n)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    if not raw.lstrip(b" ").startswith(b"{"):
        raise CheckpointError(path, "safetensors header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(path, f"safetensors header is not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(path, "safetensors header is not valid JSON (nested too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:  # absent or null; false, 0, "" or [] are no metadata map (the reference refuses them)
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(path, "safetensors __metadata__ must map strings to strings")
    return header, metadata, 8 + n


def _int_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _nbytes(shape: list[int], itemsize: int) -> int | None:
    """Bytes a shape needs, or None past 2**64: multiplying on through a hostile header's
    millions of dimensions would take quadratic time, and the result could not be printed."""
    if 0 in shape:
        return 0
    n = itemsize
    for d in shape:
        n *= d
        if n >= 1 << 64:
            return None
    return n


def read_entries(path: str, source=None) -> tuple[list[TensorEntry], dict]:
    """Entries of one safetensors file, in data order, and its ``__metadata__`` (``source`` as for ``read_header``)."""
    header, metadata, start = read_header(path, source)
    data_len = (source[0] if source else os.path.getsize(path)) - start
    spans = []
    for name, rec in header.items():
        # The common record, accepted in a few steps (100,000 tensors make the full checks
        # below a visible cost); anything else goes through them and gets its message.
        if type(rec) is dict and rec.keys() == _RECORD_KEYS:
            d, shape, offs = rec["dtype"], rec["shape"], rec["data_offsets"]
            dt = dtypes.by_safetensors(d) if type(d) is str else None
            if dt is not None and type(shape) is list and len(shape) <= 8 and type(offs) is list and len(offs) == 2:
                begin, end = offs
                size = dt.itemsize
                for x in shape:
                    if type(x) is not int or not 0 <= x < 1 << 64:
                        size = -1
                        break
                    size *= x
                # end <= data_len bounds every size below 2**64, as the full checks demand
                if type(begin) is int and type(end) is int and 0 <= begin <= end <= data_len and end - begin == size:
                    spans.append((begin, end, name, dt, tuple(shape)))
                    continue
        if not isinstance(rec, dict) or set(rec) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(path, f"tensor {name!r}: record must have exactly dtype, shape, data_offsets")
        dt = dtypes.by_safetensors(rec["dtype"]) if isinstance(rec["dtype"], str) else None
        if dt is None:
            raise CheckpointError(path, f"tensor {name!r}: unknown dtype {rec['dtype']!r}")
        shape, offs = rec["shape"], rec["data_offsets"]
        if not _int_list(shape) or any(d < 0 for d in shape):
            raise CheckpointError(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        if not _int_list(offs) or len(offs) != 2 or not 0 <= offs[0] <= offs[1]:
            raise CheckpointError(path, f"tensor {name!r}: bad data_offsets {offs!r}")
        # The format's sizes are 64-bit; a 4000-digit number is valid JSON but no size.
        if any(x >= 1 << 64 for x in shape) or offs[1] >= 1 << 64:
            raise CheckpointError(path, f"tensor {name!r}: shape or data_offsets out of range (more than 64 bits)")
        nbytes = _nbytes(shape, dt.itemsize)
        if nbytes is None:
            raise CheckpointError(
                path, f"tensor {name!r}: a {len(shape)}-D shape of {dt.safetensors} that needs more than 2**64 bytes"
            )
        if offs[1] - offs[0] != nbytes:
            raise CheckpointError(
                path,
                f"tensor {name!r}: shape {shape} of {dt.safetensors} needs {nbytes} bytes "
                f"but data_offsets span {offs[1] - offs[0]}",
            )
        if offs[1] > data_len:
            raise CheckpointError(
                path, f"tensor {name!r}: data_offsets {offs} run past the end of the data ({data_len} bytes)"
            )
        spans.append((offs[0], offs[1], name, dt, tuple(shape)))
    spans.sort(key=lambda s: (s[0], s[1]))
    pos = 0
    entries = []
    for begin, end, name, dt, shape in spans:
        if begin < pos:
            raise CheckpointError(path, f"tensor {name!r}: data_offsets [{begin}, {end}] overlap the previous tensor")
        if begin > pos:
            raise CheckpointError(path, f"hole in the data buffer before tensor {name!r} (bytes {pos}..{begin})")
        pos = end
        entries.append(TensorEntry(name, dt, shape, path=path, offset=start + begin, origin=path))
    if pos != data_len:
        raise CheckpointError(path, f"{data_len - pos} trailing bytes after the last tensor")
    return entries, metadata
