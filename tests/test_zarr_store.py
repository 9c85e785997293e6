"""zarr stores as sink (``--format zarr``) and as source (v2 and v3), read back with zarr itself.

torch is the oracle for the converted values, zarr itself reads the stores."""

import numcodecs
import numpy as np
import pytest
import torch
import zarr
from conftest import all_dtypes_state_dict
from helpers import (
    MANIFEST,
    assert_same,
    canon_bits,
    canon_torch,
    convert,
    dtype_name,
    expected_output,
    inferred_rule,
    read_json,
    read_output,
    to_torch,
)
from reverse_helpers import read_torch_output


def _zarr_array(store, name: str):
    return zarr.open_group(store, mode="r")[name.replace(".", "/")]


def _canon_zarr(arr) -> object:
    """A zarr array as (dtype, bits): bfloat16 is stored as uint16 with the attribute torch2mlx_dtype."""
    return canon_bits(arr.attrs.get("torch2mlx_dtype") or str(arr.dtype), np.asarray(arr[...]))


@pytest.mark.parametrize("compressor", ["none", "zstd", "blosc", "gzip"])
def test_sink_writes_one_chunked_array_per_tensor(dtype_files, tmp_path, compressor):
    sd = all_dtypes_state_dict()
    res = convert(dtype_files["zip"], tmp_path / "z", model=False, format="zarr", zarr_compressor=compressor)
    assert res.format == "zarr"
    root = zarr.open_group(tmp_path / "z", mode="r")
    assert root.metadata.zarr_format == 3 and root.attrs["format"] == "mlx"
    man = read_json(tmp_path / "z" / MANIFEST)
    assert man["format"] == "zarr" and man["compressor"] == compressor
    for name, t in sd.items():
        arr = _zarr_array(tmp_path / "z", name)  # nested groups: conv.float32.weight -> conv/float32/weight
        want = expected_output(t, inferred_rule(name, t))
        assert_same(_canon_zarr(arr), canon_torch(want), name)
        assert arr.chunks[1:] == arr.shape[1:], name  # chunks cut along the rows the stream writes
        assert bool(arr.compressors) == (compressor != "none"), (name, arr.compressors)
        assert man["tensors"][name]["array"] == name.replace(".", "/")
    bf16 = _zarr_array(tmp_path / "z", "sweep.bfloat16")
    assert bf16.dtype == np.uint16 and bf16.attrs["torch2mlx_dtype"] == "bfloat16"


def test_sink_then_source_then_back_to_torch(dtype_files, tmp_path):
    sd = all_dtypes_state_dict()
    convert(dtype_files["zip"], tmp_path / "direct", model=False)
    convert(dtype_files["zip"], tmp_path / "z", model=False, format="zarr", zarr_compressor="zstd")
    # the store reads as MLX layout: nothing is transposed a second time
    res = convert(tmp_path / "z", tmp_path / "st", model=False)
    assert res.plan.rules_by_source() == {"default": len(sd)}
    direct, again = read_output(tmp_path / "direct"), read_output(tmp_path / "st")
    assert set(direct) == set(again)
    for name in direct:
        assert_same(again[name], direct[name], name, nan_bits=True)
    # and the store's manifest takes it back to torch
    to_torch(tmp_path / "z", tmp_path / "back", format="bin")
    back = read_torch_output(tmp_path / "back", "bin")
    for name, t in sd.items():
        if t.dtype in (torch.float64, torch.complex128):
            continue  # rounded on the way in (test_reverse_stream states those)
        want = t.to(torch.bfloat16).to(t.dtype) if dtype_name(t.dtype).startswith("float8") else t
        assert_same(canon_torch(back[name]), canon_torch(want), name)


