"""Pre-quantized input that does not hold what it says: one `error:` line naming the tensor and the file."""

from __future__ import annotations

import json

import numpy as np
import prequant_ref as R
import pytest
import torch
from safetensors.torch import save_file

from torch2mlx.cli import main as t2mlx


def _gptq_dir(tmp_path, qc=None, edit=None):
    w = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    q, scales, zeros, g_idx = R.quantize(w, 4, 64, False, False, 0)
    t = {f"layer.{k}": v for k, v in R.gptq_tensors(q, scales, zeros, g_idx, 4, True).items()}
    t["norm.weight"] = torch.ones(128)
    if edit:
        edit(t)
    save_file(t, str(tmp_path / "model.safetensors"))
    qc = qc or {"quant_method": "gptq", "bits": 4, "group_size": 64, "sym": False, "desc_act": False,
                "checkpoint_format": "gptq_v2"}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": qc}))
    return tmp_path


def _error(capsys, src, tmp_path) -> str:
    rc = t2mlx(["stream", str(src), str(tmp_path / "out"), "--quiet", "--no-model"])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out" / "model.safetensors").exists()
    return err


def test_converts_when_well_formed(tmp_path):
    """The fixture itself is fine: each case below breaks one thing."""
    (tmp_path / "src").mkdir()
    src = _gptq_dir(tmp_path / "src")
    assert t2mlx(["stream", str(src), str(tmp_path / "out"), "--quiet", "--no-model"]) == 0


def test_qweight_shape_disagreeing_with_bits(capsys, tmp_path):
    (tmp_path / "src").mkdir()
    src = _gptq_dir(tmp_path / "src", edit=lambda t: t.update({"layer.qweight": t["layer.qweight"][:15].clone()}))
    err = _error(capsys, src, tmp_path)
    assert "layer.qweight" in err and "model.safetensors" in err and "120 inputs" in err


def test_bits_in_config_disagreeing_with_the_tensors(capsys, tmp_path):
    (tmp_path / "src").mkdir()
    qc = {"quant_method": "gptq", "bits": 8, "group_size": 64, "checkpoint_format": "gptq_v2"}
    err = _error(capsys, _gptq_dir(tmp_path / "src", qc=qc), tmp_path)
    assert "layer.qweight" in err and "model.safetensors" in err and "8-bit" in err


def test_missing_scales(capsys, tmp_path):
    (tmp_path / "src").mkdir()
    src = _gptq_dir(tmp_path / "src", edit=lambda t: t.pop("layer.scales"))
    err = _error(capsys, src, tmp_path)
    assert "layer.scales is missing" in err and "layer.qweight" in err and "model.safetensors" in err


def test_unknown_quant_method(capsys, tmp_path):
    (tmp_path / "src").mkdir()
    src = _gptq_dir(tmp_path / "src", qc={"quant_method": "exl9", "bits": 4})
    err = _error(capsys, src, tmp_path)
    assert "'exl9'" in err and "layer.qweight" in err and str(src) in err


