"""A full disk or an unwritable OUT: one clean ``error:`` line, temporaries removed, nothing that looks complete.

Real filesystems where this machine allows mounting a small tmpfs (root in a
container that permits it); injected OSErrors everywhere, so the same paths
are exercised on any machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys

import numpy as np
import pytest
from hostile_runner import run
from safetensors.numpy import save_file

INDEX = "model.safetensors.index.json"


def checkpoint(path, tensors: int = 3, mib: int = 1) -> str:
    rng = np.random.default_rng(0)
    save_file(
        {f"layer{k}.weight": rng.standard_normal(mib << 18).astype(np.float32) for k in range(tensors)}, str(path)
    )
    return str(path)


def assert_nothing_complete(out, err: str, *mentions: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for m in mentions:
        assert m in err, err
    if os.path.isdir(out):
        left = sorted(os.listdir(out))
        assert INDEX not in left, left
        assert not [n for n in left if n.endswith(".tmp") or n.startswith("model")], f"left behind: {left}"


@contextlib.contextmanager
def tmpfs(path, options: str):
    os.makedirs(path)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected-error tests below cover this")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch2mlx", *map(str, argv)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


@pytest.mark.slow
def test_disk_full_on_a_real_filesystem(tmp_path):
    src = checkpoint(tmp_path / "model.safetensors")
    with tmpfs(tmp_path / "small", "size=1m") as small:
        out = small / "out"
        proc = cli("stream", src, out, "-q", "--max-shard-size", "1MiB")
        assert proc.returncode == 1
        assert_nothing_complete(out, proc.stderr, "no space left on device")


@pytest.mark.slow
def test_read_only_output_on_a_real_filesystem(tmp_path):
    src = checkpoint(tmp_path / "model.safetensors", tensors=1)
    with tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        proc = cli("stream", src, ro / "out", "-q")
        assert proc.returncode == 1
        assert_nothing_complete(ro / "out", proc.stderr, "cannot write", "Read-only file system")


def _raise(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("dtype", ["keep", "float16"])  # kernel copies, and computed blocks
def test_disk_full_while_writing(tmp_path, monkeypatch, dtype):
    """The filesystem cannot reserve space up front, so the disk fills in the middle of the data."""
    src = checkpoint(tmp_path / "model.safetensors")
    monkeypatch.setattr(os, "posix_fallocate", _raise(errno.EOPNOTSUPP), raising=False)  # absent on macOS
    real_pwrite, written = os.pwrite, []

    def pwrite(fd, data, offset):
        if sum(written) > 1 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "copy_file_range", _raise(errno.ENOSPC), raising=False)
    res = run(["stream", src, str(tmp_path / "out"), "-q", "--dtype", dtype, "--max-shard-size", "1MiB"])
    assert res["returncode"] == 1
    assert_nothing_complete(tmp_path / "out", res["stderr"], "no space left on device")


def test_disk_full_when_writing_the_index(tmp_path, monkeypatch):
    """Every shard is in place, then the index cannot be written: no index, and its temporary is removed."""
    src = checkpoint(tmp_path / "model.safetensors", tensors=2)
    real_open, real_pwrite, index_fds = os.open, os.pwrite, set()

    def tracking_open(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if str(path).endswith(INDEX + ".tmp"):
            index_fds.add(fd)
        return fd

    def pwrite(fd, data, offset):
        if fd in index_fds:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "pwrite", pwrite)
    res = run(["stream", src, str(tmp_path / "out"), "-q"])
    assert index_fds, "the index was never written"
    assert res["returncode"] == 1 and "no space left on device" in res["stderr"], res
    left = os.listdir(tmp_path / "out")
    assert INDEX not in left and not [n for n in left if n.endswith(".tmp")], left


def test_output_directory_not_writable(tmp_path, monkeypatch):
    """Root ignores file modes, so the refusal a read-only or foreign directory gives is injected."""
    src = checkpoint(tmp_path / "model.safetensors", tensors=1)
    out = tmp_path / "out"
    real_open = os.open

    def guarded(path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)
    res = run(["stream", src, str(out), "-q"])
    assert res["returncode"] == 1
    assert_nothing_complete(out, res["stderr"], str(out), "cannot write (Permission denied)")


def test_output_path_is_a_file(tmp_path):
    src = checkpoint(tmp_path / "model.safetensors", tensors=1)
    (tmp_path / "out").write_text("not a directory")
    res = run(["stream", src, str(tmp_path / "out"), "-q"])
    assert res["returncode"] == 1
    assert_nothing_complete(tmp_path / "out", res["stderr"], "exists and is not a directory")
