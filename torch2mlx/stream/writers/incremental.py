"""``ShardWriter``: feed tensors one at a time, sizes not known in advance, memory bounded by one tensor.

Each tensor's bytes go straight to a per-width spill file (8-, 4-, 2- and
1-byte dtypes apart), so a shard can later be laid out widest first — every
tensor aligned to its element size — without holding data in memory. When a
shard is full its header is written and the spill files are appended after it
by the kernel. Shards are renamed to ``model-0000i-of-0000N`` names once N is
known, and the index is written last.
"""

from __future__ import annotations

import os

import numpy as np

from ...core import dtypes
from ...errors import Torch2MLXError
from .. import manifest
from ..hashing import HASH, file_digest
from ..plan import Output, render_header, shard_name
from . import output_dir
from .files import copy_range, fsync_dir, os_error, pwrite_all

_WIDTHS = (16, 8, 4, 2, 1)


class ShardWriter:
    def __init__(
        self,
        out_dir: str,
        max_shard_size="5GB",
        *,
        overwrite: bool = False,
        metadata: dict | None = None,
        manifest_extra: dict | None = None,
    ):
        from ..options import parse_size

        self.out_dir = os.fspath(out_dir)
        self.max = parse_size(max_shard_size, "ShardWriter(max_shard_size=...)")
        self.metadata = metadata
        self.manifest_extra = manifest_extra or {}
        output_dir.ready_for_writing(self.out_dir, overwrite=overwrite, src_paths=[])
        self._spill: dict[int, int] = {}  # item width -> fd of its spill file
        self._pending: list[tuple[Output, int]] = []  # (output, offset in its spill file)
        self._spill_size = {w: 0 for w in _WIDTHS}
        self._sealed: list[tuple[str, list[Output], int, str]] = []  # (temp path, outputs, size, sha256)
        self._names: set[str] = set()
        self.records: dict[str, dict] = {}
        self.results: list[dict] = []
        self.nbytes = 0  # tensor bytes written (the index's total_size), once closed
        self._closed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _spill_fd(self, width: int) -> int:
        fd = self._spill.get(width)
        if fd is None:
            path = os.path.join(self.out_dir, f".spill-{width}.tmp")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            except OSError as e:
                raise os_error(path, e) from None
            self._spill[width] = fd
        return fd

    def add(self, name: str, array, dtype=None, record: dict | None = None) -> None:
        """Append one tensor: an ``mx.array``, a torch tensor or a numpy array (values, never raw bits).

        ``dtype`` (a name such as ``"bfloat16"``) is the dtype to store; values of another
        dtype are cast to it exactly, as torch's ``Tensor.to`` would.
        """
        if self._closed:
            raise Torch2MLXError("ShardWriter is closed")
        if name in self._names:
            raise Torch2MLXError(f"tensor {name!r} was already written")
        from ...core.values import from_user

        array, dt = from_user(array, dtype, name)
        self.add_bits(name, array, dt, record)

    def add_bits(self, name: str, array: np.ndarray, dt: dtypes.DType, record: dict | None = None) -> None:
        """Append numpy ``array`` holding ``dt``'s values, or its raw bits when numpy has no such dtype."""
        if self._closed:
            raise Torch2MLXError("ShardWriter is closed")
        if name in self._names:
            raise Torch2MLXError(f"tensor {name!r} was already written")
        if dt.safetensors is None:
            raise Torch2MLXError(f"{name}: {dt.name} cannot be stored in safetensors")
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
        size = sum(o.nbytes for o, _ in self._pending)
        if self._pending and size + data.nbytes > self.max:
            self._seal()
        width = dt.itemsize
        fd = self._spill_fd(width)
        try:
            pwrite_all(fd, data, self._spill_size[width])
        except OSError as e:
            raise os_error(self.out_dir, e) from None
        self._pending.append((Output(name, dt, tuple(array.shape)), self._spill_size[width]))
        self._spill_size[width] += data.nbytes
        self._names.add(name)
        self.records[name] = dict(record or {}, dtype=dt.name, shape=list(array.shape))

    def _seal(self) -> None:
        outs = sorted(self._pending, key=lambda p: (-p[0].dtype.itemsize, p[1]))
        pos = 0
        for o, _ in outs:
            o.offset = pos
            pos += o.nbytes
        header = render_header([o for o, _ in outs], self.metadata)
        path = os.path.join(self.out_dir, f".shard-{len(self._sealed):05d}.tmp")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                pwrite_all(fd, header, 0)
                dst = len(header)
                for w in _WIDTHS:
                    if self._spill_size[w]:
                        copy_range(self._spill[w], fd, 0, dst, self._spill_size[w])
                        dst += self._spill_size[w]
                        os.ftruncate(self._spill[w], 0)
                        self._spill_size[w] = 0
                os.fsync(fd)
                digest = file_digest(fd, dst)
            finally:
                os.close(fd)
        except OSError as e:
            raise os_error(path, e) from None
        self._sealed.append((path, [o for o, _ in outs], dst, digest))
        self._pending = []

    def close(self, before_index=None) -> list[dict]:
        """Finish the last shard, name every shard, write the manifest and then the index;
        ``before_index(results)`` is called just before the index is written (a model card goes there)."""
        if self._closed:
            return self.results
        if self._pending or not self._sealed:
            self._seal()
        n = len(self._sealed)
        weight_map, shards, total = {}, {}, 0
        try:
            for i, (tmp, outs, size, digest) in enumerate(self._sealed):
                name = shard_name(i, n)
                os.replace(tmp, os.path.join(self.out_dir, name))
                shards[name] = {"bytes": size, HASH: digest}
                for o in outs:
                    weight_map[o.name] = name
                    self.records[o.name]["shard"] = name
                    total += o.nbytes
            fsync_dir(self.out_dir)
        except OSError as e:
            raise os_error(self.out_dir, e) from None
        self._close_spill()
        from ...core.version import __version__

        manifest.write(
            self.out_dir,
            manifest.for_writer(version=__version__, extra=self.manifest_extra, records=self.records, shards=shards),
        )
        if before_index is not None:
            before_index([{"file": k, **v} for k, v in shards.items()])
        output_dir.write_index(self.out_dir, weight_map, total)
        self.nbytes = total
        self._closed = True
        self.results = [{"file": k, **v} for k, v in shards.items()]
        return self.results

    def _close_spill(self):
        for w, fd in self._spill.items():
            os.close(fd)
            try:
                os.unlink(os.path.join(self.out_dir, f".spill-{w}.tmp"))
            except OSError:
                pass
        self._spill = {}

    def abort(self) -> None:
        """Remove everything this writer created; no index is ever left behind."""
        self._close_spill()
        for tmp, *_ in self._sealed:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self._closed = True
