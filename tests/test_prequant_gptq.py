"""GPTQ and AWQ checkpoints in: lossless repacks to MLX affine, exact dequantization + requantization.

Oracle: the reference packers/dequantizers of ``prequant_ref`` (written from the formats' public
descriptions) and transformers running the dequantized float32 weights; mlx-lm loads what we wrote.
"""

from __future__ import annotations

import json

import llm_checkpoints as L
import mlx.core as mx
import numpy as np
import prequant_ref as R
import pytest
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model

from torch2mlx import stream
from torch2mlx.cli import main as t2mlx

# name -> (method, bits, group size, sym, act-order, gptq_v2)
LOSSLESS = {
    "gptq-4-sym-g128-v1": ("gptq", 4, 128, True, False, False),
    "gptq-4-asym-g64-v2": ("gptq", 4, 64, False, False, True),
    "gptq-8-sym-g32-v1": ("gptq", 8, 32, True, False, False),
    "gptq-8-asym-g128-v2": ("gptq", 8, 128, False, False, True),
    "gptq-3-asym-g128-v2": ("gptq", 3, 128, False, False, True),
    "gptq-2-sym-g64-v1": ("gptq", 2, 64, True, False, False),
    "gptq-4-sym-perchannel-v1": ("gptq", 4, -1, True, False, False),
    "awq-4-g128": ("awq", 4, 128, False, False, False),
    "awq-4-g64": ("awq", 4, 64, False, False, False),
}
ACT_ORDER = {
    "gptq-4-sym-g128-act": ("gptq", 4, 128, True, True, False),
    "gptq-8-asym-g64-act-v2": ("gptq", 8, 64, False, True, True),
    "gptq-4-asym-g32-act-v1": ("gptq", 4, 32, False, True, False),
}


def _mlx_weights(out):
    model, cfg = load_model(out)
    return model, cfg, dict(tree_flatten(model.parameters()))


@pytest.fixture(scope="module", params=sorted(LOSSLESS))
def lossless(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    src, deq, ref = R.write_quantized_llama(root / "src", *LOSSLESS[request.param])
    out = root / "out"
    res = stream.convert(str(src), str(out))
    return LOSSLESS[request.param], out, deq, ref, res


@pytest.mark.slow
def test_lossless_repack_dequantizes_exactly_and_loads_in_mlx_lm(lossless):
    (method, bits, gs, *_), out, deq, ref, res = lossless
    model, cfg, weights = _mlx_weights(out)
    q = cfg["quantization"]
    assert q["bits"] == bits and q["mode"] == "affine"
    assert "quant_method" not in cfg["quantization_config"]  # the GPTQ/AWQ block is replaced
    expect_gs = 128 if gs == -1 else gs
    assert q["group_size"] == expect_gs
    for base, w in deq.items():
        got = mx.dequantize(
            weights[base + ".weight"], weights[base + ".scales"], weights[base + ".biases"], expect_gs, bits
        )
        assert got.dtype == mx.float32
        np.testing.assert_array_equal(np.array(got), w, err_msg=base)  # bit for bit
    logits = np.array(model(mx.array(L.PROMPT)))
    assert np.abs(logits - ref).max() <= 2e-3
    assert any("repacked losslessly" in n for n in res.plan.notes)
    assert any(f"{method.upper()} (bits={bits}" in n for n in res.plan.notes)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ACT_ORDER))
def test_act_order_is_dequantized_and_requantized_with_its_error_reported(name, tmp_path):
    method, bits, gs, *_ = ACT_ORDER[name]
    src, deq, ref = R.write_quantized_llama(tmp_path / "src", *ACT_ORDER[name])
    out = tmp_path / "out"
    res = stream.convert(str(src), str(out))
    model, cfg, weights = _mlx_weights(out)
    assert cfg["quantization"] == {"group_size": gs, "bits": bits, "mode": "affine"}
    records = json.loads((out / "torch2mlx.json").read_text())["tensors"]
    notes = "\n".join(res.plan.notes)
    worst, requantized, written = 0.0, 0, {}
    for base, w in deq.items():
        rec = records[base + ".weight"]
        mlx_gs = cfg["quantization"].get(base, cfg["quantization"])["group_size"]
        got = np.array(
            mx.dequantize(weights[base + ".weight"], weights[base + ".scales"], weights[base + ".biases"], mlx_gs, bits)
        ).astype(np.float32)
        err = float(np.abs(got - w).max())
        if rec["prequant"]["lossless"]:
            # one source group spans all inputs (in = group size): any input order is still one MLX group
            assert w.shape[1] == gs and err == 0, base
            written[base] = got
            continue
        requantized += 1
        # requantized = mx.quantize of the exact dequantization in the model's dtype (float32 here)
        wq, sq, bq = mx.quantize(mx.array(w), mlx_gs, bits)
        for k, want in (("weight", wq), ("scales", sq), ("biases", bq)):
            assert weights[f"{base}.{k}"].dtype == want.dtype
            np.testing.assert_array_equal(np.array(weights[f"{base}.{k}"]), np.array(want), err_msg=f"{base}.{k}")
        # the error recorded is the error in what was written
        assert rec["requant_max_abs_error"] == pytest.approx(err, rel=1e-6, abs=1e-12)
        assert rec["requant_max_rel_error"] == pytest.approx(err / float(np.abs(w).max()), rel=1e-5)
        assert f"requantized {base}.weight: max abs error {err:.3g}" in notes
        worst = max(worst, err)
        written[base] = got
    assert 0 < worst and requantized >= 2
    assert t2mlx(["verify", str(src), str(out)]) == 0  # recomputes the requantization from the packed source
    logits = np.array(model(mx.array(L.PROMPT)))
    # mlx-lm runs what was written: transformers on the same (requantized) weights agrees
    assert np.abs(logits - _torch_logits(written)).max() <= 2e-3
    print(f"{name}: max weight error {worst:.3g}, max logit error vs the source {np.abs(logits - ref).max():.3g}")


