"""The library API for custom pipelines: open(...).entries / .tensors(), convert(hook=...), ShardWriter."""

from __future__ import annotations

import inspect

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import SEED
from helpers import (
    FLOAT8,
    INDEX,
    MANIFEST,
    RECORD_FIELDS,
    assert_no_index,
    assert_same,
    canon_mx,
    canon_torch,
    check_converted,
    check_manifest_shards,
    check_safetensors_layout,
    dtype_name,
    expected_output,
    read_json,
    read_output,
    torch_load,
)

import torch2mlx
import torch2mlx.stream as stream


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_open_entries_and_tensors(dtype_files, fmt):
    source = torch_load(dtype_files["zip"])
    ck = stream.open(dtype_files[fmt])
    assert [e.name for e in ck.entries] and {e.name for e in ck.entries} == set(source)
    for e in ck.entries:
        t = source[e.name]
        assert (e.dtype.name, tuple(e.shape)) == (dtype_name(t.dtype), tuple(t.shape)), e.name
    it = ck.tensors()
    assert inspect.isgenerator(it)
    seen = set()
    for name, arr in it:
        assert isinstance(arr, mx.array)
        # typed values, never raw bits: bit-identical to torch (NaN payloads too); dtypes MLX lacks
        # arrive as a conversion stores them (float8 -> bfloat16 exactly, complex128 -> complex64)
        t = source[name]
        want = (
            t.to(torch.bfloat16) if t.dtype in FLOAT8 else t.to(torch.complex64) if t.dtype == torch.complex128 else t
        )
        assert_same(canon_mx(arr), canon_torch(want), name, nan_bits=True)
        seen.add(name)
    assert seen == set(source)


def test_open_views_and_upcast(views_files):
    source = torch_load(views_files["legacy"])
    for name, arr in stream.open(views_files["legacy"]).tensors(upcast=True):
        t = source[name]
        exp = t.float() if t.dtype == torch.bfloat16 else t
        assert_same(canon_mx(arr), canon_torch(exp), name, nan_bits=True)


def test_open_upcasts_float8_exactly(dtype_files):
    source = torch_load(dtype_files["zip"])
    got = dict(stream.open(dtype_files["zip"]).tensors(upcast=True))
    for d in FLOAT8:
        name = f"sweep.{dtype_name(d)}"
        assert_same(canon_mx(got[name]), canon_torch(source[name].float()), name)


def test_open_directory_and_missing_path(tmp_path):
    from test_readers_dirs import _load_dir, _model_sd, _write_dir

    src = _write_dir(tmp_path / "src", _model_sd(), "zip")
    ck = stream.open(src)
    assert {e.name for e in ck.entries} == set(_load_dir(src))
    with pytest.raises(torch2mlx.Torch2MLXError, match="no such file"):
        stream.open(tmp_path / "nope")


def _records_are_complete(out, expected_sources: dict[str, torch.Tensor]):
    man = check_manifest_shards(out)
    wm = read_json(out / INDEX)["weight_map"]
    assert set(man["tensors"]) == set(wm) == set(expected_sources)
    for name, rec in man["tensors"].items():
        assert RECORD_FIELDS <= set(rec), f"{name}: manifest record lacks {RECORD_FIELDS - set(rec)}"
        t = expected_sources[name]
        assert rec["source_dtype"] == dtype_name(t.dtype) and rec["source_shape"] == list(t.shape), rec
        assert rec["shard"] == wm[name]
    return man


def test_transform_renames_drops_and_maps(views_files, out):
    source = torch_load(views_files["zip"])
    calls = []

    def transform(name, arr, dtype):
        calls.append((name, arr.dtype, dtype, arr.shape))
        if name.startswith("empty"):
            return None  # drop
        if name == "base":
            return [("base.a", arr), ("base.b", arr * 2, "float32")]  # one to many, mapped
        if name == "ints.permuted":
            return name, (arr + 1).astype(mx.int32)  # map to another dtype
        return "renamed." + name, arr  # rename, array untouched

    res = stream.convert(views_files["zip"], out, hook=transform, max_shard_size="300B")
    assert len(res.shards) > 1
    by_name = {c[0]: c for c in calls}
    assert set(by_name) == set(source)
    # the transform sees each tensor after the plan's rule and dtype: conv weight in MLX layout, bf16 typed
    assert by_name["conv.weight"][3] == tuple(source["conv.weight"].permute(0, 2, 3, 1).shape)
    assert by_name["bf16.t"][1:3] == (mx.bfloat16, "bfloat16")
    got = read_output(out)
    base = source["base"]
    expected = {"base.a": base, "base.b": base * 2, "ints.permuted": (source["ints.permuted"] + 1).to(torch.int32)}
    for name, t in source.items():
        if not name.startswith("empty") and name not in ("base", "ints.permuted"):
            rule = "conv2d" if name == "conv.weight" else "identity"
            expected["renamed." + name] = expected_output(t, rule)
    assert set(got) == set(expected)
    for name, t in expected.items():
        assert_same(got[name], canon_torch(t), name)
    sources = {k: source["base" if k.startswith("base.") else k.removeprefix("renamed.")] for k in expected}
    man = _records_are_complete(out, sources)
    assert man["tensors"]["renamed.conv.weight"]["rule"] == "conv2d"
    for f in set(read_json(out / INDEX)["weight_map"].values()):
        check_safetensors_layout(out / f)


