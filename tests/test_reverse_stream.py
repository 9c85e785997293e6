"""The reverse stream (``--to torch``): torch -> MLX -> torch through files, read back with torch.

torch is the oracle: the expected tensor is always torch's own (the saved
tensor, or torch's ``.to()`` of it where the forward step had to change dtype).
"""

import json
import os

import numpy as np
import pytest
import torch
from conftest import all_dtypes_state_dict, views_state_dict
from helpers import (
    FLOAT8,
    KEEP,
    MANIFEST,
    assert_no_index,
    assert_one_error,
    assert_same,
    canon_torch,
    convert,
    read_json,
    run_cli,
    run_main,
    to_torch,
)
from reverse_helpers import INDEXES, read_torch_output
from safetensors.torch import save_file
from test_no_torch import no_torch_env  # noqa: F401  (a fixture)

FORMATS = ("safetensors", "bin")


def _via_mlx(t: torch.Tensor, dtype: str = "keep") -> torch.Tensor:
    """What a torch tensor is after torch -> MLX -> torch: exact unless MLX lacks the dtype (or ``dtype`` narrows)."""
    if dtype != "keep" and t.is_floating_point() and t.dtype not in FLOAT8:
        return t.to(getattr(torch, dtype)).to(t.dtype)
    # float8 travels as bfloat16, exactly; NaNs come back as torch's bfloat16 -> float8 cast makes them
    return t.to(KEEP.get(t.dtype, t.dtype)).to(t.dtype)


def _round_trip(src, tmp_path, fmt, forward=None, **back):
    convert(src, tmp_path / "mlx", model=False, **(forward or {}))
    res = to_torch(tmp_path / "mlx", tmp_path / "back", format=fmt, **back)
    return res, read_torch_output(tmp_path / "back", fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_dtype_comes_back_bit_exact(dtype_files, tmp_path, fmt):
    sd = all_dtypes_state_dict()
    res, got = _round_trip(dtype_files["zip"], tmp_path, fmt, max_shard_size="256KB")
    assert set(got) == set(sd)
    for name, t in sd.items():
        want = _via_mlx(t)
        if fmt == "safetensors" and t.dtype == torch.complex128:
            want = t.to(torch.complex64)  # the format has no complex128: kept as MLX holds it, with a warning
            assert any(w.startswith(f"{name}: safetensors has no complex128") for w in res.plan.warnings)
        assert_same(canon_torch(got[name]), canon_torch(want), name)
    assert len(res.shards) > 1, "a small --max-shard-size gives several shards"
    mlx_rules = read_json(tmp_path / "mlx" / MANIFEST)["tensors"]
    back = read_json(tmp_path / "back" / MANIFEST)["tensors"]
    # every conv layout guessed on the way in is undone by its twin on the way out
    assert (
        {n for n, r in back.items() if r["rule"].endswith(".reverse")}
        == {n for n, r in mlx_rules.items() if r["rule"] != "identity"}
        != set()
    )
    assert {r["rule_source"] for r in back.values()} == {"manifest"}


def test_forward_dtype_is_undone_by_restoring_the_source_dtypes(dtype_files, tmp_path):
    sd = {
        k: v
        for k, v in all_dtypes_state_dict().items()
        if v.dtype in (torch.float32, torch.bfloat16, torch.float64, torch.int16)
    }
    torch.save(sd, tmp_path / "m.pt")
    _, got = _round_trip(tmp_path / "m.pt", tmp_path, "safetensors", forward={"dtype": "float16"})
    for name, t in sd.items():
        assert_same(canon_torch(got[name]), canon_torch(_via_mlx(t, "float16")), name)


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_scalars_and_empty_tensors(views_files, tmp_path, fmt):
    sd = views_state_dict()
    _, got = _round_trip(views_files["legacy"], tmp_path, fmt)
    assert set(got) == set(sd)
    for name, t in sd.items():
        assert_same(canon_torch(got[name]), canon_torch(t.contiguous()), name)


def test_dtype_option_on_the_way_back_casts_floats_as_torch_does(dtype_files, tmp_path):
    sd = all_dtypes_state_dict()
    _, got = _round_trip(dtype_files["zip"], tmp_path, "bin", dtype="bfloat16")
    for name, t in sd.items():
        kept = t.to(KEEP.get(t.dtype, t.dtype))  # what MLX holds
        want = kept.to(torch.bfloat16) if t.is_floating_point() else kept
        assert_same(canon_torch(got[name]), canon_torch(want), name)


def test_tiny_blocks_give_the_same_bytes(dtype_files, tmp_path, monkeypatch):
    from torch2mlx.stream import execute

    convert(dtype_files["zip"], tmp_path / "mlx", model=False)
    to_torch(tmp_path / "mlx", tmp_path / "big", format="bin")
    real = execute.plan_tasks
    monkeypatch.setattr(execute, "plan_tasks", lambda op, chunk: real(op, 1024))
    to_torch(tmp_path / "mlx", tmp_path / "small", format="bin")
    big, small = read_torch_output(tmp_path / "big", "bin"), read_torch_output(tmp_path / "small", "bin")
    for name in big:
        assert_same(canon_torch(small[name]), canon_torch(big[name]), name, nan_bits=True)


def test_float8_changed_in_mlx_is_refused_not_rounded(tmp_path):
    import mlx.core as mx

    torch.save({"w": torch.linspace(-2, 2, 64).to(torch.float8_e4m3fn).reshape(8, 8)}, tmp_path / "f8.pt")
    convert(tmp_path / "f8.pt", tmp_path / "mlx", model=False)
    shard = str(tmp_path / "mlx" / "model.safetensors")
    w = mx.load(shard)["w"]
    mx.save_safetensors(shard, {"w": w + mx.array(0.01, dtype=mx.bfloat16)}, metadata={"format": "mlx"})
    err = assert_one_error(
        run_main("stream", tmp_path / "mlx", tmp_path / "back", "--to", "torch"),
        "w:",
        "float8_e4m3fn",
        "--dtype bfloat16",
    )
    assert "not exactly" in err
    assert_no_index(tmp_path / "back")
    # with a float dtype instead, the changed values come back as they are
    to_torch(tmp_path / "mlx", tmp_path / "bf16", dtype="bfloat16")
    got = read_torch_output(tmp_path / "bf16")["w"]
    assert torch.equal(
        got.view(torch.int16), torch.from_numpy(np.array((w + mx.array(0.01, dtype=mx.bfloat16)).view(mx.int16)))
    )


def test_cli_bin_output_and_json_report(tmp_path):
    sd = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.weight": torch.randn(5, 7).to(torch.bfloat16)}
    torch.save(sd, tmp_path / "m.pt")
    assert run_main("stream", tmp_path / "m.pt", tmp_path / "mlx", "--no-model").returncode == 0
    proc = run_main("stream", tmp_path / "mlx", tmp_path / "back", "--to", "torch", "--format", "bin", "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert [s["file"] for s in rep["shards"]] == ["pytorch_model.bin"] and rep["tensors_out"] == 2
    got = read_torch_output(tmp_path / "back", "bin")
    assert all(torch.equal(got[k], v) for k, v in sd.items())


@pytest.mark.parametrize(
    "args, mentions",
    [
        (("--format", "zarr"), ("--format safetensors or bin",)),
        (("--q-bits", "4"), ("--q-bits", "--to torch")),
        (("--resume",), ("--resume",)),
    ],
)
def test_cli_options_that_do_not_apply_are_one_error_line(tmp_path, args, mentions):
    torch.save({"a": torch.ones(2)}, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "mlx", model=False)
    assert_one_error(run_main("stream", tmp_path / "mlx", tmp_path / "back", "--to", "torch", *args), *mentions)


def test_bin_needs_to_torch(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "m.pt")
    assert_one_error(run_main("stream", tmp_path / "m.pt", tmp_path / "out", "--format", "bin"), "--to torch")


def test_a_pytorch_checkpoint_is_not_reversed_again(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert_one_error(run_main("stream", tmp_path / "model.safetensors", tmp_path / "o", "--to", "torch"), "format=pt")
    torch.save({"a": torch.ones(2)}, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "mlx", model=False)
    to_torch(tmp_path / "mlx", tmp_path / "back")
    assert_one_error(run_main("stream", tmp_path / "back", tmp_path / "again", "--to", "torch"), "already")


def test_overwrite_replaces_an_earlier_bin_output_whole(tmp_path):
    torch.save({f"t{i}": torch.randn(64, 64) for i in range(4)}, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "mlx", model=False)
    to_torch(tmp_path / "mlx", tmp_path / "back", format="bin", max_shard_size="20KB")
    assert len([n for n in os.listdir(tmp_path / "back") if n.endswith(".bin")]) == 4
    assert_one_error(run_main("stream", tmp_path / "mlx", tmp_path / "back", "--to", "torch"), "not empty")
    to_torch(tmp_path / "mlx", tmp_path / "back", format="bin", overwrite=True)
    assert sorted(os.listdir(tmp_path / "back")) == ["pytorch_model.bin", INDEXES["bin"], MANIFEST]


def test_without_a_manifest_or_model_tensors_keep_names_and_layouts_with_a_warning(tmp_path):
    sd = {"conv.weight": torch.randn(4, 3, 3, 3), "b": torch.randn(4)}
    torch.save(sd, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "mlx", model=False)
    os.unlink(tmp_path / "mlx" / MANIFEST)
    res = to_torch(tmp_path / "mlx", tmp_path / "same")
    assert any("no torch2mlx.json and no model information" in w for w in res.plan.warnings)
    got = read_torch_output(tmp_path / "same")
    assert torch.equal(got["conv.weight"], sd["conv.weight"].permute(0, 2, 3, 1))  # still MLX's layout
    # --rule names the forward layout; on the way back its twin undoes it
    to_torch(tmp_path / "mlx", tmp_path / "undone", rules=[r"conv\.weight=conv2d"])
    assert torch.equal(read_torch_output(tmp_path / "undone")["conv.weight"], sd["conv.weight"])


def test_forward_drops_are_reported_and_step_counters_restored(tmp_path):
    bn = torch.nn.BatchNorm2d(3)
    bn.running_mean.uniform_()
    torch.save(bn.state_dict(), tmp_path / "bn.pt")
    convert(tmp_path / "bn.pt", tmp_path / "mlx", model="torch.nn:BatchNorm2d", model_kwargs={"num_features": 3})
    assert "num_batches_tracked" not in read_json(tmp_path / "mlx" / "model.safetensors.index.json")["weight_map"]
    res = to_torch(tmp_path / "mlx", tmp_path / "back")
    back = torch.nn.BatchNorm2d(3)
    back.load_state_dict(read_torch_output(tmp_path / "back"), strict=True)
    assert torch.equal(back.running_mean, bn.running_mean) and back.num_batches_tracked.item() == 0
    assert any("num_batches_tracked" in n and "restored as 0" in n for n in res.plan.notes)


def test_dry_run_names_bin_shards_and_writes_nothing(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "mlx", model=False)
    res = to_torch(tmp_path / "mlx", tmp_path / "back", format="bin", dry_run=True)
    assert [s.file for s in res.plan.shards] == ["pytorch_model.bin"] and not (tmp_path / "back").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_recomputes_a_reverse_output_and_finds_a_changed_byte(tmp_path, fmt):
    sd = {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "fc.weight": torch.randn(8, 64).to(torch.bfloat16),
        "f8": torch.randn(4, 4).to(torch.float8_e5m2),
    }
    torch.save(sd, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "mlx", model=False, q_bits=4, q_group_size=32)
    to_torch(tmp_path / "mlx", tmp_path / "back", format=fmt)
    ok = run_main("verify", tmp_path / "mlx", tmp_path / "back")
    assert ok.returncode == 0 and "3 tensor(s)" in ok.stdout and "OK" in ok.stdout, ok.stdout + ok.stderr
    got = read_torch_output(tmp_path / "back", fmt)
    shard = tmp_path / "back" / read_json(tmp_path / "back" / INDEXES[fmt])["weight_map"]["fc.weight"]
    raw = bytearray(shard.read_bytes())
    at = bytes(raw).find(got["fc.weight"].view(torch.int16).numpy().tobytes())
    raw[at + 10] ^= 0x01
    shard.write_bytes(bytes(raw))
    bad = run_main("verify", tmp_path / "mlx", tmp_path / "back")
    assert bad.returncode == 1 and "fc.weight differs" in bad.stdout and "xxh3-128" in bad.stdout, bad.stdout


def test_missing_mlx_tensors_are_reported_and_a_pickle_is_refused(tmp_path):
    from safetensors.numpy import load_file as np_load
    from safetensors.numpy import save_file as np_save

    torch.save({"a": torch.ones(2), "b": torch.zeros(3)}, tmp_path / "m.pt")
    assert_one_error(run_main("stream", tmp_path / "m.pt", tmp_path / "o", "--to", "torch"), "a pickle")
    convert(tmp_path / "m.pt", tmp_path / "mlx", model=False)
    shard = tmp_path / "mlx" / "model.safetensors"
    np_save({"a": np_load(shard)["a"]}, shard, metadata={"format": "mlx"})
    (tmp_path / "mlx" / "model.safetensors.index.json").unlink()
    res = to_torch(tmp_path / "mlx", tmp_path / "back")
    assert any("1 tensor(s) in torch2mlx.json are not in the checkpoint" in w and "b" in w for w in res.plan.warnings)
    assert set(read_torch_output(tmp_path / "back")) == {"a"}


def test_the_way_back_from_our_manifest_never_imports_torch(no_torch_env, tmp_path):
    env, marker = no_torch_env
    sd = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.weight": torch.randn(8, 64).to(torch.bfloat16)}
    torch.save(sd, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "mlx", model=False, q_bits=8)
    proc = run_cli("stream", tmp_path / "mlx", tmp_path / "back", "--to", "torch", "--format", "bin", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "torch was imported"
    got = read_torch_output(tmp_path / "back", "bin")
    assert torch.equal(got["conv.weight"], sd["conv.weight"]) and got["fc.weight"].dtype == torch.bfloat16
