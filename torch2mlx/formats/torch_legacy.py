"""Legacy PyTorch pickles (``torch.save(..., _use_new_zipfile_serialization=False)``).

The file is a sequence of pickles: a magic number, the protocol version, a
sys-info dict, the object graph (storages as persistent ids), then the list
of storage keys; after that, for each key in that order, an int64 element
count followed by the storage's raw bytes. We skip over the bytes by their
counts, so locating every storage reads 8 bytes per storage and no data.
"""

from __future__ import annotations

import io
import pickle
import struct

from ..errors import CheckpointError
from . import remote, unpickler
from .unpickler import StorageRef

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001


def _no_persistent(pid):
    raise pickle.UnpicklingError("unexpected persistent id in a header pickle")


def _open(path: str, buffered: bool = False):
    """The file to read. A remote one is read by range through small windows, which are dropped once every
    byte of them was served: the unpickler's many small reads go through a small buffer, the 8-byte size
    records unbuffered (a buffer as large as a window would serve it whole and have it fetched again)."""
    f = remote.open_binary(path)
    return io.BufferedReader(f, 8192) if buffered and isinstance(f, remote.RemoteIO) else f


def is_legacy(path: str) -> bool:
    with _open(path) as f:
        head = f.read(2)
    # protocol 2+: PROTO opcode; protocol 0/1 (torch.save(pickle_protocol=1)): the magic number as a text LONG
    return len(head) == 2 and ((head[0] == 0x80 and 2 <= head[1] <= 5) or (head[:1] == b"L" and head[1:].isdigit()))


class LegacyCheckpoint:
    def __init__(self, path: str):
        self.path = path
        self.size = remote.file_size(path)
        self.byteorder = "little"
        self._pids: dict[str, StorageRef] = {}
        self.offsets: dict[str, tuple[int, int]] = {}
        with _open(path, buffered=True) as f:
            values = []
            for what in ("magic number", "protocol version", "sys info"):
                values.append(self._header_pickle(f, what))
            magic, proto, sysinfo = values
            if magic != MAGIC:
                raise CheckpointError(path, "not a PyTorch checkpoint (bad magic number)")
            if proto != PROTOCOL:
                raise CheckpointError(path, f"unsupported legacy protocol version {proto!r}")
            if isinstance(sysinfo, dict) and dict.get(sysinfo, "little_endian") is False:
                self.byteorder = "big"
            self._obj, self._placeholders = unpickler.load(f, path, self._persistent_load)
            keys = self._header_pickle(f, "storage key list")
            self.data_start = f.tell()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError(path, "storage key list is not a list of strings")
        if len(set(keys)) != len(keys):
            raise CheckpointError(path, "storage key list names a storage twice")
        self.keys = keys

    def _header_pickle(self, f, what: str):
        try:
            obj, _ = unpickler.load(f, self.path, _no_persistent)
        except CheckpointError as e:
            raise CheckpointError(self.path, f"{what}: {e.problem}") from None
        return obj

    def _persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # ('module', class, source file, source text): the legacy format records each nn.Module
            # class's source; the class is our inert placeholder and the source is never used.
            if not (isinstance(pid[1], type) and issubclass(pid[1], unpickler.Opaque)):
                raise CheckpointError(self.path, "module record names something that is not a class")
            return pid[1]
        key, stype, numel, location, view = unpickler.storage_ref(pid, self.path)
        dtype = stype.dtype or unpickler.UINT8
        ref = StorageRef(key, dtype, numel, location, view)
        prev = self._pids.setdefault(key, ref)
        if prev.nbytes != ref.nbytes:
            raise CheckpointError(self.path, f"storage {key!r} is referenced with two different sizes")
        return ref

    def load(self):
        missing = set(self._pids) - set(self.keys)
        if missing:
            raise CheckpointError(
                self.path, f"storage {sorted(missing)[0]!r} is used by the pickle but not in the storage list"
            )
        self._locate()
        return self._obj, self._placeholders

    def _locate(self):
        """Walk the storage records: an int64 count, then count x itemsize bytes each."""
        pos = self.data_start
        with _open(self.path) as f:
            for key in self.keys:
                f.seek(pos)
                raw = f.read(8)
                if len(raw) != 8:
                    raise CheckpointError(self.path, f"storage {key!r}: file ends before its size record (truncated?)")
                (count,) = struct.unpack("<q", raw)
                ref = self._pids.get(key)
                itemsize = ref.dtype.itemsize if ref else 1
                if count < 0 or (ref is not None and count != ref.numel):
                    raise CheckpointError(
                        self.path,
                        f"storage {key!r}: size record {count} disagrees with the pickle ({ref.numel if ref else '?'})",
                    )
                nbytes = count * itemsize
                if pos + 8 + nbytes > self.size:
                    raise CheckpointError(
                        self.path, f"storage {key!r}: {nbytes} bytes run past the end of the file (truncated?)"
                    )
                self.offsets[key] = (pos + 8, nbytes)
                pos += 8 + nbytes

    def storage_offset(self, ref: StorageRef) -> int:
        return self.offsets[ref.key][0]
