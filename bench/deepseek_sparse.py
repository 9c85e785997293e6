"""A DeepSeek-V3-shaped float8 checkpoint made of file holes: headers only, 673 GB on paper.

    python bench/deepseek_sparse.py OUT_DIR [--layers N]

What the Hub ships: per-expert ``float8_e4m3fn`` weights, each with a
``weight_scale_inv`` of 128x128 blocks, bfloat16 norms/embeddings/router, the
first three layers dense, 158 safetensors shards of ~4.3 GB and a config.json
with ``quantization_config`` (``quant_method: fp8``, ``weight_block_size``).
Every tensor's bytes are a hole made by ``truncate``: planning and analysis can
be timed on the real tensor count (90,427) without the data. The multi-token
prediction layer DeepSeek ships as layer 61 is left out (transformers has no
module for it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct

HIDDEN, DENSE_INTER, EXPERT_INTER, VOCAB, LAYERS, EXPERTS, DENSE_LAYERS = 7168, 18432, 2048, 129280, 61, 256, 3
Q_LORA, KV_LORA, HEADS, QK_NOPE, QK_ROPE, V_HEAD = 1536, 512, 128, 128, 64, 128
SHARD_BYTES = 4_300_000_000
ITEMSIZE = {"BF16": 2, "F32": 4, "F8_E4M3": 1}

CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "hidden_size": HIDDEN,
    "intermediate_size": DENSE_INTER,
    "moe_intermediate_size": EXPERT_INTER,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": HEADS,
    "n_routed_experts": EXPERTS,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": DENSE_LAYERS,
    "q_lora_rank": Q_LORA,
    "kv_lora_rank": KV_LORA,
    "qk_nope_head_dim": QK_NOPE,
    "qk_rope_head_dim": QK_ROPE,
    "v_head_dim": V_HEAD,
    "vocab_size": VOCAB,
    "n_group": 8,
    "topk_group": 4,
    "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "quantization_config": {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
    },
}


def tensors(layers: int = LAYERS) -> list[tuple[str, str, list[int]]]:
    """(name, safetensors dtype, shape) in the order the Hub's shards hold them."""
    out = [("model.embed_tokens.weight", "BF16", [VOCAB, HIDDEN])]

    def fp8(name: str, shape: list[int]) -> None:
        out.append((name, "F8_E4M3", shape))
        out.append((name + "_scale_inv", "F32", [math.ceil(shape[0] / 128), math.ceil(shape[1] / 128)]))

    mlp = (("gate_proj", False), ("up_proj", False), ("down_proj", True))
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", "BF16", [HIDDEN]),
            (p + "post_attention_layernorm.weight", "BF16", [HIDDEN]),
            (p + "self_attn.q_a_layernorm.weight", "BF16", [Q_LORA]),
            (p + "self_attn.kv_a_layernorm.weight", "BF16", [KV_LORA]),
        ]
        fp8(p + "self_attn.q_a_proj.weight", [Q_LORA, HIDDEN])
        fp8(p + "self_attn.q_b_proj.weight", [HEADS * (QK_NOPE + QK_ROPE), Q_LORA])
        fp8(p + "self_attn.kv_a_proj_with_mqa.weight", [KV_LORA + QK_ROPE, HIDDEN])
        fp8(p + "self_attn.kv_b_proj.weight", [HEADS * (QK_NOPE + V_HEAD), KV_LORA])
        fp8(p + "self_attn.o_proj.weight", [HIDDEN, HEADS * V_HEAD])
        if i < DENSE_LAYERS:
            for n, down in mlp:
                fp8(p + f"mlp.{n}.weight", [HIDDEN, DENSE_INTER] if down else [DENSE_INTER, HIDDEN])
            continue
        out += [
            (p + "mlp.gate.weight", "BF16", [EXPERTS, HIDDEN]),
            (p + "mlp.gate.e_score_correction_bias", "F32", [EXPERTS]),
        ]
        for e in [str(e) for e in range(EXPERTS)] + ["shared"]:
            base = p + ("mlp.shared_experts." if e == "shared" else f"mlp.experts.{e}.")
            for n, down in mlp:
                fp8(base + f"{n}.weight", [HIDDEN, EXPERT_INTER] if down else [EXPERT_INTER, HIDDEN])
    return out + [("model.norm.weight", "BF16", [HIDDEN]), ("lm_head.weight", "BF16", [VOCAB, HIDDEN])]


def write(out_dir: str, layers: int = LAYERS) -> dict:
    """Write the shards (headers over holes), the index and config.json; returns counts."""
    groups, cur, size = [], [], 0
    for t in tensors(layers):
        n = math.prod(t[2]) * ITEMSIZE[t[1]]
        if cur and size + n > SHARD_BYTES:
            groups.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += n
    groups.append(cur)
    os.makedirs(out_dir, exist_ok=True)
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):06d}.safetensors"
        head, pos = {"__metadata__": {"format": "pt"}}, 0
        for t, dt, shape in group:
            nbytes = math.prod(shape) * ITEMSIZE[dt]
            head[t] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + nbytes]}
            pos += nbytes
            weight_map[t] = name
        raw = json.dumps(head).encode()
        raw += b" " * (-len(raw) % 8)
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + pos)
        total += pos
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(dict(CONFIG, num_hidden_layers=layers), f, indent=2)
    return {"tensors": len(weight_map), "shards": len(groups), "bytes": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output directory")
    ap.add_argument("--layers", type=int, default=LAYERS, help=f"decoder layers (default {LAYERS})")
    a = ap.parse_args()
    r = write(a.out, a.layers)
    print(f"{a.out}: {r['tensors']} tensors in {r['shards']} shards, {r['bytes'] / 1e9:.1f} GB of holes")


if __name__ == "__main__":
    main()
