"""Reading tensor bytes: positional reads of bounded blocks, never a whole file.

A block is a slice ``[start, stop)`` of a tensor along one axis, returned as a
C-contiguous numpy array in the dtype's carrier (raw bits for bfloat16 and
float8), little-endian. Contiguous row slices are one ``preadv`` each;
strided views map only the storage region they touch and unmap it right after,
so resident memory is bounded by the block, not by the file.
"""

from __future__ import annotations

import mmap
import os
import threading

import numpy as np

from ..core.entry import TensorEntry
from ..errors import CheckpointError
from . import remote

_PAGE = mmap.ALLOCATIONGRANULARITY


def pread_into(fd: int, buf, offset: int, path: str = "?") -> None:
    """Fill ``buf`` from ``fd`` at ``offset``; a short file is a truncated checkpoint."""
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise CheckpointError(path, f"file ends at byte {offset + done}, inside tensor data (truncated?)")
        done += n


class DataReader:
    """Open-file cache plus block reads; safe to share between threads (reads are positional)."""

    def __init__(self, drop_cache: bool = False):
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self.drop_cache = drop_cache

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    try:
                        fd = os.open(path, os.O_RDONLY)
                    except OSError as e:
                        raise CheckpointError(path, f"cannot open: {e.strerror}") from None
                    if hasattr(os, "posix_fadvise"):
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                    self._fds[path] = fd
        return fd

    @staticmethod
    def remote_file(path: str) -> remote.RemoteFile | None:
        """The remote file ``path`` names (an ``hf://`` or other URL source), None for a local file."""
        return remote.lookup_file(path) if "://" in path else None

    def read_into(self, path: str, buf, offset: int) -> None:
        """Fill ``buf`` with bytes of ``path`` from ``offset``: ``preadv`` locally, a range request remotely."""
        rf = self.remote_file(path)
        if rf is not None:
            remote.read_into(rf, buf, offset)
            return
        pread_into(self.fd(path), buf, offset, path)
        self.done_with_range(path, offset, memoryview(buf).nbytes)

    def done_with_range(self, path: str, offset: int, length: int) -> None:
        """Let the kernel drop source pages we will not read again (keeps the page cache for the user)."""
        if self.drop_cache and hasattr(os, "posix_fadvise") and length > 0 and self.remote_file(path) is None:
            os.posix_fadvise(self.fd(path), offset, length, os.POSIX_FADV_DONTNEED)

    def read_rows(self, entry: TensorEntry, start: int, stop: int, axis: int = 0) -> np.ndarray:
        """Elements ``[start, stop)`` along ``axis`` as a C-contiguous little-endian array."""
        carrier = entry.dtype.np_dtype
        shape = list(entry.shape) or [1]
        sub = list(shape)
        sub[axis] = stop - start
        if entry.loader is not None:
            out = np.ascontiguousarray(entry.loader.read(axis, start, stop)).reshape(sub)
        elif entry.array is not None:
            idx = [slice(None)] * len(shape)
            idx[axis] = slice(start, stop)
            out = np.ascontiguousarray(entry.array.reshape(shape)[tuple(idx)])
        elif entry.contiguous and axis == 0:
            row = entry.dtype.itemsize
            for n in shape[1:]:
                row *= n
            out = np.empty(sub, dtype=carrier)
            if out.nbytes:
                assert entry.path is not None  # neither loaded nor in memory: in a file
                self.read_into(entry.path, out, entry.offset + start * row)
        else:
            out = self._strided(entry, start, stop, axis, shape, carrier)
        if entry.byteorder == "big" and entry.dtype.itemsize > 1:
            out.byteswap(inplace=True)
        return out if entry.shape else out.reshape(())

    def _strided(self, entry, start, stop, axis, shape, carrier) -> np.ndarray:
        item = entry.dtype.itemsize
        strides = list(entry.strides) if entry.strides is not None else None
        if strides is None:
            strides, step = [0] * len(shape), 1
            for i in range(len(shape) - 1, -1, -1):
                strides[i] = step
                step *= shape[i]
        sub = list(shape)
        sub[axis] = stop - start
        if 0 in sub:
            return np.empty(sub, dtype=carrier)
        first = entry.offset + start * strides[axis] * item
        last = first + (sum((n - 1) * s for n, s in zip(sub, strides, strict=True)) + 1) * item
        rf = self.remote_file(entry.path)
        if rf is not None:  # the storage region the view touches, in one request
            if last > rf.size:
                raise CheckpointError(entry.path, f"tensor {entry.name!r} reaches past the end of the file")
            flat = np.empty((last - first) // item, dtype=carrier)
            remote.read_into(rf, flat, first)
            view = np.lib.stride_tricks.as_strided(
                flat, shape=sub, strides=[s * item for s in strides], writeable=False
            )
            return np.ascontiguousarray(view)
        base = first - first % _PAGE
        fd = self.fd(entry.path)
        if last > os.fstat(fd).st_size:
            raise CheckpointError(entry.path, f"tensor {entry.name!r} reaches past the end of the file (truncated?)")
        mm = mmap.mmap(fd, last - base, access=mmap.ACCESS_READ, offset=base)
        try:
            flat = np.frombuffer(mm, dtype=carrier, offset=first - base, count=(last - first) // item)
            view = np.lib.stride_tricks.as_strided(
                flat, shape=sub, strides=[s * item for s in strides], writeable=False
            )
            out = np.ascontiguousarray(view)
            del view, flat
        finally:
            try:
                mm.close()
            except BufferError:  # a lingering view; the mapping goes when it is collected
                pass
        return out

    def read_flat(self, entry: TensorEntry, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` of a contiguous tensor in memory order."""
        if entry.array is not None:
            return np.ascontiguousarray(entry.array.reshape(-1)[start:stop])
        if entry.loader is not None:  # a chunked store: the rows that hold the range
            row = max(1, entry.numel // entry.shape[0]) if entry.shape and entry.shape[0] else 1
            first = start // row
            rows = self.read_rows(entry, first, -(-stop // row)) if entry.shape else self.read_all(entry)
            return np.ascontiguousarray(rows.reshape(-1)[start - first * row : stop - first * row])
        out = np.empty(stop - start, dtype=entry.dtype.np_dtype)
        if out.nbytes:
            assert entry.path is not None  # neither loaded nor in memory: in a file
            self.read_into(entry.path, out, entry.offset + start * entry.dtype.itemsize)
        if entry.byteorder == "big" and entry.dtype.itemsize > 1:
            out.byteswap(inplace=True)
        return out

    def read_all(self, entry: TensorEntry) -> np.ndarray:
        if not entry.shape:
            return self.read_rows(entry, 0, 1)
        return self.read_rows(entry, 0, entry.shape[0])
