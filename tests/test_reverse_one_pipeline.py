"""``torch2mlx.to_torch`` (in memory) and ``stream.to_torch`` (to disk) run one reverse plan.

torch is the oracle: the state dict that went in is what comes back, dtypes included; the in-memory
way back and the on-disk way back give the same tensors bit for bit.
"""

from __future__ import annotations

import torch
from conftest import SEED
from reverse_helpers import read_torch_output

import torch2mlx


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "fc.weight": torch.randn(5, 4, generator=g),
    }


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        bits = (lambda t: t.view(torch.uint8)) if a[k].dtype.itemsize == 1 else (lambda t: t)  # float8: by bits
        assert torch.equal(bits(a[k]), bits(b[k])), k


def test_in_memory_to_torch_restores_the_source_dtype_as_the_stream_does(tmp_path):
    sd = _state()
    res = torch2mlx.convert(sd, tmp_path / "mlx", dtype="float16")
    want = {k: v.half().float() for k, v in sd.items()}  # float16 widened back exactly
    from_dir = torch2mlx.to_torch(tmp_path / "mlx")
    from_memory = torch2mlx.to_torch(torch2mlx.load_converted(tmp_path / "mlx"), model=res)
    torch2mlx.stream.to_torch(tmp_path / "mlx", tmp_path / "back")
    on_disk = read_torch_output(tmp_path / "back", "safetensors")
    for got in (from_dir, from_memory, on_disk):
        _same(got, want)


def test_in_memory_to_torch_gives_float8_back_exactly(tmp_path):
    g = torch.Generator().manual_seed(SEED)
    sd = {"w": (torch.randn(8, 4, generator=g) * 4).to(torch.float8_e4m3fn)}
    torch.save(sd, tmp_path / "f8.pt")
    torch2mlx.convert(tmp_path / "f8.pt", tmp_path / "mlx")  # float8 travels as bfloat16
    got = torch2mlx.to_torch(tmp_path / "mlx")
    _same(got, sd)