def test_awq_other_packing_refused(capsys, tmp_path):
    (tmp_path / "src").mkdir()
    src = _gptq_dir(tmp_path / "src", qc={"quant_method": "awq", "bits": 4, "group_size": 64, "version": "gemv"})
    assert "AWQ version 'gemv'" in _error(capsys, src, tmp_path)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_reference_packer_matches_compressed_tensors(bits):
    """The tests' bit-stream packer (GPTQ's qweight columns, MLX's rows) against a library's dense int32 packing."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    codes = np.random.default_rng(bits).integers(0, 2**bits, (5, 96))
    theirs = pack_to_int32(torch.from_numpy(codes - 2 ** (bits - 1)).to(torch.int8), bits, packed_dim=1)
    np.testing.assert_array_equal(R.pack_stream(codes, bits), theirs.numpy().view(np.uint32))


def test_gptq_without_config_is_known_by_its_g_idx(tmp_path):
    """No quantization_config: a qweight next to a g_idx is GPTQ (v1 zeros); g_idx gives the groups."""
    import mlx.core as mx
    from safetensors.numpy import load_file

    w = np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32)
    q, scales, zeros, g_idx = R.quantize(w, 4, 64, False, False, 0)
    t = {f"layer.{k}": v for k, v in R.gptq_tensors(q, scales, zeros, g_idx, 4, False).items()}
    (tmp_path / "src").mkdir()
    save_file(t, str(tmp_path / "src" / "model.safetensors"))
    assert t2mlx(["stream", str(tmp_path / "src"), str(tmp_path / "out"), "--quiet", "--no-model"]) == 0
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    back = mx.dequantize(*(mx.array(got[f"layer.{k}"]) for k in ("weight", "scales", "biases")), 64, 4)
    np.testing.assert_array_equal(np.array(back), R.dequantize(q, scales, zeros, g_idx))


def test_packed_without_config_or_g_idx(capsys, tmp_path):
    (tmp_path / "src").mkdir()
    w = np.random.default_rng(2).standard_normal((64, 128)).astype(np.float32)
    q, scales, zeros, _ = R.quantize(w, 4, 64, False, False, 0)
    save_file(
        {f"layer.{k}": v for k, v in R.awq_tensors(q, scales, zeros).items()}, str(tmp_path / "src" / "x.safetensors")
    )
    err = _error(capsys, tmp_path / "src", tmp_path)
    assert "layer.qweight is packed but no config.json quantization_config says how" in err and "x.safetensors" in err


def test_awq_scales_disagreeing_with_qweight(capsys, tmp_path):
    (tmp_path / "src").mkdir()
    w = np.random.default_rng(3).standard_normal((64, 128)).astype(np.float32)
    q, scales, zeros, _ = R.quantize(w, 4, 64, False, False, 0)
    t = {f"layer.{k}": v for k, v in R.awq_tensors(q, scales, zeros).items()}
    save_file(t, str(tmp_path / "src" / "model.safetensors"))
    qc = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}
    (tmp_path / "src" / "config.json").write_text(json.dumps({"quantization_config": qc}))
    err = _error(capsys, tmp_path / "src", tmp_path)
    assert "layer.scales" in err and "model.safetensors" in err and "groups of 32" in err


def test_float32_scales_repack_within_one_ulp_and_say_so(tmp_path):
    """float32 scales make scale*q + bias round twice: within one float32 ulp of scale*2^bits, reported."""
    import mlx.core as mx
    from safetensors.numpy import load_file

    from torch2mlx import stream

    w = np.random.default_rng(4).standard_normal((64, 256)).astype(np.float32)
    q, scales, zeros, g_idx = R.quantize(w, 4, 64, False, False, 0)
    scales = (scales.astype(np.float32) * np.float32(1.0001)).astype(np.float32)  # not float16 values
    t = {f"layer.{k}": v for k, v in R.gptq_tensors(q, scales, zeros, g_idx, 4, True).items()}
    (tmp_path / "src").mkdir()
    save_file(t, str(tmp_path / "src" / "model.safetensors"))
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 64, "checkpoint_format": "gptq_v2"}
    (tmp_path / "src" / "config.json").write_text(json.dumps({"quantization_config": qc}))
    res = stream.convert(str(tmp_path / "src"), str(tmp_path / "out"), model=False)
    assert any("float32 scales" in n and "not bit for bit" in n for n in res.plan.notes)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    back = np.array(mx.dequantize(*(mx.array(got[f"layer.{k}"]) for k in ("weight", "scales", "biases")), 64, 4))
    ref = R.dequantize(q, scales, zeros, g_idx)
    ulp = scales.astype(np.float32)[g_idx].T * 16 * 2.0**-23
    assert (np.abs(back - ref) <= ulp).all() and (back != ref).any()


@pytest.mark.parametrize("dtype", [[], ["--dtype", "float32"]])
def test_model_rules_do_not_reach_the_packed_view(tmp_path, dtype):
    """A model rule for the module's weight (a GPT-2 Conv1D's transposition) is not applied to the view:
    packed codes and the dequantized weight are in MLX's (out, in) layout already."""
    import mlx.core as mx
    from safetensors.numpy import load_file

    from torch2mlx import stream
    from torch2mlx.core.spec import RuleSpec

    (tmp_path / "src").mkdir()
    src = _gptq_dir(tmp_path / "src")
    w = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    ref = R.dequantize(*R.quantize(w, 4, 64, False, False, 0))
    spec = RuleSpec("layer.weight", ("layer.weight",), "linear_transposed")
    opts = {"dtype": dtype[1]} if dtype else {}
    stream.convert(str(src), str(tmp_path / "out"), model=[spec], **opts)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    if dtype:
        np.testing.assert_array_equal(got["layer.weight"], ref)
    else:
        back = mx.dequantize(*(mx.array(got[f"layer.{k}"]) for k in ("weight", "scales", "biases")), 64, 4)
        np.testing.assert_array_equal(np.array(back), ref)
