"""Where a stored zip member's bytes begin: torch checkpoints and .npz archives are read in place."""

from __future__ import annotations

import struct
import zipfile

from ..errors import CheckpointError

LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def data_offset(f, info: zipfile.ZipInfo, path: str) -> int:
    """Offset of ``info``'s data in the open file ``f``, checked against its local header."""
    if info.header_offset < 0:  # zipfile shifts offsets by what the end record claims; a corrupt one goes negative
        raise CheckpointError(path, f"zip member {info.filename}: local header offset lies before the file")
    f.seek(info.header_offset)
    raw = f.read(LOCAL_HEADER.size)
    if len(raw) != LOCAL_HEADER.size:
        raise CheckpointError(path, f"zip member {info.filename}: local header past the end of the file")
    fields = LOCAL_HEADER.unpack(raw)
    if fields[0] != b"PK\x03\x04":
        raise CheckpointError(path, f"zip member {info.filename}: bad local header signature")
    return info.header_offset + LOCAL_HEADER.size + fields[9] + fields[10]
