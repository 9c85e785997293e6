"""float8 checkpoints through `t2mlx stream`: dequantized as torch computes it, re-quantized as MLX does.

Oracles: torch's ``(w.float() * expanded_scale).to(bfloat16)`` for every float8
tensor, ``mx.quantize`` of that for ``--q-bits``, transformers' logits and
mlx-lm's own converter for a DeepSeek-V3-style float8 Llama.
"""

from __future__ import annotations

import json
from pathlib import Path

import llm_checkpoints as L
import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import rehash_shard
from mlx.utils import tree_flatten
from mlx_lm.convert import convert as mlx_lm_convert
from mlx_lm.utils import load_model
from safetensors.torch import save_file

from torch2mlx.cli import main as t2mlx

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def random_fp8(shape, dtype, seed):
    """Finite float8 values over the format's whole range (subnormals, +-0, the largest)."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    w = bits.view(dtype)
    bits[~torch.isfinite(w.float())] = 0x3C
    return bits.view(dtype)


def expand(scale: torch.Tensor, shape, blocks) -> torch.Tensor:
    s = scale.float().reshape((1,) * (len(shape) - scale.dim()) + tuple(scale.shape))
    for ax, b in enumerate(blocks):
        if s.shape[ax] != 1:
            s = s.repeat_interleave(b, dim=ax).narrow(ax, 0, shape[ax])
    return s


def torch_dequant(w: torch.Tensor, scale: torch.Tensor | None, blocks=None, out=torch.bfloat16) -> torch.Tensor:
    if scale is None:
        return w.to(out)
    return (w.float() * expand(scale, w.shape, blocks or (128, 128))).to(out)


def scale_like(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 1e-2 + 1e-4).to(dtype)


# name -> (float8 tensor, scale tensor name or None, scale, per-axis block sizes)
def raw_checkpoint() -> tuple[dict, dict]:
    t = {
        "blk.a.weight": random_fp8((300, 200), E4M3, 1),  # 128x128 blocks, partial edges both ways
        "blk.a.weight_scale_inv": scale_like((3, 2), 2),
        "blk.b.weight": random_fp8((256, 384), E5M2, 3),  # whole blocks, bfloat16 scales
        "blk.b.weight_scale_inv": scale_like((2, 3), 4, torch.bfloat16),
        "blk.c.weight": random_fp8((64, 96), E4M3, 5),  # per-tensor scalar scale
        "blk.c.weight_scale": scale_like((), 6),
        "blk.c.input_scale": scale_like((), 7),  # activation scale: no MLX use
        "blk.d.weight": random_fp8((64, 128), E5M2, 8),  # per-tensor scale of shape [1]
        "blk.d.weight_scale": scale_like((1,), 9),
        "blk.e.weight": random_fp8((32, 64), E4M3, 10),  # no scale: exact cast
        "blk.f.weight": random_fp8((130, 256), E4M3, 11),  # partial row block, quantizable
        "blk.f.weight_scale_inv": scale_like((2, 2), 12),
        "experts.w": random_fp8((4, 200, 130), E4M3, 13),  # stacked experts
        "experts.w_scale_inv": scale_like((4, 2, 2), 14),
        "norm.weight": torch.rand(200, generator=torch.Generator().manual_seed(15)).to(torch.bfloat16),
    }
    scales = {
        "blk.a.weight": "blk.a.weight_scale_inv",
        "blk.b.weight": "blk.b.weight_scale_inv",
        "blk.c.weight": "blk.c.weight_scale",
        "blk.d.weight": "blk.d.weight_scale",
        "blk.e.weight": None,
        "blk.f.weight": "blk.f.weight_scale_inv",
        "experts.w": "experts.w_scale_inv",
    }
    return t, scales


def reference(t: dict, scales: dict) -> dict[str, torch.Tensor]:
    ref = {}
    for name, s in scales.items():
        w = t[name]
        blocks = (1, 128, 128) if w.dim() == 3 else (128, 128)
        ref[name] = torch_dequant(w, t[s] if s else None, blocks)
    ref["norm.weight"] = t["norm.weight"]
    return ref


def bits(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.view(torch.int16).numpy().view(np.uint16) if a.dtype == torch.bfloat16 else a.numpy()
    return np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a)


def load_out(out: Path) -> dict[str, mx.array]:
    d = {}
    for f in sorted(out.glob("model*.safetensors")):
        d.update(mx.load(str(f)))
    return d


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def raw_src(request, tmp_path_factory):
    t, scales = raw_checkpoint()
    d = tmp_path_factory.mktemp(f"fp8-{request.param}")
    names = list(t)
    # Two shards: a weight and its scale in different files must still pair up.
    halves = [names[::2], names[1::2]]
    index = {}
    for i, part in enumerate(halves):
        f = (
            f"model-{i + 1:05d}-of-00002.safetensors"
            if request.param == "safetensors"
            else f"pytorch_model-{i + 1:05d}-of-00002.bin"
        )
        tensors = {n: t[n].contiguous() for n in part}
        if request.param == "safetensors":
            save_file(tensors, str(d / f))
        else:
            torch.save(tensors, str(d / f))
        index.update({n: f for n in part})
    idx_name = "model.safetensors.index.json" if request.param == "safetensors" else "pytorch_model.bin.index.json"
    (d / idx_name).write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (d / "config.json").write_text(
        json.dumps(
            {
                "model_type": "toy",
                "quantization_config": {
                    "quant_method": "fp8",
                    "fmt": "e4m3",
                    "activation_scheme": "dynamic",
                    "weight_block_size": [128, 128],
                },
            }
        )
    )
    return d, t, scales


def test_dequantized_like_torch_and_scales_gone(raw_src, tmp_path):
    src, t, scales = raw_src
    out = tmp_path / "out"
    assert t2mlx(["stream", str(src), str(out), "--quiet"]) == 0
    got = load_out(out)
    ref = reference(t, scales)
    assert set(got) == set(ref)  # every *_scale*, input_scale gone; nothing else
    for name, want in ref.items():
        assert got[name].dtype == mx.bfloat16 and tuple(got[name].shape) == tuple(want.shape), name
        assert bits(got[name]).tobytes() == bits(want).tobytes(), name
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert t2mlx(["verify", str(src), str(out)]) == 0


def test_dequantize_then_quantize_is_mx_quantize_of_the_reference(raw_src, tmp_path):
    src, t, scales = raw_src
    out = tmp_path / "out"
    assert t2mlx(["stream", str(src), str(out), "--quiet", "--q-bits", "4"]) == 0
    got = load_out(out)
    ref = reference(t, scales)
    quantized = sorted(n for n, w in ref.items() if w.dim() == 2 and w.shape[-1] % 64 == 0)
    assert quantized == ["blk.b.weight", "blk.d.weight", "blk.e.weight", "blk.f.weight"]
    for name, want in ref.items():
        w = mx.array(bits(want)).view(mx.bfloat16)
        if name in quantized:
            base = name[: -len(".weight")]
            for g, r in zip(
                (got[name], got[base + ".scales"], got[base + ".biases"]),
                mx.quantize(w, group_size=64, bits=4),
                strict=True,
            ):
                assert g.dtype == r.dtype and bits(g).tobytes() == bits(r).tobytes(), name
        else:
            assert bits(got[name]).tobytes() == bits(want).tobytes(), name
    assert not any("scale" in n and not n.endswith(".scales") for n in got)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"] == cfg["quantization_config"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert t2mlx(["verify", str(src), str(out)]) == 0


def test_verify_recomputes_fp8_values(raw_src, tmp_path):
    """A changed dequantized value is caught by recomputation, not only by the shard hash."""
    src, _, _ = raw_src
    out = tmp_path / "out"
    assert t2mlx(["stream", str(src), str(out), "--quiet"]) == 0
    manifest = json.loads((out / "torch2mlx.json").read_text())
    shard = out / manifest["tensors"]["blk.a.weight"]["shard"]
    header = json.loads(shard.read_bytes()[8 : 8 + int.from_bytes(shard.read_bytes()[:8], "little")])
    start = 8 + int.from_bytes(shard.read_bytes()[:8], "little") + header["blk.a.weight"]["data_offsets"][0]
    raw = bytearray(shard.read_bytes())
    raw[start + 1] ^= 0x01  # one bfloat16 of blk.a.weight, sign/exponent byte
    shard.write_bytes(bytes(raw))
    rehash_shard(out, shard.name)
    assert t2mlx(["verify", str(src), str(out)]) == 1


# ---- float8 Llamas, end to end in mlx-lm ------------------------------------------
# "block": DeepSeek-V3 style, float32 weight_scale_inv per 128x128 block (partial edges
# here: hidden 192, intermediate 320). "channel": compressed-tensors FP8 (llm-compressor's
# FP8_DYNAMIC), one weight_scale per output row and the config mlx-lm refuses to load.

SCHEMES = {
    "block": (
        "_scale_inv",
        {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
    ),
    "channel": (
        "_scale",
        {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "quantization_status": "compressed",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True},
                }
            },
        },
    ),
}


def fp8_quantize(w: torch.Tensor, scheme: str, block=128):
    """(float8_e4m3fn weight, float32 scale) with per-block or per-row amax / 448 scales."""
    if scheme == "channel":
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
        blocks = (1, w.shape[1])
    else:
        rows, cols = -(-w.shape[0] // block), -(-w.shape[1] // block)
        scale = torch.empty(rows, cols)
        for i in range(rows):
            for j in range(cols):
                blk = w[i * block : (i + 1) * block, j * block : (j + 1) * block]
                scale[i, j] = blk.abs().max().clamp(min=1e-12) / 448.0
        blocks = (block, block)
    q = (w / expand(scale, w.shape, blocks)).to(E4M3)
    return q, scale, blocks


@pytest.fixture(scope="module", params=sorted(SCHEMES))
def fp8_llama(request, tmp_path_factory):
    """(float8 checkpoint dir, torch-dequantized bfloat16 dir, transformers' logits)."""
    from transformers import LlamaConfig

    scheme = request.param
    suffix, qconfig = SCHEMES[scheme]
    cfg = LlamaConfig(
        vocab_size=L.VOCAB,
        hidden_size=192,
        intermediate_size=320,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = L.build_model("llama", seed=3, config=cfg)
    root = tmp_path_factory.mktemp(f"fp8-llama-{scheme}")
    tensors, deq32, deq16 = {}, {}, {}
    for name, p in model.state_dict().items():
        if name.endswith("proj.weight"):  # every Linear but lm_head
            q, s, blocks = fp8_quantize(p, scheme)
            tensors[name], tensors[name + suffix] = q, s
            deq32[name] = torch_dequant(q, s, blocks, out=torch.float32)
            deq16[name] = torch_dequant(q, s, blocks)
        else:  # the rest in bfloat16, as these checkpoints ship it
            tensors[name] = deq16[name] = p.to(torch.bfloat16)
            deq32[name] = tensors[name].float()
    config = json.loads(cfg.to_json_string())
    src, bf16 = root / "src", root / "bf16"
    for d, weights, conf in ((src, tensors, dict(config, quantization_config=qconfig)), (bf16, deq16, config)):
        d.mkdir()
        save_file(weights, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(conf))
        L.save_tokenizer(d)
    model.load_state_dict(deq32)  # transformers with the dequantized weights
    return src, bf16, L.torch_logits(model)


@pytest.mark.slow
def test_fp8_llama_float32_logits_equal_transformers(fp8_llama, tmp_path):
    src, _, ref = fp8_llama
    out = tmp_path / "out"
    assert t2mlx(["stream", str(src), str(out), "--quiet", "--dtype", "float32"]) == 0
    model, cfg = load_model(out)
    assert "quantization_config" not in cfg and "quantization" not in cfg
    got = np.array(model(mx.array(L.PROMPT)))
    assert np.abs(got - ref).max() <= 1e-4


def test_fp8_llama_q4_equals_mlx_lm_on_torch_dequantized(fp8_llama, tmp_path):
    src, bf16, _ = fp8_llama
    ours = tmp_path / "ours"
    assert t2mlx(["stream", str(src), str(ours), "--quiet", "--q-bits", "4"]) == 0
    ref = tmp_path / "ref"
    mlx_lm_convert(str(bf16), str(ref), quantize=True, q_bits=4, q_group_size=64)
    a, _ = load_model(ours)
    b, _ = load_model(ref)
    pa, pb = dict(tree_flatten(a.parameters())), dict(tree_flatten(b.parameters()))
    assert pa.keys() == pb.keys()
    assert all(bits(pa[k]).tobytes() == bits(pb[k]).tobytes() for k in pa)
    x = mx.array(L.PROMPT)
    assert np.abs(np.array(a(x).astype(mx.float32)) - np.array(b(x).astype(mx.float32))).max() <= 1e-3
    assert t2mlx(["verify", str(src), str(ours)]) == 0


def test_report_names_the_dequantized_weights_once(raw_src):
    """Scaled float8 weights are dequantized, not cast: one note for all, a cast warning only where no scale is."""
    from helpers import run_main

    src, t, scales = raw_src
    proc = run_main("stream", src, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    cast_warned = {w.split(":")[0] for w in rep["warnings"] if "has no MLX equivalent" in w}
    assert cast_warned == {n for n, s in scales.items() if s is None} == {"blk.e.weight"}
    scaled = sum(1 for s in scales.values() if s)
    assert f"{scaled} float8 weight(s) dequantized to bfloat16 with their scales" in " ".join(rep["notes"])


def test_model_rules_cover_an_fp8_llama_without_scale_warnings(fp8_llama):
    """With the analyzer on, the scales (folded away) are not reported as tensors lacking model rules."""
    from helpers import run_main

    src, _, _ = fp8_llama
    rep = json.loads(run_main("stream", src, "--dry-run", "--json").stdout)
    assert not [w for w in rep["warnings"] if "_scale" in w], rep["warnings"]
    scales = sum(1 for w in rep["dropped"] if w["why"] == "float8 scale, folded into its weight")
    assert scales and any(
        note.startswith("rules from the model") and f"(and {scales} float8 scales)" in note for note in rep["notes"]
    ), rep["notes"]
