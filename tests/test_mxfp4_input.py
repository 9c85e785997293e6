"""gpt-oss's MXFP4 checkpoints (`*_blocks` + `*_scales`) -> MLX mxfp4 byte for byte, under mlx-lm's gpt_oss names.

The checkpoint is a tiny transformers GptOssForCausalLM whose expert weights are packed by
the reference packer below (written from the format's description: 32 e2m1 codes per block,
two per byte low nibble first, one e8m0 scale 2**(s-127) per block). Oracles: transformers
loading that checkpoint on the CPU (it dequantizes MXFP4 itself) for the logits; the reference
dequantizer, cross-checked against what transformers loaded, for ``mx.dequantize`` of our output.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import assert_no_index, assert_one_error, run_main
from safetensors.numpy import load_file as np_load
from safetensors.torch import save_file

pytestmark = pytest.mark.slow

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
PROMPT = [[1, 5, 9, 33, 100, 7, 250, 3]]


def pack(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``[..., rows, K]`` -> (blocks ``[..., rows, K/32, 16]``, scales ``[..., rows, K/32]``)."""
    g = w.reshape(*w.shape[:-1], -1, 32)
    amax = np.abs(g).max(-1)
    e = np.clip(np.ceil(np.log2(np.maximum(amax, 1e-30) / 6)), -127, 127).astype(np.int32)
    codes = np.abs((g / np.exp2(e)[..., None].astype(np.float32))[..., None] - E2M1).argmin(-1).astype(np.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), (e + 127).astype(np.uint8)


