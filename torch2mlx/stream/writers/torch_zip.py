"""Write a torch zip checkpoint (what ``torch.save`` writes) tensor by tensor, without torch.

Members: ``<root>/data/<key>`` per tensor (stored, data aligned to 64 bytes
like torch's writer does, via padding in the local header's extra field),
then ``data.pkl``, ``byteorder``, ``version`` and ``.format_version``.
``torch.load(path, weights_only=True)`` reads the result.
"""

from __future__ import annotations

import os
import struct
import zipfile

from ...core.dtypes import DType
from .files import os_error, temp_name
from .torch_pickle import data_pkl

ALIGN = 64
_PAD_ID = 0x5446  # extra-field id for padding; readers skip unknown ids


class TorchZipWriter:
    def __init__(self, path: str, root: str = "archive"):
        self.path, self.root = path, root
        self._tmp = temp_name(path)
        self._tensors: list[tuple[str, DType, tuple[int, ...], str]] = []
        try:
            self._zf = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        except OSError as e:
            raise os_error(self._tmp, e) from None

    def _member(self, name: str, size: int):
        info = zipfile.ZipInfo(f"{self.root}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size
        zip64 = size >= zipfile.ZIP64_LIMIT
        # Local header: 30 bytes + name + (zip64 extra 20) + our padding field (4 + pad).
        assert self._zf.fp is not None  # open for writing until close()
        pos = self._zf.fp.tell()
        fixed = 30 + len(info.filename.encode()) + (20 if zip64 else 0) + 4
        pad = -(pos + fixed) % ALIGN
        info.extra = struct.pack("<HH", _PAD_ID, pad) + b"\0" * pad
        return self._zf.open(info, "w", force_zip64=zip64)

    def add(self, name: str, dtype: DType, shape: tuple[int, ...], chunks) -> None:
        """Append one tensor; ``chunks`` yields its little-endian bytes in order."""
        key = str(len(self._tensors))
        size = dtype.itemsize
        for n in shape:
            size *= n
        try:
            with self._member(f"data/{key}", size) as f:
                for c in chunks:
                    f.write(c)
        except OSError as e:
            raise os_error(self._tmp, e) from None
        self._tensors.append((name, dtype, tuple(shape), key))

    def close(self) -> None:
        try:
            for name, payload in (
                ("data.pkl", data_pkl(self._tensors)),
                ("byteorder", b"little"),
                (".format_version", b"1"),
                (".storage_alignment", str(ALIGN).encode()),
                ("version", b"3\n"),
            ):
                with self._member(name, len(payload)) as f:
                    f.write(payload)
            self._zf.close()
            with open(self._tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        except OSError as e:
            raise os_error(self.path, e) from None

    def abort(self) -> None:
        try:
            self._zf.close()
        except Exception:  # closing a half-written archive may fail; it is deleted next anyway
            pass
        try:
            os.unlink(self._tmp)
        except OSError:
            pass
