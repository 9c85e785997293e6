"""Reference GPTQ / AWQ quantizers, packers and dequantizers for the tests, written from the formats'
public descriptions (bit streams built bit by bit: independent of torch2mlx's packing code)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import llm_checkpoints as L
import numpy as np
import torch
from safetensors.torch import save_file

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pack_stream(codes: np.ndarray, bits: int) -> np.ndarray:
    """(n, k) codes -> (n, k*bits/32) uint32: each row one continuous bit stream, least significant bit first."""
    n, k = codes.shape
    stream = ((codes.astype(np.uint64)[..., None] >> np.arange(bits, dtype=np.uint64)) & 1).reshape(n, k * bits)
    words = (stream.reshape(n, -1, 32) << np.arange(32, dtype=np.uint64)).sum(axis=-1)
    return words.astype(np.uint32)


def quantize(w: np.ndarray, bits: int, gs: int, sym: bool, act_order: bool, seed: int):
    """GPTQ-style round-to-nearest of w (out, in): codes (in, out), float16 scales and int zeros (G, out), g_idx."""
    out_f, in_f = w.shape
    gs = in_f if gs == -1 else gs
    groups = in_f // gs
    if act_order:
        perm = np.random.default_rng(seed).permutation(in_f)
        g_idx = np.empty(in_f, np.int32)
        g_idx[perm] = np.arange(in_f) // gs
    else:
        g_idx = (np.arange(in_f) // gs).astype(np.int32)
    maxq = 2**bits - 1
    q = np.zeros((in_f, out_f), np.int64)
    scales = np.zeros((groups, out_f), np.float16)
    zeros = np.zeros((groups, out_f), np.int64)
    for g in range(groups):
        cols = np.nonzero(g_idx == g)[0]
        x = w[:, cols]  # (out, members)
        lo, hi = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
        if sym:
            hi = np.maximum(-lo, hi)
            lo = -hi
        scale = np.maximum((hi - lo) / maxq, 1e-8)
        zero = np.full(out_f, (maxq + 1) // 2) if sym else np.clip(np.rint(-lo / scale), 0, maxq).astype(np.int64)
        q[cols] = np.clip(np.rint(x / scale[:, None]) + zero[:, None], 0, maxq).T
        scales[g], zeros[g] = scale.astype(np.float16), zero
    return q, scales, zeros, g_idx


def dequantize(q, scales, zeros, g_idx) -> np.ndarray:
    """The formats' dequantization, float32: W[o, i] = scale[g, o] * (q[i, o] - zero[g, o]), g = g_idx[i]."""
    s = scales.astype(np.float32)[g_idx]  # (in, out)
    z = zeros.astype(np.float32)[g_idx]
    return (s * (q.astype(np.float32) - z)).T.copy()


def gptq_tensors(q, scales, zeros, g_idx, bits, v2: bool) -> dict:
    stored = zeros if v2 else zeros - 1  # v1 stores the zero point minus one
    stored = stored & (2**bits - 1)
    return {
        "qweight": torch.from_numpy(pack_stream(q.T, bits).T.copy().view(np.int32)),
        "qzeros": torch.from_numpy(pack_stream(stored, bits).view(np.int32)),
        "scales": torch.from_numpy(scales),
        "g_idx": torch.from_numpy(g_idx),
    }


def gptq_read_zeros(stored: np.ndarray, v2: bool) -> np.ndarray:
    return stored + (0 if v2 else 1)


def awq_pack(codes: np.ndarray) -> np.ndarray:
    """(rows, out) 4-bit codes -> (rows, out/8) int32, nibble k of word j holding output 8j + AWQ_ORDER[k]."""
    rows, out = codes.shape
    words = np.zeros((rows, out // 8), np.uint32)
    for j in range(out // 8):
        for k in range(8):
            words[:, j] |= codes[:, 8 * j + AWQ_ORDER[k]].astype(np.uint32) << np.uint32(4 * k)
    return words.view(np.int32)


def awq_tensors(q, scales, zeros) -> dict:
    return {
        "qweight": torch.from_numpy(awq_pack(q)),
        "qzeros": torch.from_numpy(awq_pack(zeros)),
        "scales": torch.from_numpy(scales),
    }


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=L.VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )


def write_quantized_llama(
    root: Path,
    method: str,
    bits: int,
    gs: int,
    sym: bool,
    act: bool,
    v2: bool = False,
    dtype=torch.float32,
    dynamic: dict | None = None,
):
    """A tiny Llama (``dtype``: its unquantized tensors') with every decoder Linear packed.

    Returns (dir, {module: float32 dequantized (out, in)}, transformers' logits on the dequantized weights)."""
    cfg = llama_config()
    model = L.build_model("llama", seed=7, config=cfg)
    tensors, deq = {}, {}
    for i, (name, p) in enumerate(model.state_dict().items()):
        base = name[: -len(".weight")]
        if name.endswith(".weight") and base.rsplit(".", 1)[-1] in LINEARS:
            mb, mg = bits, gs
            for pattern, override in (dynamic or {}).items():  # GPTQModel's per-module overrides
                if re.match(pattern.removeprefix("+:"), base):
                    mb, mg = override.get("bits", bits), override.get("group_size", gs)
                    break
            q, scales, zeros, g_idx = quantize(p.numpy(), mb, mg, sym, act, seed=i)
            parts = gptq_tensors(q, scales, zeros, g_idx, mb, v2) if method == "gptq" else awq_tensors(q, scales, zeros)
            for k, t in parts.items():
                tensors[f"{base}.{k}"] = t
            deq[base] = dequantize(q, scales, zeros, g_idx)
        else:  # the unquantized tensors in the model's dtype
            tensors[name] = p.detach().to(dtype)
    qc = (
        {
            "quant_method": "gptq",
            "bits": bits,
            "group_size": gs,
            "desc_act": act,
            "sym": sym,
            "damp_percent": 0.01,
            "true_sequential": True,
            "static_groups": False,
            "checkpoint_format": "gptq_v2" if v2 else "gptq",
        }
        | ({"dynamic": dynamic} if dynamic else {})
        if method == "gptq"
        else {"quant_method": "awq", "bits": bits, "group_size": gs, "zero_point": True, "version": "gemm"}
    )
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "model.safetensors"))
    (root / "config.json").write_text(
        json.dumps(dict(json.loads(cfg.to_json_string()), architectures=["LlamaForCausalLM"], quantization_config=qc))
    )
    L.save_tokenizer(root)
    model.load_state_dict({**model.state_dict(), **{b + ".weight": torch.from_numpy(w) for b, w in deq.items()}})
    return root, deq, L.torch_logits(model)