def unpack(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The reference dequantization: ``[..., rows, K]`` float32."""
    codes = np.stack([blocks & 15, blocks >> 4], -1).reshape(*blocks.shape[:-1], -1)
    return (E2M1[codes] * np.exp2(scales.astype(np.float32) - 127)[..., None]).reshape(*blocks.shape[:-2], -1)


def gpt_oss_config():
    from transformers import GptOssConfig

    return GptOssConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=4,
        max_position_embeddings=4096,
        layer_types=["sliding_attention", "full_attention"],
        # mlx-lm's YaRN and transformers' differ (truncate=False) by ~1e-2 in these logits whatever the
        # weights: plain RoPE keeps the comparison about the weights.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    """(checkpoint dir, the MXFP4 tensors as saved, transformers' logits loading that dir)."""
    from transformers import AutoModelForCausalLM, GptOssForCausalLM

    d = tmp_path_factory.mktemp("gpt_oss")
    torch.manual_seed(0)
    model = GptOssForCausalLM(gpt_oss_config()).eval()
    sd = {}
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
            else:
                p.normal_(0, 0.05)
        for name, p in model.state_dict().items():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                # transformers holds experts as (E, in, out); the checkpoint packs (E, out, in) rows
                blocks, scales = pack(p.numpy().transpose(0, 2, 1).copy())
                blocks[0, 0, 0, 0] = 0x8F  # -0.0 and -6: both nibbles' sign bits
                scales[0, 1, 0] = 0  # the smallest scale, 2**-127
                sd[name + "_blocks"], sd[name + "_scales"] = torch.from_numpy(blocks), torch.from_numpy(scales)
            else:
                sd[name] = p.contiguous()
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = gpt_oss_config().to_dict()
    cfg["architectures"] = ["GptOssForCausalLM"]
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}
    (d / "config.json").write_text(json.dumps(cfg))
    loaded = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = loaded(torch.tensor(PROMPT)).logits.float().numpy()
        for i, layer in enumerate(loaded.model.layers):
            for proj in ("gate_up_proj", "down_proj"):
                key = f"model.layers.{i}.mlp.experts.{proj}"
                ref = unpack(sd[key + "_blocks"].numpy(), sd[key + "_scales"].numpy()).transpose(0, 2, 1)
                # the reference dequantizer agrees with transformers' own, bit for bit
                assert np.array_equal(getattr(layer.mlp.experts, proj).float().numpy(), ref), key
    return d, {k: v.numpy() for k, v in sd.items() if k.endswith(("_blocks", "_scales", "_bias"))}, logits


def converted(src: Path, out: Path) -> Path:
    proc = run_main("stream", src, out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_gpt_oss_mxfp4_loads_in_mlx_lm_with_transformers_logits(gpt_oss, tmp_path):
    from mlx_lm.utils import load_model

    src, _, logits = gpt_oss
    out = converted(src, tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"] == cfg["quantization_config"] == {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    model, _ = load_model(out)
    got = np.array(model(mx.array(PROMPT)).astype(mx.float32))
    assert got.shape == logits.shape and np.abs(got - logits).max() <= 2e-3
    assert run_main("verify", src, out).returncode == 0


def test_repack_is_the_source_bytes_and_dequantizes_exactly(gpt_oss, tmp_path):
    src, packed, _ = gpt_oss
    out = converted(src, tmp_path / "out")
    got = {}
    for f in out.glob("*.safetensors"):
        got.update(np_load(str(f)))
    assert not any(k.endswith(("_blocks", "_scales", "_bias")) or "gate_up_proj" in k for k in got)
    for i in range(2):
        p = f"model.layers.{i}.mlp.experts."
        parts = {
            "gate_proj": ("gate_up_proj", slice(0, None, 2)),
            "up_proj": ("gate_up_proj", slice(1, None, 2)),
            "down_proj": ("down_proj", slice(None)),
        }
        for name, (stored, rows) in parts.items():
            blocks, scales = packed[p + stored + "_blocks"][:, rows], packed[p + stored + "_scales"][:, rows]
            w, s = got[p + name + ".weight"], got[p + name + ".scales"]
            assert w.dtype == np.uint32 and w.shape == blocks.shape[:2] + (blocks.shape[2] * 4,)
            assert w.tobytes() == np.ascontiguousarray(blocks).tobytes()
            assert s.dtype == np.uint8 and s.tobytes() == np.ascontiguousarray(scales).tobytes()
            deq = mx.dequantize(mx.array(w), mx.array(s), mode="mxfp4", dtype=mx.float32)
            assert np.array_equal(np.array(deq), unpack(blocks, scales)), p + name
            bias = packed[p + stored + "_bias"][:, rows]
            assert np.array_equal(got[p + name + ".bias"], bias), p + name


def test_blocks_without_scales_is_one_error(gpt_oss, tmp_path):
    src, _, _ = gpt_oss
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((src / "config.json").read_text())
    sd = np_load(str(src / "model.safetensors"))
    del sd["model.layers.1.mlp.experts.down_proj_scales"]
    from safetensors.numpy import save_file as np_save

    np_save(sd, str(bad / "model.safetensors"))
    err = assert_one_error(run_main("stream", bad, tmp_path / "o"), "model.layers.1.mlp.experts.down_proj_blocks")
    assert "down_proj_scales" in err and "model.safetensors" in err
    assert_no_index(tmp_path / "o")
    sd["model.layers.1.mlp.experts.down_proj_scales"] = np.zeros((4, 64, 3), np.uint8)  # 2 blocks per row
    np_save(sd, str(bad / "model.safetensors"))
    assert_one_error(run_main("stream", bad, tmp_path / "o"), "down_proj_blocks", "[4, 64, 2, 16]", "[4, 64, 3]")
    assert_no_index(tmp_path / "o")


def test_quantizing_mxfp4_again_is_refused(gpt_oss, tmp_path):
    src, _, _ = gpt_oss
    assert_one_error(run_main("stream", src, tmp_path / "o", "--q-bits", "4"), "MXFP4 already", "--q-bits")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unquantized_gpt_oss_loads_in_mlx_lm(dtype, tmp_path):
    """A float gpt-oss (transformers' save_pretrained): its experts' gate_up_proj [E, hidden, 2I] (gate/up
    interleaved along the outputs) becomes gate_proj/up_proj [E, I, hidden], down_proj is transposed,
    biases split: mlx-lm loads it and its logits match transformers' (float32: <= 1e-4)."""
    from mlx_lm.utils import load_model
    from transformers import GptOssForCausalLM

    torch.manual_seed(1)
    model = GptOssForCausalLM(gpt_oss_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2 if p.dim() >= 2 else 0.05)
    model = model.to(dtype)
    src = tmp_path / "src"
    model.save_pretrained(src)
    with torch.no_grad():
        ref = model.float()(torch.tensor(PROMPT)).logits.numpy()
    out = tmp_path / "out"
    # MLX's CPU gather_mm (the experts' matmul) runs in float32 only: a bfloat16 source is written as float32
    # (exactly) so that mlx-lm can run it here
    proc = run_main("stream", src, out, *(["--dtype", "float32"] if dtype == torch.bfloat16 else []))
    assert proc.returncode == 0, proc.stderr
    assert "gate_up_proj split into gate_proj/up_proj" in proc.stdout
    got = {}
    for f in out.glob("*.safetensors"):
        got.update({k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(f)).items()})
    assert not any("gate_up_proj" in k for k in got)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    p = "model.layers.1.mlp.experts."
    np.testing.assert_array_equal(got[p + "gate_proj.weight"], sd[p + "gate_up_proj"][:, :, 0::2].transpose(0, 2, 1))
    np.testing.assert_array_equal(got[p + "up_proj.weight"], sd[p + "gate_up_proj"][:, :, 1::2].transpose(0, 2, 1))
    np.testing.assert_array_equal(got[p + "down_proj.weight"], sd[p + "down_proj"].transpose(0, 2, 1))
    np.testing.assert_array_equal(got[p + "up_proj.bias"], sd[p + "gate_up_proj_bias"][:, 1::2])
    mlx_model, _ = load_model(out)
    logits = np.array(mlx_model(mx.array(PROMPT)).astype(mx.float32))
    assert np.abs(logits - ref).max() <= 1e-4
    assert run_main("verify", src, out).returncode == 0
