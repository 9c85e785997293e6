"""A remote GGUF file or split set (``hf://org/repo/x.gguf``, a repo holding one GGUF model,
``https://.../x.gguf``, fsspec URLs), read without a copy on disk.

gguf-py's ``GGUFReader`` and transformers' GGUF loader take a local file (a memory map). The header --
metadata and tensor infos, kilobytes to a few megabytes for a large tokenizer -- is fetched by range: our
own walk over the header's records says where it ends, fetching a prefix that doubles (from 64 KiB) until
it holds them. That prefix goes into a *sparse stand-in*: a local file of the remote file's size holding the
header bytes and a hole for the tensor data (no disk blocks). gguf-py parses it as it parses the file, and
transformers builds config.json and the tokenizer from it in the child process (it reads metadata and
tensor names only, never the data). Tensor entries name the remote file, so their bytes are read by range
through ``DataReader`` like any remote source's.
"""

from __future__ import annotations

import os
import struct

from ..errors import CheckpointError, Torch2MLXError
from . import remote
from .gguf import MAGIC, VERSIONS, _reader, check_readers, split_names

FIRST = 64 << 10
# GGUF metadata value types: fixed sizes (8 string, 9 array are walked)
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _Prefix:
    """The file's first bytes, fetched as far as the walk needs them (doubling)."""

    def __init__(self, rf: remote.RemoteFile):
        self.rf, self.buf, self.pos = rf, bytearray(), 0

    def need(self, n: int) -> None:
        end = self.pos + n
        if end > self.rf.size:
            raise CheckpointError(self.rf.label, "truncated GGUF header (it runs past the end of the file)")
        if end > len(self.buf):
            upto = min(self.rf.size, max(end, 2 * len(self.buf), FIRST))
            self.buf += remote.read_bytes(self.rf, len(self.buf), upto - len(self.buf))

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        self.need(n)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v[0] if len(v) == 1 else v

    def skip(self, n: int) -> None:
        self.need(n)
        self.pos += n

    def string(self) -> None:
        self.skip(self.take("<Q"))

    def value(self, vtype: int, depth: int = 0) -> None:
        if vtype == 8:
            self.string()
        elif vtype == 9:
            if depth > 4:
                raise CheckpointError(self.rf.label, "unreadable GGUF header (arrays nested too deep)")
            etype, count = self.take("<IQ")
            if etype in _SIZES:
                self.skip(count * _SIZES[etype])
            else:
                for _ in range(count):
                    self.value(etype, depth + 1)
        elif vtype in _SIZES:
            self.skip(_SIZES[vtype])
        else:
            raise CheckpointError(self.rf.label, f"unreadable GGUF header (metadata value type {vtype})")


def header(rf: remote.RemoteFile) -> bytes:
    """The bytes of ``rf``'s header: magic, counts, metadata and tensor infos (the data follows, aligned)."""
    p = _Prefix(rf)
    if rf.size < 24:
        raise CheckpointError(rf.label, f"truncated GGUF file ({rf.size} bytes, no complete header)")
    magic, version, n_tensors, n_kv = p.take("<4sIQQ")
    if magic != MAGIC:
        raise CheckpointError(rf.label, f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
    if version not in VERSIONS:
        raise CheckpointError(rf.label, f"GGUF version {version} is not supported (reads versions 2 and 3)")
    for _ in range(n_kv):
        p.string()
        p.value(p.take("<I"))
    for _ in range(n_tensors):
        p.string()
        p.skip(8 * p.take("<I") + 4 + 8)  # dims, type, offset
    return bytes(p.buf[: p.pos])


def _stand_in(rf: remote.RemoteFile, folder: str) -> tuple[str, int]:
    path = os.path.join(folder, os.path.basename(rf.name))
    head = header(rf)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(rf.size)  # the tensor data: a hole
    return path, len(head)


def open_remote(listing, name: str, folder: str) -> dict:
    """The ``Checkpoint`` fields of GGUF file ``name`` of ``listing`` (or the split set it begins)."""
    from .gguf_meta import checkpoint_fields

    names = split_names(name)
    if listing.single is not None and listing.label.startswith(("http://", "https://")):
        # HTTP cannot list: the other files of a split set are asked for by name, beside the first
        for n in names:
            if n not in listing.files:
                try:
                    listing.files[n] = remote.resolve_url(f"{listing.label}/{n}").files[n]
                except Torch2MLXError:
                    pass  # reported as missing below
    missing = [n for n in names if n not in listing.files]
    if missing:
        raise CheckpointError(
            f"{listing.label}/{name}", f"split GGUF set of {len(names)} files: {missing[0]} is missing"
        )
    rfs = [listing.files[n] for n in names]
    labels = [rf.label for rf in rfs]
    os.makedirs(folder, exist_ok=True)
    made = [_stand_in(rf, folder) for rf in rfs]
    local = [p for p, _ in made]
    readers = []
    for path, label in zip(local, labels, strict=True):
        try:
            readers.append(_reader(path))
        except CheckpointError as e:  # the stand-in's path means nothing to the user
            raise CheckpointError(label, e.problem) from None
    check_readers(local, readers, labels)
    fields = checkpoint_fields(labels[0], local, readers, labels)
    fields["notes"].append(
        f"GGUF header{'s' if len(made) > 1 else ''} read by range ({sum(n for _, n in made):,} bytes, kept in "
        "sparse local stand-ins for gguf-py and transformers); tensor data read by range as it is converted"
    )
    return fields
