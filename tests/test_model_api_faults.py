"""A library call that fails leaves its target as it was, or incomplete and resumable with resume=True.

The failure is a full disk (``OSError(ENOSPC)`` from the real write of one shard);
torch's own tensors are the oracle for what a finished call wrote.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from helpers import INDEX, MANIFEST, check_converted, file_bytes, read_json
from torch import nn

import torch2mlx
import torch2mlx.stream.execute as execute
from torch2mlx.errors import Torch2MLXError
from torch2mlx.stream.writers import files

SHARD = "40KB"  # the model below: 8 shards of one 32 KiB weight (and its bias)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(64, 128 if i % 2 == 0 else 64) for i in range(8)]).eval()


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: file_bytes(d, p) for p in sorted(d.iterdir()) if p.is_file()}


def _disk_full_at(monkeypatch, name_part: str) -> None:
    real = execute.pwrite_all

    def pwrite_all(fd, data, offset):
        if name_part in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(execute, "pwrite_all", pwrite_all)


def _manifest_disk_full(monkeypatch, nth: int) -> None:
    """The ``nth`` manifest write (the one after the ``nth`` finished shard) meets a full disk."""
    real, seen = files.pwrite_all, [0]

    def pwrite_all(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("." + MANIFEST + ".tmp") and offset == 0:
            seen[0] += 1
            if seen[0] == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(files, "pwrite_all", pwrite_all)


def test_a_failed_call_into_a_new_directory_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _disk_full_at(monkeypatch, "model-00001-")
    with pytest.raises(Torch2MLXError, match=r"no space left on device \(no shard kept, .*out removed"):
        torch2mlx.convert(_model(0), out, max_shard_size=SHARD)
    assert not out.exists()


def test_a_failed_call_keeps_finished_shards_and_resume_finishes_them(tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    torch2mlx.convert(_model(0), ref, max_shard_size=SHARD)
    assert len(list(ref.glob("model-*"))) == 8
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        _manifest_disk_full(mp, 4)  # the 1st manifest write comes before any shard
        with pytest.raises(Torch2MLXError, match=r"\(2 of 8 shard\(s\) finished and kept in .*--resume"):
            torch2mlx.convert(_model(0), out, max_shard_size=SHARD, workers=1)
    assert not (out / INDEX).exists() and read_json(out / MANIFEST)["complete"] is False
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(Torch2MLXError, match="holds an interrupted run of this conversion: add --resume"):
        torch2mlx.convert(_model(0), out, max_shard_size=SHARD)
    torch2mlx.convert(_model(0), out, max_shard_size=SHARD, resume=True)
    assert _files(out) == _files(ref)
    check_converted(out, _model(0).state_dict())


def test_a_failed_overwrite_of_a_directory_keeps_the_old_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    torch2mlx.convert(_model(0), out, max_shard_size=SHARD)
    before = _files(out)
    _disk_full_at(monkeypatch, "model-00002-")
    with pytest.raises(Torch2MLXError, match="still holds the previous output, unchanged"):
        torch2mlx.convert(_model(1), out, max_shard_size=SHARD, overwrite=True)
    assert _files(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)
    check_converted(out, _model(0).state_dict())


def test_a_failed_call_keeps_the_old_single_file(tmp_path, monkeypatch):
    path = tmp_path / "weights.safetensors"
    torch2mlx.convert(_model(0), path)
    before = path.read_bytes()
    _disk_full_at(monkeypatch, "weights.safetensors")
    with pytest.raises(Torch2MLXError, match="no space left on device"):
        torch2mlx.convert(_model(1), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_resume_of_a_single_file_is_refused_not_ignored(tmp_path):
    with pytest.raises(Torch2MLXError, match="resume=True applies to a directory"):
        torch2mlx.convert(_model(0), tmp_path / "w.safetensors", resume=True)
    assert list(tmp_path.iterdir()) == []
