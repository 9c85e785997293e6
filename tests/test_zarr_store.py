"""zarr stores as sink (``--format zarr``) and as source (v2 and v3), read back with zarr itself.

torch is the oracle for the converted values, zarr itself reads the stores."""
import numcodecs
import numpy as np
import pytest
import torch
import zarr

from conftest import all_dtypes_state_dict
from helpers import (MANIFEST, assert_same, canon_bits, canon_torch, convert, dtype_name, expected_output,
                     inferred_rule, read_json, read_output)
from reverse_helpers import read_torch_output


def _zarr_array(store, name: str):
    return zarr.open_group(store, mode="r")[name.replace(".", "/")]


def _canon_zarr(arr) -> object:
    """A zarr array as (dtype, bits): bfloat16 is stored as uint16 with the attribute torch2mlx_dtype."""
    return canon_bits(arr.attrs.get("torch2mlx_dtype") or str(arr.dtype), np.asarray(arr[...]))


@pytest.mark.parametrize("compressor", ["none", "zstd", "blosc", "gzip"])
def test_sink_writes_one_chunked_array_per_tensor(dtype_files, tmp_path, compressor):
    sd = all_dtypes_state_dict()
    res = convert(dtype_files["zip"], tmp_path / "z", use_model=False, format="zarr", zarr_compressor=compressor)
    assert res.format == "zarr"
    root = zarr.open_group(tmp_path / "z", mode="r")
    assert root.metadata.zarr_format == 3 and root.attrs["format"] == "mlx"
    man = read_json(tmp_path / "z" / MANIFEST)
    assert man["format"] == "zarr" and man["compressor"] == compressor
    for name, t in sd.items():
        arr = _zarr_array(tmp_path / "z", name)       # nested groups: conv.float32.weight -> conv/float32/weight
        want = expected_output(t, inferred_rule(name, t))
        assert_same(_canon_zarr(arr), canon_torch(want), name)
        assert arr.chunks[1:] == arr.shape[1:], name  # chunks cut along the rows the stream writes
        assert bool(arr.compressors) == (compressor != "none"), (name, arr.compressors)
        assert man["tensors"][name]["array"] == name.replace(".", "/")
    bf16 = _zarr_array(tmp_path / "z", "sweep.bfloat16")
    assert bf16.dtype == np.uint16 and bf16.attrs["torch2mlx_dtype"] == "bfloat16"


def test_sink_then_source_then_back_to_torch(dtype_files, tmp_path):
    sd = all_dtypes_state_dict()
    convert(dtype_files["zip"], tmp_path / "direct", use_model=False)
    convert(dtype_files["zip"], tmp_path / "z", use_model=False, format="zarr", zarr_compressor="zstd")
    # the store reads as MLX layout: nothing is transposed a second time
    res = convert(tmp_path / "z", tmp_path / "st", use_model=False)
    assert res.plan.rules_by_source() == {"default": len(sd)}
    direct, again = read_output(tmp_path / "direct"), read_output(tmp_path / "st")
    assert set(direct) == set(again)
    for name in direct:
        assert_same(again[name], direct[name], name, nan_bits=True)
    # and the store's manifest takes it back to torch
    convert(tmp_path / "z", tmp_path / "back", to="torch", format="bin")
    back = read_torch_output(tmp_path / "back", "bin")
    for name, t in sd.items():
        if t.dtype in (torch.float64, torch.complex128):
            continue   # rounded on the way in (test_reverse_stream states those)
        want = t.to(torch.bfloat16).to(t.dtype) if dtype_name(t.dtype).startswith("float8") else t
        assert_same(canon_torch(back[name]), canon_torch(want), name)


def test_quantized_store_dequantizes_through_zarr_reads(tmp_path):
    import mlx.core as mx
    sd = {"fc.weight": torch.randn(40, 128).to(torch.bfloat16), "fc.bias": torch.randn(40)}
    torch.save(sd, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "z", use_model=False, format="zarr", q_bits=4)
    convert(tmp_path / "m.pt", tmp_path / "st", use_model=False, q_bits=4)
    w = mx.load(str(tmp_path / "st" / "model.safetensors"))
    want = mx.dequantize(w["fc.weight"], w["fc.scales"], w["fc.biases"], group_size=64, bits=4)
    convert(tmp_path / "z", tmp_path / "back", to="torch")
    got = read_torch_output(tmp_path / "back")
    assert torch.equal(got["fc.weight"].view(torch.int16), torch.from_numpy(np.array(want.view(mx.int16))))
    assert torch.equal(got["fc.bias"], sd["fc.bias"])


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("compressed", [False, True])
def test_source_stores_v2_and_v3_nested_chunked(tmp_path, zarr_format, compressed, monkeypatch):
    g = np.random.default_rng(zarr_format)
    root = zarr.open_group(tmp_path / "s", mode="w", zarr_format=zarr_format)
    codec = (numcodecs.Zstd(level=1) if zarr_format == 2 else zarr.codecs.ZstdCodec(level=1)) if compressed else None
    want = {"model.layers.0.attn.weight": g.standard_normal((10, 7)).astype(np.float32),
            "model.layers.1.norm.bias": g.standard_normal(13).astype(np.float16),
            "model.embed.ids": np.arange(24, dtype=np.int64).reshape(4, 6),
            "top": np.array(2.5, dtype=np.float64)}
    for name, a in want.items():
        arr = root.create_array(name.replace(".", "/"), shape=a.shape, dtype=a.dtype,
                                chunks=tuple(max(1, n // 3) for n in a.shape) or "auto",
                                compressors=codec if codec is not None else None)
        arr[...] = a
        assert bool(arr.compressors) == compressed
    bits = (g.standard_normal((5, 4)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    bf = root.create_array("model/bf16", shape=bits.shape, dtype=np.uint16, chunks=(2, 4), compressors=codec)
    bf[...] = bits
    bf.attrs["torch2mlx_dtype"] = "bfloat16"
    from torch2mlx.stream import execute
    real = execute.plan_tasks
    monkeypatch.setattr(execute, "plan_tasks", lambda op, chunk: real(op, 64))   # blocks cut across zarr chunks
    res = convert(tmp_path / "s", tmp_path / "out", use_model=False)
    assert res.checkpoint.format == "zarr"
    got = read_output(tmp_path / "out")
    assert set(got) == set(want) | {"model.bf16"}
    for name, a in want.items():
        exp = a.astype(np.float32) if a.dtype == np.float64 else a   # float64 is stored as MLX's float32
        assert_same(got[name], canon_bits(str(exp.dtype), exp), name)
    assert_same(got["model.bf16"], canon_bits("bfloat16", bits), "model.bf16")


def test_a_store_that_is_not_zarr_is_one_error(tmp_path):
    from helpers import assert_one_error, run_main
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "zarr.json").write_text("{not json")
    assert_one_error(run_main("stream", tmp_path / "s", tmp_path / "o"), "zarr")
