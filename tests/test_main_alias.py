"""``python -m torch2mlx SRC OUT`` (the original tool's form) is a thin alias of the t2mlx subcommands."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import check_converted, read_json, run_cli
from safetensors.numpy import save_file
from torch import nn

from torch2mlx.cli import alias_argv, main


@pytest.mark.parametrize(
    "argv, want",
    [
        (["m.pt", "out"], ["stream", "m.pt", "out"]),
        (["m.pt", "out", "--dtype", "float16"], ["stream", "m.pt", "out", "--dtype", "float16"]),
        (["m.pt", "--analyze-only"], ["analyze", "m.pt"]),
        (["--analyze-only", "m.pt", "--json"], ["analyze", "m.pt", "--json"]),
        (["m.pt", "out", "--no-analyze"], ["stream", "m.pt", "out", "--no-model"]),
        (["stream", "m.pt", "out"], ["stream", "m.pt", "out"]),
        (["verify", "m.pt", "out"], ["verify", "m.pt", "out"]),
        (["--version"], ["--version"]),
        ([], []),
    ],
)
def test_alias_spelling(argv, want):
    assert alias_argv(argv) == want


def test_python_m_torch2mlx_model_pt_out(tmp_path):
    sd = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Linear(3, 4)).state_dict()
    torch.save(sd, tmp_path / "model.pt")
    proc = run_cli(tmp_path / "model.pt", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    check_converted(tmp_path / "out", sd)
    proc = run_cli(tmp_path / "model.pt", "--analyze-only", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {t["mlx"]: t["rule"] for t in report["tensors"]}["0.weight"] == "conv2d"
    assert not (tmp_path / "model.pt-mlx").exists()


def test_no_analyze_skips_the_model(tmp_path, capsys):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=50,
        max_position_embeddings=16,
    )
    config.architectures = ["BertModel"]
    config.to_json_file(str(tmp_path / "config.json"))
    state = {k: v.numpy() for k, v in BertModel(config).state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    assert main(alias_argv([str(tmp_path), str(tmp_path / "a"), "--quiet"])) == 0
    assert main(alias_argv([str(tmp_path), str(tmp_path / "b"), "--no-analyze", "--quiet"])) == 0
    capsys.readouterr()
    by_model = {r["rule_source"] for r in read_json(tmp_path / "a" / "torch2mlx.json")["tensors"].values()}
    without = {r["rule_source"] for r in read_json(tmp_path / "b" / "torch2mlx.json")["tensors"].values()}
    assert by_model == {"model"} and "model" not in without
