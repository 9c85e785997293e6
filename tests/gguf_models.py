"""Tiny HF models written to GGUF in the tests, the way convert_hf_to_gguf.py writes them (gguf-py's writer).

Names through gguf-py's ``TensorNameMap``, llama's Q/K rotary permutation, Gemma's norm + 1,
a small byte-level BPE tokenizer (``tokenizer.ggml.model = gpt2``), and any GGML type through
``gguf.quants.quantize``.
"""

from __future__ import annotations

import gguf
import numpy as np

VOCAB = 320


def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


def tokenizer(vocab: int = VOCAB):
    chars = byte_chars()
    tokens = list(chars)
    merges = []
    letters = [c for c in "etaoinshrdlucmfw"]
    for a in letters:
        for b in letters:
            if len(tokens) >= vocab - 2:
                break
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    tokens += ["<s>", "</s>"]
    return tokens, merges


# Where each type keeps its float16 super-block scale(s) (d, dmin): set small in random blocks.
_D_AT = {
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (-2,),
    "Q2_K": (-4, -2),
    "Q3_K": (-2,),
    "IQ4_NL": (0,),
    "IQ4_XS": (0,),
    "TQ2_0": (-2,),
    "Q8_0": (0,),
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
}


def random_blocks(qtype: str, rows: int, cols: int, rng, d: float = 2e-4) -> np.ndarray:
    """Raw GGML rows of random codes and sub-scales (gguf-py quantizes no K-quant), super-scales set to ``d``."""
    block, tsize = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    raw = rng.integers(0, 256, (rows * cols // block, tsize), dtype=np.uint8)
    for at in _D_AT[qtype]:
        at = at % tsize
        raw[:, at : at + 2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
    return raw.reshape(rows, cols // block * tsize)


def hf_model(kind: str, seed: int = 0, hidden: int = 64):
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        bos_token_id=VOCAB - 2,
        eos_token_id=VOCAB - 1,
    )
    if kind == "llama":
        cfg = tf.LlamaConfig(**common, tie_word_embeddings=False)
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**common, tie_word_embeddings=False)
        model = tf.Qwen2ForCausalLM(cfg)
    elif kind == "qwen3":
        cfg = tf.Qwen3Config(**common, head_dim=hidden // 4, tie_word_embeddings=False)
        model = tf.Qwen3ForCausalLM(cfg)
    elif kind == "phi3":
        cfg = tf.Phi3Config(**common, tie_word_embeddings=False, pad_token_id=0)
        model = tf.Phi3ForCausalLM(cfg)
    elif kind == "gemma3":  # 6 layers: mlx-lm's gemma3_text takes its global mask from layer 6 (pattern 6)
        common["num_hidden_layers"] = 6
        cfg = tf.Gemma3TextConfig(
            **common,
            head_dim=hidden // 4,
            tie_word_embeddings=True,
            sliding_window=64,
            query_pre_attn_scalar=hidden // 4,
        )
        model = tf.Gemma3ForCausalLM(cfg)
    elif kind == "gemma2":
        cfg = tf.Gemma2Config(
            **common,
            head_dim=hidden // 4,
            tie_word_embeddings=True,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            query_pre_attn_scalar=hidden // 4,
            sliding_window=64,
        )
        model = tf.Gemma2ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    with torch.no_grad():  # norms away from 1, so a missed +1/-1 shows
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(torch.randn_like(p) * 0.1 + (0.0 if kind.startswith("gemma") else 1.0))
    return model.float().eval()


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write(path: str, kind: str, model, qtype=None, seed: int = 0, **writer) -> None:
    """Write ``model`` as a GGUF file; ``qtype(gguf_name, shape)`` picks each 2-D weight's GGML type (F32 default).

    Types gguf-py cannot quantize (the K-quants, IQ4, TQ2) get random blocks instead of the weight."""
    rng = np.random.default_rng(seed)
    arch = kind
    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    cfg = model.config
    tmap = gguf.get_tensor_name_map(archs[arch], cfg.num_hidden_layers)
    w = gguf.GGUFWriter(path, arch, **writer)
    w.add_name(f"tiny-{kind}")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = getattr(cfg, "rope_theta", None) or cfg.rope_parameters
    rope = rope.get("full_attention", rope)["rope_theta"] if isinstance(rope, dict) else rope
    w.add_rope_freq_base(rope)
    w.add_vocab_size(cfg.vocab_size)
    if kind == "qwen3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if kind == "phi3":
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    if kind == "gemma3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(cfg.sliding_window)
    if kind == "gemma2":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
    tokens, merges = tokenizer(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 2) + [3, 3])
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg.vocab_size - 2)
    w.add_eos_token_id(cfg.vocab_size - 1)
    w.add_add_bos_token(False)
    w.add_pad_token_id(0)
    for name, t in model.state_dict().items():
        if kind in ("gemma2", "gemma3") and name == "lm_head.weight":
            continue  # tied
        base, _, suffix = name.rpartition(".")
        gname = tmap.get_name(base)
        assert gname is not None, name
        gname += "." + suffix
        data = t.detach().float().numpy().copy()
        if kind == "llama" and base.endswith("q_proj"):
            data = _permute(data, cfg.num_attention_heads)
        if kind == "llama" and base.endswith("k_proj"):
            data = _permute(data, cfg.num_key_value_heads)
        if kind in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            data = data + 1
        qt = qtype(gname, data.shape) if (qtype and data.ndim == 2) else None
        if qt is None or qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, data.astype(np.float32))
        elif qt == gguf.GGMLQuantizationType.F16:
            w.add_tensor(gname, data.astype(np.float16))
        elif qt == gguf.GGMLQuantizationType.BF16:
            w.add_tensor(gname, gguf.quants.quantize(data, qt), raw_dtype=qt)
        else:
            try:
                q = gguf.quants.quantize(data, qt)
            except NotImplementedError:
                q = random_blocks(qt.name, data.shape[0], data.shape[1], rng)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
