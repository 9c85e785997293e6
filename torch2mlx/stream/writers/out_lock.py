"""One conversion at a time per OUT: an advisory lock that ends with the process holding it.

``flock`` on ``OUT/.torch2mlx.lock`` is released by the kernel on any exit, a
crash or SIGKILL included, so a lock is never stale; the file holds the
holder's pid for the message. The holder removes the file last, while it
still holds the lock; a run that opened the file before the removal finds its
lock on a file that is no longer at that path and tries again.
"""

from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager

from ...errors import Torch2MLXError
from .files import os_error

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; runs are not serialized
    fcntl = None  # type: ignore[assignment]  # the module is optional; callers test for None

LOCK = ".torch2mlx.lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _holder(fd: int) -> str:
    # The holder writes its pid right after it takes the lock: wait a moment for it.
    for _ in range(50):
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if pid:
            return pid
        time.sleep(0.002)
    return "unknown"


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextmanager
def locked(out_dir: str):
    """Hold OUT for this run (creating OUT); a second run is refused at once, naming the holder's pid."""
    if fcntl is None:
        yield
        return
    path, fd = os.path.join(out_dir, LOCK), None
    created = not os.path.exists(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(fd)
                os.close(fd)
                raise Torch2MLXError(f"{out_dir}: another conversion (pid {pid}) is writing it") from None
            except OSError as e:
                if e.errno not in _NO_LOCKS:
                    raise
                # A filesystem without flock (some network mounts): runs there are not serialized.
                os.close(fd)
                fd = None
                _remove(path)
                break
            if _same_file(fd, path):
                break
            os.close(fd)  # locked a file its holder had just removed: take the current one
            fd = None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        if fd is not None:
            os.close(fd)
        raise os_error(out_dir, e) from None
    if fd is None:
        yield
        return
    try:
        yield
    finally:
        # Only our own file: once removed, the path may hold the next run's lock.
        if _same_file(fd, path):
            _remove(path)
        os.close(fd)
        if created:  # a run refused before writing leaves no empty OUT behind (rmdir fails unless empty)
            try:
                os.rmdir(out_dir)
            except OSError:
                pass


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