def _torch_logits(replaced: dict) -> np.ndarray:
    import torch

    model = L.build_model("llama", seed=7, config=R.llama_config())
    sd = model.state_dict()
    sd.update({b + ".weight": torch.from_numpy(w) for b, w in replaced.items()})
    model.load_state_dict(sd)
    return L.torch_logits(model)


@pytest.mark.slow
@pytest.mark.parametrize("how", [["--dtype", "float32"], ["--dtype", "bfloat16"]])
def test_dtype_writes_unquantized_exact_dequantization(how, tmp_path):
    src, deq, ref = R.write_quantized_llama(tmp_path / "src", "gptq", 4, 128, False, True, True)
    out = tmp_path / "out"
    assert t2mlx(["stream", str(src), str(out), "--quiet", *how]) == 0
    model, cfg, weights = _mlx_weights(out)
    assert "quantization" not in cfg and "quantization_config" not in cfg
    for base, w in deq.items():
        got = weights[base + ".weight"]
        assert got.dtype == (mx.float32 if how[1] == "float32" else mx.bfloat16)
        np.testing.assert_array_equal(
            np.array(got.astype(mx.float32)), np.array(mx.array(w).astype(got.dtype).astype(mx.float32))
        )
    if how[1] == "float32":
        assert np.abs(np.array(model(mx.array(L.PROMPT))) - ref).max() <= 1e-4


