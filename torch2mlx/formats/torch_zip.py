"""PyTorch zip checkpoints (``torch.save`` since 1.6).

The archive holds ``<root>/data.pkl`` (the object graph), ``<root>/data/<key>``
(one member per storage, stored uncompressed) and ``<root>/byteorder``. We
read the central directory, unpickle ``data.pkl`` with the restricted
unpickler and map every storage to the byte offset of its member's data, so
tensor bytes are later read in place.
"""

from __future__ import annotations

import zipfile

from ..errors import CheckpointError
from . import remote, torchscript, unpickler, zip_members
from .unpickler import StorageRef

MAX_PICKLE = 1 << 30


def is_zip(path: str) -> bool:
    with remote.open_binary(path) as f:
        return f.read(4) == b"PK\x03\x04"


class ZipCheckpoint:
    def __init__(self, path: str):
        self.path = path
        try:
            self.size = remote.file_size(path)
            # a remote file: the central directory read by range (ZipFile leaves a file object open)
            self._remote = remote.open_binary(path) if "://" in path else None
            zf = zipfile.ZipFile(self._remote or path)
        except (
            zipfile.BadZipFile,
            OSError,
            ValueError,
            EOFError,
            NotImplementedError,
        ) as e:  # NotImplementedError: an unsupported zip version
            raise CheckpointError(path, f"not a readable zip archive ({e})") from None
        with zf:
            infos = zf.infolist()
            pkl = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
            if len(pkl) != 1 and any(i.filename.endswith(("model.json", ".py")) for i in infos):
                raise torchscript.refuse(path, "an archive layout from before torch 1.4 (no data.pkl)")
            if len(pkl) != 1:
                raise CheckpointError(path, "zip archive has no single data.pkl: not a torch.save checkpoint")
            self.root = pkl[0].filename[: -len("data.pkl")]
            self.members = {i.filename: i for i in infos}
            self.data_offsets: dict[str, int] = {}
            # torch.jit.save: the class definitions (compressed) tell parameters and buffers from other attributes
            self.torchscript = torchscript.is_torchscript(self.members, self.root)
            self._check_members(infos)
            self.script_classes = torchscript.class_decls(zf, infos, self.root, path) if self.torchscript else None
            if pkl[0].file_size > MAX_PICKLE:
                raise CheckpointError(path, f"data.pkl is {pkl[0].file_size} bytes, over the 1 GiB limit")
            self.pickle_bytes = self._read_member(pkl[0])
            order = self.members.get(self.root + "byteorder")
            if order and order.file_size > 16:  # "little" or "big": never read a large member into memory
                raise CheckpointError(path, f"byteorder record is {order.file_size} bytes; expected 'little' or 'big'")
            self.byteorder = self._read_member(order).decode("ascii", "replace").strip() if order else "little"
        if self.byteorder not in ("little", "big"):
            raise CheckpointError(path, f"unknown byteorder record {self.byteorder!r}")

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        if self._remote is not None:
            return zip_members.data_offset(self._remote, info, self.path)
        with open(self.path, "rb") as f:
            return zip_members.data_offset(f, info, self.path)

    def _check_members(self, infos):
        spans = []
        for info in infos:
            if info.flag_bits & 0x1:
                raise CheckpointError(self.path, f"zip member {info.filename} is encrypted")
            if info.compress_type != zipfile.ZIP_STORED:
                # TorchScript compresses its code/ text; tensor data and pickles are read in place, so stored
                if not (self.torchscript and info.filename.startswith(self.root + "code/")):
                    raise CheckpointError(
                        self.path,
                        f"zip member {info.filename} is compressed; torch checkpoints store data uncompressed",
                    )
            elif info.compress_size != info.file_size:
                raise CheckpointError(self.path, f"zip member {info.filename}: stored, but its sizes disagree")
            start = self._data_offset(info)
            end = start + info.compress_size
            if end > self.size:
                raise CheckpointError(
                    self.path, f"zip member {info.filename} runs past the end of the file (truncated?)"
                )
            self.data_offsets[info.filename] = start
            spans.append((info.header_offset, end, info.filename))
        spans.sort()
        for (_, e0, n0), (s1, _, n1) in zip(spans, spans[1:], strict=False):
            if s1 < e0:
                raise CheckpointError(self.path, f"zip members {n0} and {n1} overlap")

    def _read_member(self, info: zipfile.ZipInfo) -> bytes:
        with remote.open_binary(self.path) as f:
            f.seek(self.data_offsets[info.filename])
            data = f.read(info.file_size)
        if len(data) != info.file_size:
            raise CheckpointError(self.path, f"zip member {info.filename} is truncated")
        return data

    def _persistent_load(self, pid):
        key, stype, numel, location, view = unpickler.storage_ref(pid, self.path)
        dtype = stype.dtype or unpickler.UINT8
        info = self.members.get(f"{self.root}data/{key}")
        if info is None:
            raise CheckpointError(self.path, f"storage {key!r} has no data/{key} member in the archive")
        if numel * dtype.itemsize != info.file_size:
            raise CheckpointError(
                self.path,
                f"storage {key!r}: {numel} x {dtype.name} needs {numel * dtype.itemsize} bytes "
                f"but its member holds {info.file_size}",
            )
        return StorageRef(key, dtype, numel, location)

    def load(self):
        return unpickler.load(self.pickle_bytes, self.path, self._persistent_load)

    def storage_offset(self, ref: StorageRef) -> int:
        return self.data_offsets[f"{self.root}data/{ref.key}"]
