"""The model-level API: convert / load_converted / to_torch on live modules and state dicts.

torch is the oracle (its tensors, permutes and casts); the files are read back by MLX and safetensors.
"""

from __future__ import annotations

import json
import subprocess
import sys

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
import torch
from helpers import (
    INDEX,
    MANIFEST,
    assert_same,
    canon_mx,
    canon_torch,
    check_converted,
    check_safetensors_layout,
    expected_output,
    read_json,
)
from torch import nn

import torch2mlx
from torch2mlx.core.spec import RuleSpec
from torch2mlx.errors import Torch2MLXError


class Net(nn.Module):
    """Conv, BatchNorm, an LSTM, attention and a raw parameter: every kind of rule in one model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.scale = nn.Parameter(torch.randn(6))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.bn(self.conv(x)).mean((2, 3))[:, None]
        h, _ = self.lstm(h)
        return self.head(self.attn(h, h, h)[0][:, 0] * self.scale)


def _net():
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


EXPECTED_MLX = {  # MLX name -> (torch sources, how the MLX tensor is computed from them)
    "conv.weight": (["conv.weight"], lambda w: w.permute(0, 2, 3, 1)),
    "lstm.bias": (["lstm.bias_ih_l0", "lstm.bias_hh_l0"], lambda a, b: a + b),
    "attn.key_proj.weight": (["attn.in_proj_weight"], lambda w: w[6:12]),
    "attn.value_proj.bias": (["attn.in_proj_bias"], lambda b: b[12:]),
    "lstm.Wx": (["lstm.weight_ih_l0"], lambda w: w),
    "scale": (["scale"], lambda w: w),
}


def _mlx_state(path) -> dict:
    return {k: canon_mx(v) for k, v in torch2mlx.load_converted(path).items()}


def test_convert_a_module_to_one_file(tmp_path):
    m = _net()
    res = torch2mlx.convert(m, tmp_path / "net.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.safetensors"]  # one file, no temp left
    check_safetensors_layout(tmp_path / "net.safetensors")
    got = _mlx_state(tmp_path / "net.safetensors")
    sd = m.state_dict()
    for name, (sources, how) in EXPECTED_MLX.items():
        assert_same(got[name], canon_torch(how(*[sd[s] for s in sources])), name)
    assert "bn.num_batches_tracked" not in got and len(got) == 20
    assert res.plan.rules_by_source() == {"model": 20}
    assert res.out == str(tmp_path / "net.safetensors") and len(res.shards) == 1


def test_a_directory_output_is_what_t2mlx_stream_writes(tmp_path):
    m = _net()
    torch2mlx.convert(m, tmp_path / "one.safetensors")
    res = torch2mlx.convert(m, tmp_path / "out", max_shard_size="1KB")
    names = set(read_json(tmp_path / "out" / INDEX)["weight_map"])
    assert len(res.shards) > 1 and {p.name for p in (tmp_path / "out").iterdir()} == {s.file for s in res.shards} | {
        INDEX,
        MANIFEST,
        "README.md",
    }
    man = read_json(tmp_path / "out" / MANIFEST)
    assert man["tensors"]["lstm.bias"]["source"] == ["lstm.bias_ih_l0", "lstm.bias_hh_l0"]
    assert {r["rule_source"] for r in man["tensors"].values()} == {"model"}
    one, many = _mlx_state(tmp_path / "one.safetensors"), _mlx_state(tmp_path / "out")
    assert set(one) == set(many) == names
    for k in one:
        assert_same(many[k], one[k], k)


def test_a_state_dict_converts_by_inference_or_given_rules(tmp_path):
    sd = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Linear(3, 4)).state_dict()
    torch2mlx.convert(dict(sd), tmp_path / "a")
    check_converted(tmp_path / "a", sd, rule_sources={"0.weight": "inferred"})
    torch2mlx.convert(dict(sd), tmp_path / "b", rules=[r"0\.weight=identity"])
    check_converted(tmp_path / "b", sd, rules={"0.weight": "identity"}, rule_sources={"0.weight": "user"})
    spec = [RuleSpec("conv.w", ("0.weight",), "conv1d")]
    torch2mlx.convert(dict(sd), tmp_path / "c", model=spec)
    got = _mlx_state(tmp_path / "c")
    assert_same(got["conv.w"], canon_torch(sd["0.weight"].permute(0, 2, 1)), "conv.w")
    # given specs win over a module's own rules
    torch2mlx.convert(nn.Sequential(nn.Conv1d(2, 3, 3)), tmp_path / "e.safetensors", model=spec)
    assert set(_mlx_state(tmp_path / "e.safetensors")) == {"conv.w", "0.bias"}
    # numpy arrays are state dicts too
    torch2mlx.convert({k: v.numpy() for k, v in sd.items()}, tmp_path / "d.safetensors")
    assert set(_mlx_state(tmp_path / "d.safetensors")) == set(sd)


def test_a_module_without_analysis_infers_like_the_stream(tmp_path):
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LSTM(4, 4))
    res = torch2mlx.convert(m, tmp_path / "x.safetensors", model=False)
    got = _mlx_state(tmp_path / "x.safetensors")
    assert "1.bias_ih_l0" in got and "1.bias" not in got  # no model: names stay torch's
    assert res.plan.rules_by_source()["inferred"] == 1


def test_bfloat16_views_and_dtypes_are_exact(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 6), nn.Conv2d(2, 3, 3)).to(torch.bfloat16)
    with torch.no_grad():  # a non-contiguous parameter: torch2mlx reads it as a view, block by block
        m[0].weight = nn.Parameter(torch.randn(8, 6, dtype=torch.bfloat16).t())
    assert not m[0].weight.is_contiguous()
    sd = m.state_dict()
    torch2mlx.convert(m, tmp_path / "keep.safetensors")
    torch2mlx.convert(m, tmp_path / "f16.safetensors", dtype="float16")
    keep, f16 = _mlx_state(tmp_path / "keep.safetensors"), _mlx_state(tmp_path / "f16.safetensors")
    for k, t in sd.items():
        rule = "conv2d" if k == "1.weight" else "identity"
        assert_same(keep[k], canon_torch(expected_output(t, rule)), k)
        assert_same(f16[k], canon_torch(expected_output(t, rule, "float16")), k)


def test_torch_compiled_models_convert_identically(tmp_path):
    m = _net()
    compiled = torch.compile(m)
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    torch2mlx.convert(m, tmp_path / "plain.safetensors")
    torch2mlx.convert(compiled, tmp_path / "compiled.safetensors")
    assert (tmp_path / "plain.safetensors").read_bytes() == (tmp_path / "compiled.safetensors").read_bytes()
    back = torch2mlx.to_torch(tmp_path / "compiled.safetensors", model=compiled)
    assert list(back) == list(compiled.state_dict())
    compiled.load_state_dict(back, strict=True)


def test_round_trip_reproduces_the_model(tmp_path):
    m = _net()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want = m(x)
    torch2mlx.convert(m, tmp_path / "out")
    fresh = Net().eval()
    for rules in (fresh, None):  # the model, or the conversion's own manifest
        fresh.load_state_dict(
            torch2mlx.to_torch(tmp_path / "out", model=rules)
            | ({"bn.num_batches_tracked": m.bn.num_batches_tracked} if rules is None else {}),
            strict=True,
        )
        with torch.no_grad():
            assert torch.max(torch.abs(fresh(x) - want)) <= 1e-5


def test_to_torch_takes_a_result_or_specs_and_checks_names(tmp_path):
    m = nn.Sequential(nn.Conv2d(2, 3, 3))
    res = torch2mlx.convert(m, tmp_path / "x.safetensors")
    weights = torch2mlx.load_converted(tmp_path / "x.safetensors")
    from_result = torch2mlx.to_torch(weights, model=res)
    specs = [RuleSpec("0.weight", ("0.weight",), "conv2d"), RuleSpec("0.bias", ("0.bias",), "identity")]
    from_specs = torch2mlx.to_torch(tmp_path / "x.safetensors", model=specs)
    for k, t in m.state_dict().items():
        assert torch.equal(from_result[k], t) and torch.equal(from_specs[k], t)
    with pytest.raises(Torch2MLXError, match="no place in the model"):
        torch2mlx.to_torch({**weights, "extra": mx.zeros(2)}, model=m)
    with pytest.raises(Torch2MLXError, match="missing"):
        torch2mlx.to_torch({"0.weight": weights["0.weight"]}, model=m)
    partial = torch2mlx.to_torch({"0.weight": weights["0.weight"], "extra": mx.zeros(2)}, model=m, strict=False)
    assert list(partial) == ["0.weight"]
    with pytest.raises(Torch2MLXError, match="needs the torch model"):
        torch2mlx.to_torch(weights)


def test_quantized_conversion_loads_into_quantized_linear(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    res = torch2mlx.convert(nn.Sequential(lin), tmp_path / "q.safetensors", q_bits=4, q_group_size=32)
    q = mnn.QuantizedLinear(64, 32, group_size=32, bits=4)
    mnn.Sequential(q).load_weights(
        list(torch2mlx.load_converted(tmp_path / "q.safetensors", prefix="layers.").items()), strict=True
    )
    ref = mnn.Linear(64, 32)
    ref.load_weights([("weight", mx.array(lin.weight.detach().numpy())), ("bias", mx.array(lin.bias.detach().numpy()))])
    ref_q = mnn.QuantizedLinear.from_linear(ref, group_size=32, bits=4)
    for k in ("weight", "scales", "biases", "bias"):  # MLX's own quantization is the judge
        assert np.array_equal(np.array(getattr(q, k)), np.array(getattr(ref_q, k))), k
    # Back to torch as the stream's --to torch does it: the weight dequantized (mx.dequantize is the judge),
    # scales and biases folded into it, the bias exact.
    want = torch.from_numpy(np.array(mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=4)))
    for back in (
        torch2mlx.to_torch(tmp_path / "q.safetensors", model=res),
        torch2mlx.to_torch(torch2mlx.load_converted(tmp_path / "q.safetensors"), model=res),
    ):
        assert set(back) == {"0.weight", "0.bias"}
        assert torch.equal(back["0.weight"], want) and torch.equal(back["0.bias"], lin.bias.detach())


def test_to_torch_dequantizes_a_quantized_conversion_directory(tmp_path):
    """A directory's manifest records the quantization: no model or Result needed to undo it."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(128, 8))
    torch2mlx.convert(m, tmp_path / "q", q_bits=8, q_group_size=64)
    stored = torch2mlx.load_converted(tmp_path / "q")
    assert stored["0.weight"].dtype == stored["2.weight"].dtype == mx.uint32
    back = torch2mlx.to_torch(tmp_path / "q")
    assert set(back) == set(m.state_dict())
    for i in (0, 2):
        w = mx.dequantize(stored[f"{i}.weight"], stored[f"{i}.scales"], stored[f"{i}.biases"], group_size=64, bits=8)
        assert torch.equal(back[f"{i}.weight"], torch.from_numpy(np.array(w)))
        assert torch.equal(back[f"{i}.bias"], m.state_dict()[f"{i}.bias"])
    # the quantizer's error, no more: the values are the model's
    assert torch.max(torch.abs(back["0.weight"] - m[0].weight.detach())) < 0.01


