"""t2mlx analyze and the stream's use of the analyzer from the command line; torch stays out of the stream path."""

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from torch2mlx.cli import main


@pytest.fixture
def bert_dir(tmp_path):
    from transformers import BertConfig

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
    return tmp_path


def test_analyze_prints_a_table_and_json(bert_dir, capsys):
    assert main(["analyze", str(bert_dir)]) == 0
    text = capsys.readouterr().out
    assert "model:      BertModel (from config.json, built on the meta device" in text
    assert "coverage:   100.00% of parameters" in text and "torch.nn.Linear" in text
    assert main(["analyze", str(bert_dir), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["coverage"] == 1.0 and d["model"] == "BertModel" and d["unsupported"] == {}
    assert {t["rule_source"] for t in d["tensors"]} == {"model"}
    assert sum(np.prod(t["shape"]) for t in d["tensors"] if t["mlx"]) >= d["parameters"]


def test_analyze_a_class_path_with_kwargs(capsys):
    assert main(["analyze", "torch.nn:GRU", "--model-kwargs", '{"input_size": 3, "hidden_size": 4}', "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert sorted(t["mlx"] for t in d["tensors"]) == ["Wh", "Wx", "b", "bhn"]


def test_user_errors_are_one_error_line(tmp_path, capsys):
    for argv in (
        ["analyze", str(tmp_path / "missing")],
        ["analyze", "nope.mod:Net"],
        ["analyze", "torch.nn:Linear", "--model-kwargs", "[1]"],
        ["analyze", str(tmp_path)],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)


def test_stream_uses_the_config_and_no_model_opts_out(bert_dir, capsys):
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig.from_json_file(str(bert_dir / "config.json")))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["extra.weight"] = np.zeros((2, 3, 3), np.float32)
    save_file(state, str(bert_dir / "model.safetensors"))
    assert main(["stream", str(bert_dir), "--dry-run", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["rules_by_source"] == {"inferred": 1, "model": len(state) - 1}
    assert any("rules from the model BertModel" in n for n in d["notes"])
    assert any("extra.weight (not in the model)" in w for w in d["warnings"])
    assert main(["stream", str(bert_dir), "--dry-run", "--json", "--no-model"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert "model" not in d["rules_by_source"]


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_and_the_stream_without_model_information_never_import_torch(bert_dir, tmp_path):
    # in a directory of its own: a file beside config.json takes the config (and its model) as the directory would
    (tmp_path / "plain").mkdir()
    plain = tmp_path / "plain" / "plain.safetensors"
    save_file({"w": np.ones((2, 2), np.float32)}, str(plain))
    save_file({"w": np.ones((2, 2), np.float32)}, str(bert_dir / "model.safetensors"))
    out = _run(
        "import sys, torch2mlx, torch2mlx.stream, torch2mlx.analysis, torch2mlx.core.registry, torch2mlx.core.ops\n"
        "from torch2mlx.cli import main\n"
        f"assert main(['stream', {str(plain)!r}, '--dry-run', '-q']) == 0\n"
        f"assert main(['stream', {str(bert_dir)!r}, '--dry-run', '--no-model', '-q']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n"
    )
    assert out.strip().splitlines()[-1] == "[]"


def test_stream_notes_a_config_transformers_does_not_know(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "not-a-model"}')
    save_file({"w": np.ones((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    assert main(["stream", str(tmp_path), "--dry-run", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["rules_by_source"] == {"default": 1}
    assert any("not-a-model" in n for n in d["notes"])


def test_stream_model_option_and_rule_override(tmp_path, capsys):
    import torch

    torch.save(torch.nn.GRU(3, 4).state_dict(), tmp_path / "gru.pt")
    argv = [
        "stream",
        str(tmp_path / "gru.pt"),
        "--dry-run",
        "--json",
        "--model",
        "torch.nn:GRU",
        "--model-kwargs",
        '{"input_size": 3, "hidden_size": 4}',
    ]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert {n: (r["rule"], r["rule_source"]) for n, r in plan.items()} == {
        "Wx": ("identity", "model"),
        "Wh": ("identity", "model"),
        "b": ("gru_input_bias", "model"),
        "bhn": ("split", "model"),
    }
    assert plan["b"]["source"] == ["bias_ih_l0", "bias_hh_l0"] and plan["bhn"]["shape"] == [4]
    assert main(argv + ["--rule", "weight_hh_l0=linear_transposed"]) == 0  # --rule still wins for one source
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert (plan["Wh"]["rule"], plan["Wh"]["rule_source"], plan["Wh"]["shape"]) == (
        "linear_transposed",
        "user",
        [4, 12],
    )


@pytest.mark.parametrize(
    "absent, said",
    [
        (("transformers",), "but transformers is not installed"),
        (("torch", "transformers"), "but torch and transformers are not installed"),
    ],
)
def test_stream_without_torch_falls_back_to_inference_with_a_note(bert_dir, monkeypatch, absent, said):
    # `make demo`'s venv has torch but not transformers: the note names what is missing, nothing more
    import sys

    from torch2mlx.stream import convert

    save_file({"conv.weight": np.ones((2, 3, 3, 3), np.float32)}, str(bert_dir / "model.safetensors"))
    for name in absent:
        monkeypatch.setitem(sys.modules, name, None)  # importlib.util.find_spec now reports it missing
    res = convert(bert_dir, None, dry_run=True)
    assert res.plan.rules_by_source() == {"inferred": 1}
    assert [n for n in res.plan.notes if "not installed" in n] == [
        f"config.json found, {said} (pip install 'torch2mlx[torch]'); rules inferred from shapes"
    ]
