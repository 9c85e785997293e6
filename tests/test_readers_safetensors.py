"""safetensors sources: every dtype the format has, odd names, and header validation before any data is read."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from conftest import SEED, all_dtypes_state_dict
from helpers import check_converted, convert
from safetensors.torch import load_file, save_file

import torch2mlx


def write_raw(path, header: dict, data: bytes, pad: bool = True, length: int | None = None):
    """A safetensors file from a hand-written header (for files the official writer refuses to make)."""
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize("dtype", ["keep", "bfloat16", "float16"])
def test_every_safetensors_dtype(tmp_path, out, dtype):
    sd = {k: v.contiguous() for k, v in all_dtypes_state_dict().items() if v.dtype != torch.complex128}
    src = tmp_path / "all.safetensors"
    save_file(sd, src, metadata={"format": "pt", "note": "source metadata is not copied"})
    convert(src, out, dtype=dtype)
    check_converted(out, load_file(src), dtype=dtype)


def test_odd_names_scalars_and_empty_tensors(tmp_path, out):
    g = torch.Generator().manual_seed(SEED)
    sd = {
        "ünïcode.wéight": torch.randn(3, generator=g),
        "with space/and slash": torch.arange(4),
        "a" * 300: torch.ones(2, dtype=torch.float16),
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "empty": torch.empty(0, 4),
        "empty.conv.weight": torch.empty(0, 2, 3, 3),
        "z.last": torch.tensor(True),
    }
    src = tmp_path / "odd.safetensors"
    save_file(sd, src)
    convert(src, out)
    check_converted(out, load_file(src))


def test_hand_written_header_without_metadata_and_unsorted_offsets(tmp_path, out):
    """Records in any order in the JSON, no __metadata__: only the offsets matter."""
    a = torch.arange(6, dtype=torch.int16)
    b = torch.tensor([1.5, -2.0], dtype=torch.float32)
    header = {
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
        "a": {"dtype": "I16", "shape": [2, 3], "data_offsets": [0, 12]},
    }
    src = write_raw(tmp_path / "hand.safetensors", header, a.numpy().tobytes() + b.numpy().tobytes())
    convert(src, out)
    check_converted(out, {"a": a.reshape(2, 3), "b": b})


GOOD = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
BROKEN = {
    "header length past the end": (GOOD, b"\0" * 8, {"length": 10**6}, "past the end"),
    "data truncated": (GOOD, b"\0" * 5, {}, "past the end"),
    "trailing bytes": (GOOD, b"\0" * 12, {}, "trailing"),
    "hole": (
        {
            "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "y": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
        },
        b"\0" * 12,
        {},
        "hole",
    ),
    "overlap": (
        {
            "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
        b"\0" * 8,
        {},
        "overlap",
    ),
    "size mismatch": ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, {}, "needs 12 bytes"),
    "unknown dtype": ({"x": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16, {}, "unknown dtype"),
    "negative dim": ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}}, b"", {}, "shape"),
    "extra field": ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "y": 1}}, b"\0" * 8, {}, "exactly"),
    "metadata not strings": ({**GOOD, "__metadata__": {"n": 1}}, b"\0" * 8, {}, "__metadata__"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_invalid_files_are_rejected_before_any_output(tmp_path, out, case):
    header, data, kw, message = BROKEN[case]
    src = write_raw(tmp_path / "bad.safetensors", header, data, **kw)
    with pytest.raises(torch2mlx.CheckpointError, match=message) as err:
        convert(src, out)
    assert str(src) in str(err.value)
    assert not out.exists()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x05\0\0",
        struct.pack("<Q", 4) + b"[1] ",
        struct.pack("<Q", 8) + b"{bad  }",
        struct.pack("<Q", 16) + b'{"a":1, "a":2}  ',
        struct.pack("<Q", 4) + b"\xff\xfe{}",
    ],
)
def test_garbage_headers(tmp_path, out, raw):
    src = tmp_path / "garbage.safetensors"
    src.write_bytes(raw)
    with pytest.raises(torch2mlx.CheckpointError) as err:
        convert(src, out)
    assert str(src) in str(err.value)