def test_load_converted_flat_prefixed_and_nested(tmp_path):
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    torch2mlx.convert(m, tmp_path / "out")
    mlx_seq = mnn.Sequential(mnn.Linear(4, 3), mnn.ReLU(), mnn.Linear(3, 2))
    mlx_seq.load_weights(list(torch2mlx.load_converted(tmp_path / "out", prefix="layers.").items()), strict=True)
    tree = torch2mlx.load_converted(tmp_path / "out", prefix="layers.", nested=True)
    assert isinstance(tree["layers"], list) and set(tree["layers"][2]) == {"weight", "bias"}
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(np.array(mlx_seq(mx.array(x))) - want)) <= 1e-6
    assert torch2mlx.to_nested({"a.0.b": 1, "a.1.b": 2, "c": 3}) == {"a": [{"b": 1}, {"b": 2}], "c": 3}


@pytest.mark.parametrize(
    "bad, why",
    [
        (lambda p: torch2mlx.convert(nn.Linear(2, 2, device="meta"), p / "x.safetensors"), "meta device"),
        (lambda p: torch2mlx.convert([1, 2], p / "x.safetensors"), "mapping"),
        (lambda p: torch2mlx.convert({"a": "text"}, p / "x.safetensors"), "expected a tensor"),
        (lambda p: torch2mlx.convert({}, p / "x.safetensors"), "nothing to convert"),
        (
            lambda p: torch2mlx.convert(nn.Linear(2, 2), (p / "d.safetensors").mkdir() or p / "d.safetensors"),
            "is a directory",
        ),
        (lambda p: torch2mlx.load_converted(p / "missing"), "no such file"),
        (lambda p: torch2mlx.load_converted(p), "no model.safetensors.index.json"),
    ],
)
def test_user_errors_are_torch2mlx_errors(tmp_path, bad, why):
    with pytest.raises(Torch2MLXError, match=why):
        bad(tmp_path)


