"""A single weight file inside a model directory (config.json beside it) brings the directory's sidecars, as
the directory would: ``t2mlx stream dir/model.safetensors out`` loads in mlx-lm. A file alone changes nothing."""

from __future__ import annotations

import json

import llm_checkpoints as L
import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
import torch
from helpers import check_converted, run_main, torch_save


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    model = L.build_model("llama")
    model.save_pretrained(str(d))  # one model.safetensors
    L.save_tokenizer(d)
    assert (d / "model.safetensors").is_file() and not (d / "model.safetensors.index.json").exists()
    return d, L.torch_logits(model)


def _logits(out, src) -> np.ndarray:
    from transformers import AutoTokenizer

    model, tokenizer = mlx_lm.load(str(out))
    assert tokenizer.encode("w5 w9 w200") == AutoTokenizer.from_pretrained(str(src)).encode("w5 w9 w200")
    return np.array(model(mx.array(L.PROMPT)).astype(mx.float32))


def test_single_file_in_a_model_directory_loads_in_mlx_lm(llama_dir, tmp_path):
    d, ref = llama_dir
    out = tmp_path / "out"
    proc = run_main("stream", d / "model.safetensors", out)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
        assert name in proc.stdout.split("copied:")[1].splitlines()[0]
    assert "a single file in a model directory; its sidecars come along" in proc.stdout
    assert "rules from the model LlamaForCausalLM" in proc.stdout  # config.json beside the file: the analyzer
    assert np.abs(_logits(out, d) - ref).max() <= 1e-4


def test_single_file_quantized_gets_the_config_block(llama_dir, tmp_path):
    d, _ = llama_dir
    out = tmp_path / "q4"
    assert run_main("stream", d / "model.safetensors", out, "--q-bits", "4").returncode == 0
    assert json.loads((out / "config.json").read_text())["quantization"] == {
        "group_size": 64,
        "bits": 4,
        "mode": "affine",
    }
    mlx_lm.load(str(out))


def test_a_file_alone_copies_nothing(tmp_path):
    """No config.json beside the file: a folder of downloads, not a model directory."""
    sd = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    src = torch_save(sd, tmp_path / "m.pt")
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "README.md").write_text("# mine\n")
    proc = run_main("stream", src, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "copied:" not in proc.stdout and "sidecars" not in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md",  # our model card, not built on the folder's README.md
        "model.safetensors",
        "model.safetensors.index.json",
        "torch2mlx.json",
    ]
    assert "# mine" not in (tmp_path / "out" / "README.md").read_text()
    check_converted(tmp_path / "out", sd)