def test_quantized_store_dequantizes_through_zarr_reads(tmp_path):
    import mlx.core as mx

    sd = {"fc.weight": torch.randn(40, 128).to(torch.bfloat16), "fc.bias": torch.randn(40)}
    torch.save(sd, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "z", model=False, format="zarr", q_bits=4)
    convert(tmp_path / "m.pt", tmp_path / "st", model=False, q_bits=4)
    w = mx.load(str(tmp_path / "st" / "model.safetensors"))
    want = mx.dequantize(w["fc.weight"], w["fc.scales"], w["fc.biases"], group_size=64, bits=4)
    to_torch(tmp_path / "z", tmp_path / "back")
    got = read_torch_output(tmp_path / "back")
    assert torch.equal(got["fc.weight"].view(torch.int16), torch.from_numpy(np.array(want.view(mx.int16))))
    assert torch.equal(got["fc.bias"], sd["fc.bias"])


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("compressed", [False, True])
def test_source_stores_v2_and_v3_nested_chunked(tmp_path, zarr_format, compressed, monkeypatch):
    g = np.random.default_rng(zarr_format)
    root = zarr.open_group(tmp_path / "s", mode="w", zarr_format=zarr_format)
    codec = (numcodecs.Zstd(level=1) if zarr_format == 2 else zarr.codecs.ZstdCodec(level=1)) if compressed else None
    want = {
        "model.layers.0.attn.weight": g.standard_normal((10, 7)).astype(np.float32),
        "model.layers.1.norm.bias": g.standard_normal(13).astype(np.float16),
        "model.embed.ids": np.arange(24, dtype=np.int64).reshape(4, 6),
        "top": np.array(2.5, dtype=np.float64),
    }
    for name, a in want.items():
        arr = root.create_array(
            name.replace(".", "/"),
            shape=a.shape,
            dtype=a.dtype,
            chunks=tuple(max(1, n // 3) for n in a.shape) or "auto",
            compressors=codec if codec is not None else None,
        )
        arr[...] = a
        assert bool(arr.compressors) == compressed
    bits = (g.standard_normal((5, 4)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    bf = root.create_array("model/bf16", shape=bits.shape, dtype=np.uint16, chunks=(2, 4), compressors=codec)
    bf[...] = bits
    bf.attrs["torch2mlx_dtype"] = "bfloat16"
    from torch2mlx.stream import execute

    real = execute.plan_tasks
    monkeypatch.setattr(execute, "plan_tasks", lambda op, chunk: real(op, 64))  # blocks cut across zarr chunks
    res = convert(tmp_path / "s", tmp_path / "out", model=False)
    assert res.checkpoint.format == "zarr"
    got = read_output(tmp_path / "out")
    assert set(got) == set(want) | {"model.bf16"}
    for name, a in want.items():
        exp = a.astype(np.float32) if a.dtype == np.float64 else a  # float64 is stored as MLX's float32
        assert_same(got[name], canon_bits(str(exp.dtype), exp), name)
    assert_same(got["model.bf16"], canon_bits("bfloat16", bits), "model.bf16")


def test_a_store_that_is_not_zarr_is_one_error(tmp_path):
    from helpers import assert_one_error, run_main

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "zarr.json").write_text("{not json")
    assert_one_error(run_main("stream", tmp_path / "s", tmp_path / "o"), "zarr")


# ---------------------------------------------------------------- faults (issue 25 item 6)


def _store_names(store) -> dict:
    """name -> array as our reader decodes the store (the way back the user has)."""
    from torch2mlx.formats import zarr_store

    return {e.name: e for e in zarr_store.read_entries(str(store))[0]}


def test_names_that_would_share_a_path_get_their_own_arrays(tmp_path):
    """x.y and x/y, ../e and e, a..b: every name is escaped reversibly, nothing overwrites anything."""
    from reverse_helpers import read_torch_output

    g = torch.Generator().manual_seed(0)
    sd = {n: torch.randn(3, 2, generator=g) for n in ("x.y", "x/y", "../e", "e", "a..b", "__init__", "ü.%41")}
    torch.save(sd, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "z", model=False, format="zarr")
    assert set(_store_names(tmp_path / "z")) == set(sd)
    arrays = {n: r["array"] for n, r in read_json(tmp_path / "z" / MANIFEST)["tensors"].items()}
    assert len(set(arrays.values())) == len(sd)  # the manifest points at each one's own array
    for n, path in arrays.items():
        assert_same(_canon_zarr(zarr.open_group(tmp_path / "z", mode="r")[path]), canon_torch(sd[n]), n)
    to_torch(tmp_path / "z", tmp_path / "back")  # through the store, back to torch
    back = read_torch_output(tmp_path / "back")
    assert set(back) == set(sd)
    for n, t in sd.items():
        assert_same(canon_torch(back[n]), canon_torch(t), n)
    assert not any(p.name in ("..", "") for p in (tmp_path / "z").rglob("*"))


@pytest.mark.parametrize(
    "names, says",
    [
        (("a", "a.b"), "needs a group"),
        (("blk.Norm", "blk.norm"), "differ only in case"),
        (("w" * 1000,), "file-name limit"),
    ],
)
def test_names_no_store_can_hold_apart_are_one_error_before_anything_is_written(tmp_path, names, says):
    from helpers import assert_one_error, run_main

    torch.save({n: torch.ones(2) for n in names}, tmp_path / "m.pt")
    assert_one_error(run_main("stream", tmp_path / "m.pt", tmp_path / "z", "--format", "zarr", "--no-model"), says)
    assert not (tmp_path / "z").exists()


def test_a_1000_character_name_in_parts_works(tmp_path):
    name = ".".join(["p" * 99] * 10)
    assert len(name) == 999
    t = torch.randn(4, 3)
    torch.save({name: t}, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "z", model=False, format="zarr")
    got = _store_names(tmp_path / "z")
    assert list(got) == [name]
    assert_same(_canon_zarr(zarr.open_group(tmp_path / "z", mode="r")["/".join(["p" * 99] * 10)]), canon_torch(t))


def _enospc_after(monkeypatch, n_ok: int):
    """The n_ok-th zarr chunk write onwards fails with ENOSPC, as on a full disk."""
    import errno
    import os

    from zarr.storage import _local

    real, count = _local._put, [0]

    def put(path, value, exclusive=False):
        if "/c/" in str(path) or str(path).endswith("/c"):
            count[0] += 1
            if count[0] > n_ok:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, value, exclusive)

    monkeypatch.setattr(_local, "_put", put)
    return count


def test_enospc_at_a_chunk_is_one_error_and_the_store_reads_back_as_incomplete(tmp_path, monkeypatch):
    from helpers import assert_one_error, run_main

    g = torch.Generator().manual_seed(1)
    sd = {f"layer{i}.weight": torch.randn(64, 32, generator=g) for i in range(6)}
    torch.save(sd, tmp_path / "m.pt")
    count = _enospc_after(monkeypatch, 3)
    err = assert_one_error(
        run_main("stream", tmp_path / "m.pt", tmp_path / "z", "--format", "zarr", "--no-model"),
        "no space left on device",
        "removed",
    )
    assert count[0] > 3
    assert not (tmp_path / "z").exists()  # OUT as it was before the run
    monkeypatch.undo()
    # reading it back refuses: no zero-filled tensors from missing chunks
    assert_one_error(run_main("stream", tmp_path / "z", tmp_path / "st", "--no-model"), "no such file")
    assert not (tmp_path / "st").exists() or not any((tmp_path / "st").iterdir())
    assert "Traceback" not in err


def test_a_store_killed_mid_run_is_marked_incomplete(tmp_path, monkeypatch):
    """No manifest yet, no finish: as after SIGKILL. The mark was written first, so reading refuses."""
    from helpers import assert_one_error, run_main

    from torch2mlx.stream.writers import zarr_store

    torch.save({"a.weight": torch.randn(8, 4)}, tmp_path / "m.pt")
    from torch2mlx.stream.writers.target import Target

    monkeypatch.setattr(zarr_store, "finish", lambda out, m: (_ for _ in ()).throw(KeyboardInterrupt()))
    monkeypatch.setattr(Target, "_clean_up", lambda self: "")  # SIGKILL: nothing cleans up
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "m.pt", tmp_path / "z", model=False, format="zarr")
    monkeypatch.undo()
    assert_one_error(run_main("stream", tmp_path / "z", tmp_path / "st", "--no-model"), "did not finish")


def test_verify_checks_a_zarr_store(dtype_files, tmp_path):
    from helpers import run_main

    src = dtype_files["zip"]
    convert(src, tmp_path / "z", model=False, format="zarr")
    ok = run_main("verify", src, tmp_path / "z")
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    assert run_main("verify", src, tmp_path / "z", "--quick").returncode == 0
    # flip one byte of one chunk: values differ, the tensor is named
    arr = zarr.open_group(tmp_path / "z", mode="r")["conv/float32/weight"]
    chunk = next(p for p in (tmp_path / "z" / "conv" / "float32" / "weight" / "c").rglob("*") if p.is_file())
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    bad = run_main("verify", src, tmp_path / "z")
    assert bad.returncode != 0 and "conv.float32.weight" in bad.stdout, bad.stdout + bad.stderr
    assert arr.shape  # the array itself is still there: the values were checked
    # a missing array is named even by --quick
    import shutil

    shutil.rmtree(tmp_path / "z" / "sweep")
    quick = run_main("verify", src, tmp_path / "z", "--quick")
    assert quick.returncode != 0 and "sweep." in quick.stdout, quick.stdout + quick.stderr


def test_verify_names_a_compressed_chunk_that_no_longer_decodes(tmp_path):
    from helpers import run_main

    torch.save({"fc.weight": torch.randn(32, 16), "fc.bias": torch.randn(32)}, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "z", model=False, format="zarr", zarr_compressor="zstd")
    chunk = next(p for p in (tmp_path / "z" / "fc" / "weight" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"\0" * 7)
    bad = run_main("verify", tmp_path / "m.pt", tmp_path / "z")
    assert bad.returncode != 0 and "fc.weight" in bad.stdout and "Traceback" not in bad.stderr, bad.stdout + bad.stderr


def test_overwrite_replaces_the_old_store_arrays_and_all(tmp_path):
    torch.save({"old.w": torch.ones(2), "keep.w": torch.ones(3)}, tmp_path / "old.pt")
    new = {"new.w": torch.randn(2), "keep.w": torch.randn(3)}
    torch.save(new, tmp_path / "new.pt")
    convert(tmp_path / "old.pt", tmp_path / "z", model=False, format="zarr")
    convert(tmp_path / "new.pt", tmp_path / "z", model=False, format="zarr", overwrite=True)
    got = _store_names(tmp_path / "z")
    assert set(got) == set(new)  # old.w does not come back from the store
    from helpers import run_main

    assert run_main("verify", tmp_path / "new.pt", tmp_path / "z").returncode == 0


def test_enospc_at_the_manifest_is_one_error_and_the_store_reads_back_as_incomplete(tmp_path, monkeypatch):
    import errno
    import os

    from helpers import assert_one_error, run_main

    from torch2mlx.stream.writers import files

    torch.save({"a.weight": torch.randn(8, 4), "b.weight": torch.randn(3)}, tmp_path / "m.pt")

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "pwrite_all", full)  # the manifest's writes; zarr writes its chunks itself
    assert_one_error(
        run_main("stream", tmp_path / "m.pt", tmp_path / "z", "--format", "zarr", "--no-model"),
        "no space left on device",
        "torch2mlx.json",
        "removed",
    )
    monkeypatch.undo()
    assert not (tmp_path / "z").exists()
    assert_one_error(run_main("stream", tmp_path / "z", tmp_path / "st", "--no-model"), "no such file")