@pytest.mark.slow
def test_q_bits_requantizes_every_weight_and_verify_recomputes(tmp_path):
    """--q-bits asks for a quantization: every packed module is dequantized exactly and requantized to it
    (as are the float weights, as mlx-lm's convert -q does); `verify` re-reads the packed source."""
    src, deq, _ = R.write_quantized_llama(tmp_path / "src", "awq", 4, 128, False, False)
    out = tmp_path / "out"
    assert t2mlx(["stream", str(src), str(out), "--quiet", "--q-bits", "8", "--q-group-size", "32"]) == 0
    _, cfg, weights = _mlx_weights(out)
    assert cfg["quantization"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    for base, w in deq.items():
        wq, sq, bq = mx.quantize(mx.array(w), 32, 8)
        np.testing.assert_array_equal(np.array(weights[base + ".weight"]), np.array(wq))
        np.testing.assert_array_equal(np.array(weights[base + ".scales"]), np.array(sq))
    assert t2mlx(["verify", str(src), str(out)]) == 0
    lossless = tmp_path / "lossless"
    assert t2mlx(["stream", str(src), str(lossless), "--quiet"]) == 0
    assert t2mlx(["verify", str(src), str(lossless)]) == 0


def test_dry_run_reports_the_format_without_reading_codes(tmp_path, capsys):
    src, _, _ = R.write_quantized_llama(tmp_path / "src", "gptq", 8, 64, True, False)
    assert t2mlx(["stream", str(src), "--dry-run", "--no-model"]) == 0
    text = capsys.readouterr().out
    assert "GPTQ (bits=8, group_size=64, sym=True, desc_act=False, checkpoint_format=gptq)" in text
    assert "14 module(s) repacked losslessly" in text
    assert "model.layers.0.mlp.down_proj.biases" in text


@pytest.mark.slow
def test_float16_model_requantizes_in_float16_and_measures_that(tmp_path):
    """The requantized weights take the model's dtype (its unquantized tensors', float16 here), as mlx-lm's
    convert -q of a float16 model would; the recorded error is that of the float16 result."""
    import torch

    src, deq, _ = R.write_quantized_llama(tmp_path / "src", "gptq", 4, 32, False, True, False, dtype=torch.float16)
    out = tmp_path / "out"
    assert t2mlx(["stream", str(src), str(out), "--quiet"]) == 0
    _, cfg, weights = _mlx_weights(out)
    records = json.loads((out / "torch2mlx.json").read_text())["tensors"]
    for base, w in deq.items():
        wq, sq, bq = mx.quantize(mx.array(w).astype(mx.float16), 32, 4)
        for k, want in (("weight", wq), ("scales", sq), ("biases", bq)):
            assert weights[f"{base}.{k}"].dtype == want.dtype
            np.testing.assert_array_equal(np.array(weights[f"{base}.{k}"]), np.array(want))
        back = np.array(mx.dequantize(wq, sq, bq, 32, 4).astype(mx.float32))
        assert records[base + ".weight"]["requant_max_abs_error"] == float(np.abs(back - w).max())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_repacked_output_verifies_and_goes_back_to_torch_as_the_exact_dequantization(method, tmp_path):
    from safetensors.numpy import load_file

    src, deq, _ = R.write_quantized_llama(tmp_path / "src", method, 4, 64, False, False, True)
    out, back = tmp_path / "out", tmp_path / "back"
    assert t2mlx(["stream", str(src), str(out), "--quiet"]) == 0
    assert t2mlx(["verify", str(src), str(out)]) == 0
    assert t2mlx(["stream", str(out), str(back), "--to", "torch", "--quiet"]) == 0
    got = load_file(str(back / "model.safetensors"))
    for base, w in deq.items():
        assert got[base + ".weight"].dtype == np.float32  # the model's dtype
        np.testing.assert_array_equal(got[base + ".weight"], w)
    assert not any(n.endswith((".scales", ".biases", ".qweight")) for n in got)
    assert "quantization_config" not in json.loads((back / "config.json").read_text())


@pytest.mark.slow
def test_gptqmodel_dynamic_bits_give_per_layer_entries(tmp_path):
    """GPTQModel's `dynamic` overrides (8-bit group-64 down_proj in a 4-bit group-128 model): each module is
    repacked at its own bits, and config.json's `quantization` has an entry per module that differs."""
    dynamic = {"+:.*down_proj": {"bits": 8, "group_size": 64}}
    src, deq, ref = R.write_quantized_llama(tmp_path / "src", "gptq", 4, 128, True, False, dynamic=dynamic)
    out = tmp_path / "out"
    assert t2mlx(["stream", str(src), str(out), "--quiet"]) == 0
    model, cfg, weights = _mlx_weights(out)
    q = cfg["quantization"]
    assert {k: v for k, v in q.items() if not isinstance(v, dict)} == {"group_size": 128, "bits": 4, "mode": "affine"}
    assert {k for k, v in q.items() if isinstance(v, dict)} == {f"model.layers.{i}.mlp.down_proj" for i in (0, 1)}
    for base, w in deq.items():
        gs, bits = (64, 8) if base.endswith("down_proj") else (128, 4)
        assert q.get(base, {"group_size": 128, "bits": 4})["bits"] == bits
        got = mx.dequantize(weights[base + ".weight"], weights[base + ".scales"], weights[base + ".biases"], gs, bits)
        np.testing.assert_array_equal(np.array(got), w)
    assert np.abs(np.array(model(mx.array(L.PROMPT))) - ref).max() <= 2e-3


@pytest.mark.slow
def test_repacked_and_requantized_modules_share_one_block(tmp_path):
    """Act-order everywhere, 8-bit group-64 down_proj: the 128-input modules (one group) repack at 4 bits,
    group 128; down_proj is requantized at 8 bits, group 64. The block's default is the common spec, with
    an entry per down_proj; mlx-lm loads it."""
    dynamic = {"+:.*down_proj": {"bits": 8, "group_size": 64}}
    src, deq, _ = R.write_quantized_llama(tmp_path / "src", "gptq", 4, 128, False, True, True, dynamic=dynamic)
    out = tmp_path / "out"
    assert t2mlx(["stream", str(src), str(out), "--quiet", "--strip-prefix", "model."]) == 0
    q = json.loads((out / "config.json").read_text())["quantization"]
    downs = {f"layers.{i}.mlp.down_proj" for i in (0, 1)}
    assert q == {"group_size": 128, "bits": 4, "mode": "affine"} | {
        d: {"group_size": 64, "bits": 8, "mode": "affine"} for d in downs
    }
    from safetensors.numpy import load_file

    got = load_file(str(out / "model.safetensors"))
    for base, w in deq.items():
        name = base.removeprefix("model.")
        if name in downs:
            want = mx.quantize(mx.array(w), 64, 8)
            np.testing.assert_array_equal(got[name + ".weight"], np.array(want[0]))
        else:
            back = mx.dequantize(*(mx.array(got[f"{name}.{k}"]) for k in ("weight", "scales", "biases")), 128, 4)
            np.testing.assert_array_equal(np.array(back), w)