def test_a_file_target_is_replaced_a_directory_needs_overwrite(tmp_path):
    """The library's rule: one file is replaced as mx.save_safetensors does; a directory needs overwrite=True."""
    m = nn.Linear(2, 2)
    torch2mlx.convert(m, tmp_path / "x.safetensors")
    torch2mlx.convert(m, tmp_path / "out")
    with torch.no_grad():
        m.weight.zero_()
    torch2mlx.convert(m, tmp_path / "x.safetensors")  # a second call, as a notebook cell is rerun
    assert not np.any(np.array(torch2mlx.load_converted(tmp_path / "x.safetensors")["weight"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "x.safetensors"]  # no temporary left
    with pytest.raises(Torch2MLXError, match="exists and is not empty.*--overwrite"):
        torch2mlx.convert(m, tmp_path / "out")
    assert np.any(np.array(torch2mlx.load_converted(tmp_path / "out")["weight"]))  # untouched
    torch2mlx.convert(m, tmp_path / "out", overwrite=True)
    assert not np.any(np.array(torch2mlx.load_converted(tmp_path / "out")["weight"]))
    with pytest.raises(Torch2MLXError, match="is the source itself"):
        torch2mlx.convert(tmp_path / "x.safetensors", tmp_path / "x.safetensors", overwrite=True)


def test_a_checkpoint_path_converts_through_the_same_call(tmp_path):
    sd = nn.Sequential(nn.Conv2d(2, 3, 3)).state_dict()
    torch.save(sd, tmp_path / "ck.pt")
    torch2mlx.convert(tmp_path / "ck.pt", tmp_path / "out")
    check_converted(tmp_path / "out", sd)
    torch2mlx.convert(str(tmp_path / "ck.pt"), tmp_path / "one.safetensors")
    assert_same(
        _mlx_state(tmp_path / "one.safetensors")["0.weight"],
        canon_torch(sd["0.weight"].permute(0, 2, 3, 1)),
        "0.weight",
    )


def test_importing_torch2mlx_stays_light():
    code = (
        "import sys, torch2mlx; torch2mlx.convert, torch2mlx.export, torch2mlx.to_torch, torch2mlx.load_converted; "
        "import torch2mlx.model_api; "
        "print(sorted(m for m in ('torch', 'mlx', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []
