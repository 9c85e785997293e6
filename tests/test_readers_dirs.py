"""Checkpoint directories: sharded .bin and .safetensors with index files, directories without one, sidecars."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SEED
from helpers import check_converted, convert, read_json, torch_load, torch_save
from safetensors.torch import load_file, save_file

import torch2mlx

SIDECARS = {
    "config.json": '{"model_type": "tiny", "hidden_size": 8}\n',
    "generation_config.json": "{}\n",
    "tokenizer.json": '{"version": "1.0"}',
    "tokenizer_config.json": "{}",
    "special_tokens_map.json": "{}",
    "tokenizer.model": "\x00\x01sentencepiece",
    "merges.txt": "a b\n",
    "modeling_tiny.py": "# custom code\n",
}
NOT_SIDECARS = ("training.log", "loss.png")


def _model_sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    sd = {"embed.weight": torch.randn(50, 16, generator=g).to(torch.bfloat16)}
    for i in range(3):
        sd[f"layers.{i}.conv.weight"] = torch.randn(16, 16, 3, generator=g).to(torch.bfloat16)
        sd[f"layers.{i}.proj.weight"] = torch.randn(16, 16, generator=g).to(torch.bfloat16)
        sd[f"layers.{i}.norm.bias"] = torch.randn(16, generator=g, dtype=torch.float32)
        sd[f"layers.{i}.steps"] = torch.tensor(i, dtype=torch.int64)
    return sd


def _split(sd: dict, n: int) -> list[dict]:
    names = list(sd)
    return [{k: sd[k] for k in names[i::n]} for i in range(n)]


def _write_dir(d, sd, kind: str, n: int = 3, index: bool = True, sidecars: bool = True):
    """Shards of ``sd`` in ``d`` the way HF writes them; ``kind`` is safetensors | zip | legacy."""
    d.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i, part in enumerate(_split(sd, n)):
        if kind == "safetensors":
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            save_file({k: v.contiguous() for k, v in part.items()}, d / name, metadata={"format": "pt"})
        else:
            # the .bin shards alternate between the zip and the legacy pickle formats
            name = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
            torch_save(part, d / name, kind if i % 2 == 0 else ({"zip": "legacy", "legacy": "zip"}[kind]))
        weight_map.update({k: name for k in part})
    if index:
        index_name = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
        total = sum(v.numel() * v.element_size() for v in sd.values())
        (d / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    if sidecars:
        for name, text in SIDECARS.items():
            (d / name).write_text(text)
        for name in NOT_SIDECARS:
            (d / name).write_bytes(b"\x89PNG not a sidecar")
    return d


def _load_dir(d) -> dict[str, torch.Tensor]:
    """torch's view of every tensor in the directory's weight files."""
    sd = {}
    for f in sorted(d.iterdir()):
        if f.suffix == ".safetensors":
            sd.update(load_file(f))
        elif f.suffix == ".bin":
            sd.update(torch_load(f))
    return sd


@pytest.mark.parametrize("kind", ["safetensors", "zip", "legacy"])
@pytest.mark.parametrize("index", [True, False], ids=["index", "no-index"])
def test_sharded_directory(tmp_path, out, kind, index):
    src = _write_dir(tmp_path / "src", _model_sd(), kind, index=index)
    res = convert(src, out)
    check_converted(out, _load_dir(src))
    for name, text in SIDECARS.items():
        assert (out / name).read_text() == text, name
    for name in NOT_SIDECARS:
        assert not (out / name).exists()
    assert sorted(res.sidecars) == sorted(SIDECARS)


def test_index_decides_which_files_are_read(tmp_path, out):
    """A stray weight file the index does not name is not converted; training-state files are skipped."""
    sd = _model_sd()
    src = _write_dir(tmp_path / "src", sd, "safetensors", sidecars=False)
    save_file({"stray": torch.zeros(2)}, src / "stray.safetensors")
    convert(src, out)
    check_converted(out, sd)


def test_training_state_files_are_not_weights(tmp_path, out):
    sd = _model_sd()
    src = _write_dir(tmp_path / "src", sd, "zip", index=False, sidecars=False)
    torch_save({"state": {0: {"exp_avg": torch.zeros(3)}}}, src / "optimizer.pt")
    torch_save({"lr": 0.1}, src / "scheduler.pt")
    convert(src, out)
    check_converted(out, sd)


def test_safetensors_preferred_over_pickles_without_index(tmp_path, out):
    sd = _model_sd()
    src = _write_dir(tmp_path / "src", sd, "safetensors", index=False, sidecars=False)
    torch_save({"old.weight": torch.ones(3)}, src / "pytorch_model.bin")
    res = convert(src, out)
    check_converted(out, sd)
    assert any("safetensors" in n for n in res.plan.notes)


def test_safetensors_preferred_over_a_pickle_index(tmp_path, out):
    """model.safetensors beside pytorch_model.bin.index.json: transformers loads the safetensors, so do we
    (the .bin shards need not even be there), and the report says which set was read."""
    sd = _model_sd()
    src = _write_dir(tmp_path / "src", {k: torch.zeros_like(v) for k, v in sd.items()}, "zip", sidecars=False)
    (src / "pytorch_model-00002-of-00003.bin").unlink()
    save_file({k: v.contiguous() for k, v in sd.items()}, src / "model.safetensors", metadata={"format": "pt"})
    res = convert(src, out)
    check_converted(out, sd)
    assert (
        f"{src}: reading the safetensors weights (1 file(s)); ignored pytorch_model-00001-of-00003.bin, "
        "pytorch_model-00003-of-00003.bin, pytorch_model.bin.index.json" in res.plan.notes
    )
    assert "ignored pytorch_model" in res.report()


@pytest.mark.parametrize("kind", ["safetensors", "zip"])
def test_index_naming_a_missing_shard(tmp_path, out, kind):
    src = _write_dir(tmp_path / "src", _model_sd(), kind, sidecars=False)
    victim = sorted(src.glob("*-00002-of-00003.*"))[0]
    victim.unlink()
    with pytest.raises(torch2mlx.Torch2MLXError, match=victim.name):
        convert(src, out)
    assert not out.exists()


def test_index_naming_a_tensor_its_shard_lacks(tmp_path, out):
    src = _write_dir(tmp_path / "src", _model_sd(), "safetensors", sidecars=False)
    index = read_json(src / "model.safetensors.index.json")
    index["weight_map"]["ghost.weight"] = "model-00001-of-00003.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(torch2mlx.CheckpointError, match="ghost.weight"):
        convert(src, out)


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd"])
def test_index_pointing_outside_the_directory(tmp_path, out, bad):
    src = _write_dir(tmp_path / "src", _model_sd(), "safetensors", sidecars=False)
    index = read_json(src / "model.safetensors.index.json")
    index["weight_map"]["embed.weight"] = bad
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(torch2mlx.CheckpointError, match="outside"):
        convert(src, out)


@pytest.mark.parametrize("kind", ["safetensors", "zip"])
def test_duplicate_names_across_shards(tmp_path, out, kind):
    sd = _model_sd()
    src = _write_dir(tmp_path / "src", sd, kind, index=False, sidecars=False)
    extra = {"layers.1.proj.weight": torch.zeros(16, 16)}
    if kind == "safetensors":
        save_file(extra, src / "model-extra.safetensors")
    else:
        torch_save(extra, src / "pytorch_model-extra.bin")
    with pytest.raises(torch2mlx.CheckpointError, match="layers.1.proj.weight.*duplicate"):
        convert(src, out)
    assert not out.exists()


def test_empty_directory(tmp_path, out):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text("{}")
    with pytest.raises(torch2mlx.CheckpointError, match="no weight files"):
        convert(tmp_path / "src", out)


def test_a_stray_safetensors_does_not_displace_a_pickle_index(tmp_path, out):
    """Only the model's own safetensors (model.safetensors, model-0000i-of-0000N) win over a .bin index."""
    sd = _model_sd()
    src = _write_dir(tmp_path / "src", sd, "zip", sidecars=False)
    save_file({"lora_A": torch.zeros(2, 2)}, src / "adapter_model.safetensors")
    res = convert(src, out)
    check_converted(out, sd)
    assert any("ignored adapter_model.safetensors" in n for n in res.plan.notes)
