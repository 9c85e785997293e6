"""`--dequantize`: an MLX-quantized checkpoint (mlx-lm's or ours, any mode) -> unquantized MLX (mlx-lm's `convert -d`).

Oracles: ``mx.dequantize`` of the stored tensors (bit for bit, dtype included), mlx-lm's own
``convert(dequantize=True)`` of the same directory (its parameters), mlx-lm's loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import llm_checkpoints as L
import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx_lm.convert import convert as mlx_lm_convert
from safetensors.torch import load_file
from test_mlx_lm import assert_same_params, ckpts, config, logits_of, stream  # noqa: F401

from torch2mlx.cli import main as t2mlx
from torch2mlx.stream.sidecar_config import _hoist_rope

pytestmark = pytest.mark.slow

MODES = ("affine", "mxfp4", "nvfp4", "mxfp8")


def tensors(d: Path) -> dict:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(mx.load(str(f)))
    return out


def raw(a) -> bytes:
    return np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a).tobytes()


def assert_is_mx_dequantize(quantized: Path, out: Path, mode: str, dtype=None) -> int:
    qw, ow = tensors(quantized), tensors(out)
    n = 0
    for name, a in ow.items():
        base = name[: -len(".weight")] if name.endswith(".weight") else None
        if base is not None and base + ".scales" in qw:
            gs = {"mxfp4": 32, "nvfp4": 16, "mxfp8": 32}.get(mode, config(quantized)["quantization"]["group_size"])
            bits = {"mxfp4": 4, "nvfp4": 4, "mxfp8": 8}.get(mode, config(quantized)["quantization"]["bits"])
            want = mx.dequantize(
                qw[name], qw[base + ".scales"], qw.get(base + ".biases"), gs, bits, mode=mode, dtype=dtype
            )
            assert a.dtype == want.dtype and raw(a) == raw(want), name
            n += 1
        else:
            want = qw[name] if dtype is None else qw[name].astype(dtype)
            assert a.dtype == want.dtype and raw(a) == raw(want), name
    assert not any(k.endswith((".scales", ".biases")) for k in ow)
    return n


@pytest.fixture(scope="module")
def mlx_lm_quantized(ckpts, tmp_path_factory):  # noqa: F811
    """mlx-lm's quantization of the tiny Llama (bfloat16), one directory per mode."""
    root = tmp_path_factory.mktemp("q")
    out = {}
    for mode in MODES:
        out[mode] = root / mode
        mlx_lm_convert(str(ckpts["llama"].safetensors), str(out[mode]), quantize=True, q_mode=mode, dtype="bfloat16")
    return out


@pytest.mark.parametrize("mode", MODES)
def test_dequantize_mlx_lm_output_equals_mx_dequantize_and_convert_d(mlx_lm_quantized, mode, tmp_path):
    q = mlx_lm_quantized[mode]
    out = stream(q, tmp_path / "deq", "--dequantize")
    assert assert_is_mx_dequantize(q, out, mode) == 16  # 14 Linear, lm_head, the embedding
    cfg = config(out)
    assert "quantization" not in cfg and "quantization_config" not in cfg
    ref = tmp_path / "ref"
    mlx_lm_convert(str(q), str(ref), dequantize=True)
    assert_same_params(out, ref)
    cfg = config(ref)  # mlx-lm's copy lacks the top-level RoPE base its loader reads (we add it)
    _hoist_rope(cfg)
    (ref / "config.json").write_text(json.dumps(cfg))
    import mlx_lm

    model, _ = mlx_lm.load(str(out))
    ref_model, _ = mlx_lm.load(str(ref))
    assert np.array_equal(logits_of(model), logits_of(ref_model))
    assert t2mlx(["verify", str(q), str(out)]) == 0


@pytest.mark.parametrize("mode", ("mxfp4", "nvfp4"))
def test_dequantize_to_dtype_is_mx_dequantize_with_that_dtype(mlx_lm_quantized, mode, tmp_path):
    q = mlx_lm_quantized[mode]
    out = stream(q, tmp_path / "deq", "--dequantize", "--dtype", "float16")
    assert assert_is_mx_dequantize(q, out, mode, dtype=mx.float16) == 16
    assert config(out)["torch_dtype"] == "float16"
    assert t2mlx(["verify", str(q), str(out)]) == 0


@pytest.mark.parametrize("mode", ("mxfp4", "nvfp4", "mxfp8"))
def test_our_fp_mode_output_dequantizes_and_goes_back_to_torch(ckpts, mode, tmp_path):  # noqa: F811
    src = ckpts["llama"].safetensors
    q = stream(src, tmp_path / "q", "--q-mode", mode)
    deq = stream(q, tmp_path / "deq", "--dequantize")
    assert assert_is_mx_dequantize(q, deq, mode) == 16
    back = stream(q, tmp_path / "back", "--to", "torch")
    got = {}
    for f in back.glob("*.safetensors"):
        got.update(load_file(str(f)))
    flt = tensors(deq)
    orig = L.state_dict_of(src)
    assert set(got) == set(orig)
    for name, t in got.items():
        assert t.dtype == torch.float32, name  # the source's dtype, restored
        want = np.array(flt[name].astype(mx.float32))
        assert np.array_equal(t.numpy(), want), name


def test_dequantize_refuses_an_unquantized_source(ckpts, tmp_path, capsys):  # noqa: F811
    src = ckpts["llama"].safetensors
    rc = t2mlx(["stream", str(src), str(tmp_path / "o"), "--dequantize"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("error: ") and "nothing to undo" in err[0]
    assert not (tmp_path / "o").exists()


def test_dequantize_with_q_bits_is_refused(mlx_lm_quantized, tmp_path, capsys):
    rc = t2mlx(["stream", str(mlx_lm_quantized["affine"]), str(tmp_path / "o"), "--dequantize", "--q-bits", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "--dequantize writes float weights" in err[0]


def test_requantizing_a_quantized_source_points_to_dequantize(mlx_lm_quantized, tmp_path, capsys):
    rc = t2mlx(["stream", str(mlx_lm_quantized["mxfp4"]), str(tmp_path / "o"), "--q-bits", "4"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "mxfp4" in err and "--dequantize" in err


def test_nvfp4_global_scale_is_refused_not_ignored(mlx_lm_quantized, tmp_path, capsys):
    """A tensor scale multiplies every value: dequantizing without it would be silently wrong."""
    import shutil

    src = tmp_path / "gs"
    shutil.copytree(mlx_lm_quantized["nvfp4"], src)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.layers.0.mlp.down_proj.weight"]
    arrays = mx.load(str(src / shard))
    arrays["model.layers.0.mlp.down_proj.global_scale"] = mx.array(2.0)
    mx.save_safetensors(str(src / shard), arrays, metadata={"format": "mlx"})
    index["weight_map"]["model.layers.0.mlp.down_proj.global_scale"] = shard
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    rc = t2mlx(["stream", str(src), str(tmp_path / "o"), "--dequantize"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "model.layers.0.mlp.down_proj" in err[0] and "global_scale" in err[0]
    assert not (tmp_path / "o").exists()
