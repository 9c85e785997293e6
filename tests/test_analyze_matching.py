"""Checkpoint names against the model's: wrapper prefixes, transformers' load-time renames and per-expert
pieces, tensors the model does not have, and multi-source / multi-output specs through the stream."""

import json

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import torch
import torch.nn as nn
from safetensors.numpy import load_file

from torch2mlx.analysis.stream_inputs import StreamInputs
from torch2mlx.core.reverse import reverse_specs
from torch2mlx.core.spec import RuleSpec
from torch2mlx.stream import convert


class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.norm = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 2)


def _records(out):
    return json.loads((out / "torch2mlx.json").read_text())


def test_wrapper_prefixes_are_matched_and_stripped_and_strangers_reported(tmp_path):
    state = {("_orig_mod.module." + k): v for k, v in Net().state_dict().items()}
    state["_orig_mod.module.extra.weight"] = torch.zeros(3, 3, 3, 3)  # not in the model
    state["_orig_mod.module.head.weight"] = torch.zeros(2, 5)  # wrong shape for the model
    torch.save(state, tmp_path / "ckpt.pt")
    res = convert(tmp_path / "ckpt.pt", tmp_path / "out", model="test_analyze_matching:Net")
    recs = _records(tmp_path / "out")["tensors"]
    assert {n: (r["rule"], r["rule_source"]) for n, r in recs.items()} == {
        "conv.weight": ("conv2d", "model"),
        "conv.bias": ("identity", "model"),
        "norm.weight": ("identity", "model"),
        "norm.bias": ("identity", "model"),
        "norm.running_mean": ("identity", "model"),
        "norm.running_var": ("identity", "model"),
        "head.bias": ("identity", "model"),
        "_orig_mod.module.extra.weight": ("conv2d", "inferred"),
        "_orig_mod.module.head.weight": ("identity", "default"),
    }
    assert res.plan.dropped == [
        ("_orig_mod.module.norm.num_batches_tracked", "a training step counter; MLX BatchNorm has none")
    ]
    (warning,) = [w for w in res.plan.warnings if "not from the model" in w]
    assert "extra.weight (not in the model)" in warning and "shape [2, 5] differs" in warning


def test_model_kwargs_reach_the_constructor(tmp_path):
    torch.save(Net(width=6).state_dict(), tmp_path / "ckpt.pt")
    res = convert(
        tmp_path / "ckpt.pt", None, dry_run=True, model="test_analyze_matching:Net", model_kwargs='{"width": 6}'
    )
    assert res.plan.rules_by_source() == {"model": 8}


def test_transformers_legacy_names_match_the_renamed_model(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=16,
            patch_size=8,
            num_labels=3,
        )
    )
    model.save_pretrained(tmp_path / "vit")
    names = set(load_file(str(tmp_path / "vit" / "model.safetensors")))
    assert "vit.encoder.layer.0.attention.attention.query.weight" in names  # the old layout on disk
    assert "vit.layers.0.attention.q_proj.weight" in dict(model.named_parameters())  # the model's new names
    res = convert(tmp_path / "vit", tmp_path / "out")
    recs = _records(tmp_path / "out")["tensors"]
    assert set(recs) == names and {r["rule_source"] for r in recs.values()} == {"model"}
    assert recs["vit.embeddings.patch_embeddings.projection.weight"]["rule"] == "conv2d"
    assert any("through known renames" in n for n in res.plan.notes)


def test_per_expert_pieces_keep_their_names_with_the_models_rule(tmp_path):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        intermediate_size=32,
        moe_intermediate_size=8,
        num_experts=4,
        num_experts_per_tok=2,
        vocab_size=64,
        tie_word_embeddings=False,
    )
    model = Qwen3MoeForCausalLM(config)
    model.save_pretrained(tmp_path / "moe")
    fused = {n for n, _ in model.named_parameters() if n.endswith(("gate_up_proj", "down_proj"))}
    assert fused == {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"}
    res = convert(tmp_path / "moe", tmp_path / "out")
    recs = _records(tmp_path / "out")["tensors"]
    experts = {n for n in recs if ".experts." in n}
    assert experts == {
        f"model.layers.0.mlp.experts.{e}.{p}.weight" for e in range(4) for p in ("gate_proj", "up_proj", "down_proj")
    }
    assert {r["rule_source"] for r in recs.values()} == {"model"} and not res.plan.warnings
    state = model.state_dict()
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    # expert 2's up projection is the second half of its fused gate_up rows
    np.testing.assert_array_equal(
        out["model.layers.0.mlp.experts.2.up_proj.weight"],
        state["model.layers.0.mlp.experts.gate_up_proj"][2, 8:].numpy(),
    )


def test_lstm_streams_to_mlx_and_back_through_multi_source_specs(tmp_path):
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True)
    torch.save(lstm.state_dict(), tmp_path / "lstm.pt")
    kwargs = {"input_size": 4, "hidden_size": 6, "num_layers": 2, "batch_first": True}
    res = convert(tmp_path / "lstm.pt", tmp_path / "mlx", model="torch.nn:LSTM", model_kwargs=kwargs)
    weights = load_file(str(tmp_path / "mlx" / "model.safetensors"))
    assert set(weights) == {f"layers.{k}.{p}" for k in (0, 1) for p in ("Wx", "Wh", "bias")}
    layers = [mnn.LSTM(4, 6), mnn.LSTM(6, 6)]
    for k, layer in enumerate(layers):
        layer.load_weights(
            [(n.split(".", 2)[2], mx.array(v)) for n, v in weights.items() if n.startswith(f"layers.{k}.")], strict=True
        )
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    h = mx.array(x)
    for layer in layers:
        h = layer(h)[0]
    with torch.no_grad():
        want = lstm(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(np.array(h), want, rtol=1e-4, atol=1e-5)

    specs = [
        RuleSpec(
            n, tuple(r["source"]) if isinstance(r["source"], list) else (r["source"],), r["rule"], r.get("args", {})
        )
        for n, r in _records(tmp_path / "mlx")["tensors"].items()
    ]
    convert(tmp_path / "mlx", tmp_path / "back", model=StreamInputs(specs=reverse_specs(specs)))
    back = nn.LSTM(4, 6, num_layers=2, batch_first=True)
    back.load_state_dict(
        {k: torch.from_numpy(v) for k, v in load_file(str(tmp_path / "back" / "model.safetensors")).items()}
    )
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x))[0].numpy(), want, rtol=1e-5, atol=1e-6)
    assert res.plan.rules_by_source() == {"model": 6}


def test_bfloat16_lstm_bias_is_torchs_bfloat16_sum(tmp_path):
    lstm = nn.LSTM(3, 5).to(torch.bfloat16)
    torch.save(lstm.state_dict(), tmp_path / "lstm.pt")
    convert(
        tmp_path / "lstm.pt", tmp_path / "out", model="torch.nn:LSTM", model_kwargs={"input_size": 3, "hidden_size": 5}
    )
    got = mx.load(str(tmp_path / "out" / "model.safetensors"))["bias"]
    want = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    assert got.dtype == mx.bfloat16
    np.testing.assert_array_equal(np.array(got.view(mx.uint16)), want.view(torch.uint16).numpy())


def test_multihead_attention_in_proj_splits_in_the_stream(tmp_path):
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    torch.save(mha.state_dict(), tmp_path / "mha.pt")
    convert(
        tmp_path / "mha.pt",
        tmp_path / "out",
        model="torch.nn:MultiheadAttention",
        model_kwargs={"embed_dim": 8, "num_heads": 2, "batch_first": True},
    )
    m = mnn.MultiHeadAttention(8, 2, bias=True)
    m.load_weights(str(tmp_path / "out" / "model.safetensors"), strict=True)
    q = np.random.default_rng(1).standard_normal((1, 3, 8)).astype(np.float32)
    with torch.no_grad():
        want = mha(*[torch.from_numpy(q)] * 3, need_weights=False)[0].numpy()
    np.testing.assert_allclose(np.array(m(*[mx.array(q)] * 3)), want, rtol=1e-4, atol=1e-5)
