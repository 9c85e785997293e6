"""File primitives every writer uses: temp-then-rename, fsync, positional writes, kernel copies."""

from __future__ import annotations

import errno
import json
import os
import re
from typing import Any

from ...errors import Torch2MLXError

COPY_CHUNK = 64 * 1024 * 1024


def os_error(path: str, e: OSError) -> Torch2MLXError:
    if e.errno == errno.ENOSPC:
        return Torch2MLXError(f"{path}: no space left on device")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Torch2MLXError(f"{path}: cannot write ({e.strerror})")
    return Torch2MLXError(f"{path}: {e.strerror or e}")


def temp_name(final: str) -> str:
    d, base = os.path.split(final)
    return os.path.join(d, f".{base}.tmp")


def pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def copy_range(
    src_fd: int,
    dst_fd: int,
    src_off: int,
    dst_off: int,
    count: int,
    buf: bytearray | None = None,
    src_name: str = "source file",
) -> None:
    """Copy bytes file to file; the kernel does it when it can (no user-space buffer).

    ``src_name`` names the source in the error when it ends early (a checkpoint
    truncated while it is being converted)."""
    if hasattr(os, "copy_file_range"):
        try:
            while count > 0:
                n = os.copy_file_range(src_fd, dst_fd, min(count, COPY_CHUNK), src_off, dst_off)
                if n == 0:
                    raise Torch2MLXError(f"{src_name}: ended during a copy (truncated while converting?)")
                src_off, dst_off, count = src_off + n, dst_off + n, count - n
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                raise
    buf = buf if buf is not None else bytearray(min(count, 8 << 20) or 1)
    view = memoryview(buf)
    while count > 0:
        n = os.preadv(src_fd, [view[: min(count, len(view))]], src_off)
        if n == 0:
            raise Torch2MLXError(f"{src_name}: ended during a copy (truncated while converting?)")
        pwrite_all(dst_fd, view[:n], dst_off)
        src_off, dst_off, count = src_off + n, dst_off + n, count - n


MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def memory_backed(path: str, mounts: str = "/proc/self/mounts") -> bool:
    """Whether ``path`` lies on a filesystem held in memory (tmpfs, ramfs); False where that is unknown.

    There ``posix_fallocate`` zeroes every page up front, which the copy then overwrites: ~30% more CPU
    than the copy itself, for a reservation a free-space check gives as well."""
    try:
        with open(mounts, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return False
    real = os.path.realpath(path)
    best, fstype = "", ""
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[1])  # "\040" is a space
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype in MEMORY_FILESYSTEMS


def check_free_space(path: str, need: int) -> None:
    """Raise ENOSPC now when the filesystem of ``path`` has less than ``need`` bytes free."""
    st = os.statvfs(path)
    if st.f_bavail * st.f_frsize < need:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def dumps(obj, indent: int = 2) -> str:
    """JSON with one line per record below the second level.

    A manifest of 10,000 tensors stays readable (a tensor a line) and is written
    several times faster than fully indented JSON.
    """
    return "".join(_pieces(obj, indent, 0))


def _pieces(obj, indent: int, depth: int):
    if isinstance(obj, dict) and obj and depth < 2:
        pad = ",\n" + " " * (indent * (depth + 1))
        first = True
        for k, v in obj.items():
            head = ("{\n" + pad[2:]) if first else pad
            first = False
            if depth == 1 or not isinstance(v, dict) or not v:  # v on one line: one piece per record
                yield head + _ENCODE(k) + ": " + _ENCODE(v)
            else:
                yield head + _ENCODE(k) + ": "
                yield from _pieces(v, indent, depth + 1)
        yield "\n" + " " * (indent * depth) + "}"
    else:
        yield _ENCODE(obj)


# json.dumps with any non-default option builds a new encoder per call: a third of a
# 10,000-tensor manifest's time. One encoder, reused; and its C core called directly,
# as JSONEncoder.encode would, without the per-call set-up (100,000 records a manifest).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
try:  # no markers: what we write (manifests, indexes, configs read as JSON) holds no cycles
    _C_ENCODE = _make_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ": ", ", ", False, False, True
    )
except TypeError:  # no C accelerator (None), or another signature: the plain encoder
    _C_ENCODE = None


def _ENCODE(obj) -> str:
    if isinstance(obj, str):  # keys, file names: what JSONEncoder.encode does for a str
        return _encode_str(obj)
    if _C_ENCODE is None or isinstance(obj, float):  # floats: JSONEncoder spells nan/inf itself
        return _ENCODER.encode(obj)
    return "".join(_C_ENCODE(obj, 0))


_encode_str = json.encoder.encode_basestring


def _write_atomic(path: str, write) -> None:
    """``write(fd)`` into a temp file beside ``path``, fsync, rename: readers see the old file or the new one."""
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise os_error(path, e) from None


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to a temp file, fsync, rename: readers see the old file or the new one.

    Written piece by piece through a buffer: the text of a 100,000-tensor manifest is
    never held whole (it was the peak of such a conversion).
    """

    def write(fd: int) -> None:
        buf, pos, size = [], 0, 0
        for piece in _pieces(obj, 2, 0):
            buf.append(piece)
            size += len(piece)
            if size >= 1 << 20:
                data = "".join(buf).encode("utf-8")
                pwrite_all(fd, data, pos)
                pos, buf, size = pos + len(data), [], 0
        pwrite_all(fd, ("".join(buf) + "\n").encode("utf-8"), pos)

    _write_atomic(path, write)


def write_text_atomic(path: str, text: str) -> None:
    """UTF-8 text to a temp file, fsync, rename (as ``write_json_atomic``)."""
    _write_atomic(path, lambda fd: pwrite_all(fd, text.encode("utf-8"), 0))