def test_transform_with_dtype_option_and_identity(dtype_files, out, tmp_path):
    """An identity transform writes the same tensors as the plain conversion."""
    stream.convert(dtype_files["legacy"], out, dtype="bfloat16", hook=lambda n, a, d: (n, a))
    check_converted(out, torch_load(dtype_files["zip"]), dtype="bfloat16")
    plain = tmp_path / "plain"
    stream.convert(dtype_files["legacy"], plain, dtype="bfloat16")
    assert read_json(out / INDEX) == read_json(plain / INDEX)


@pytest.mark.parametrize("bad", [42, ("x",), (1, np.zeros(2)), [("ok", np.zeros(2)), "nope"]])
def test_transform_returning_nonsense_is_an_error(views_files, out, bad):
    with pytest.raises(torch2mlx.Torch2MLXError, match="hook returned"):
        stream.convert(views_files["zip"], out, hook=lambda n, a, d: bad)
    assert_no_index(out)


def test_shard_writer_fed_one_tensor_at_a_time(tmp_path):
    g = torch.Generator().manual_seed(SEED)
    tensors = {}
    out = tmp_path / "w"
    with stream.ShardWriter(out, max_shard_size="1KiB") as w:
        for i in range(30):
            # sizes unknown in advance, dtypes interleaved: the writer must still align every tensor
            n = 8 * (i + 1)
            t = [
                torch.randn(n, generator=g),
                torch.arange(n, dtype=torch.int64),
                torch.rand(n + 3, generator=g) > 0.5,
                torch.randn(2, n, generator=g).to(torch.bfloat16),
                torch.randn(i % 4, generator=g).half(),
                torch.tensor(float(i)),
            ][i % 6]
            name = f"t{i:02d}.{dtype_name(t.dtype)}"
            if t.dtype == torch.bfloat16:  # a torch tensor and an mx.array, as they come
                w.add(name, t if i % 4 == 3 else mx.array(t.float().numpy()).astype(mx.bfloat16))
            else:
                w.add(name, t.numpy())
            tensors[name] = t
        big_endian = np.arange(-5, 5, dtype=">i4").reshape(2, 5).T  # big-endian and non-contiguous
        w.add("big_endian", big_endian)
        tensors["big_endian"] = torch.arange(-5, 5, dtype=torch.int32).reshape(2, 5).t()
        with pytest.raises(torch2mlx.Torch2MLXError, match="already"):
            w.add("t00.float32", np.zeros(1, np.float32))
    files = sorted(set(read_json(out / INDEX)["weight_map"].values()))
    assert len(files) > 2 and files == [
        f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)
    ]
    for f in files:
        header = check_safetensors_layout(out / f)
        data = sum(r["data_offsets"][1] - r["data_offsets"][0] for k, r in header.items() if k != "__metadata__")
        assert data <= 1024 or len(header) == 2
    got = read_output(out)
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        assert_same(got[name], canon_torch(t), name, nan_bits=True)
    assert read_json(out / INDEX)["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )
    man = check_manifest_shards(out)
    assert {k: (r["dtype"], r["shape"]) for k, r in man["tensors"].items()} == {
        k: (dtype_name(t.dtype), list(t.shape)) for k, t in tensors.items()
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(files + [INDEX, MANIFEST])


def test_shard_writer_error_leaves_no_index(tmp_path):
    out = tmp_path / "w"
    with pytest.raises(ValueError):
        with stream.ShardWriter(out, max_shard_size="100B") as w:
            for i in range(10):
                w.add(f"t{i}", np.full(20, i, np.float32))
            raise ValueError("pipeline failed")
    assert_no_index(out)
    assert not list(out.iterdir())


def test_custom_pipeline_open_then_shard_writer(views_files, tmp_path):
    """open().tensors() into ShardWriter: the smallest custom pipeline keeps every tensor intact."""
    source = torch_load(views_files["zip"])
    out = tmp_path / "w"
    ck = stream.open(views_files["zip"])
    with stream.ShardWriter(out) as w:
        for name, arr in ck.tensors():
            w.add(name, arr)
    got = read_output(out)
    for name, t in source.items():
        assert_same(got[name], canon_torch(t), name, nan_bits=True)
