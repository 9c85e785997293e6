"""Tiny random causal LMs built with transformers, saved the ways the Hub ships them.

Not a test module: test_mlx_lm.py and test_fp8_stream.py build their checkpoints
with it. Everything is offline and small (a few hundred KB per model).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

VOCAB = 256
PROMPT = [[1, 5, 9, 33, 100, 7, 250, 3]]


def _configs():
    from transformers import GemmaConfig, LlamaConfig, MixtralConfig, Qwen2Config

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    return {
        # RoPE bases other than mlx-lm's defaults: transformers 5 keeps them in rope_parameters,
        # which mlx-lm 0.32 does not read; the converted config.json must carry rope_theta.
        "llama": LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
        "qwen2": Qwen2Config(
            **common, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 3000.0}
        ),
        "mixtral": MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2),
        # Not a registered architecture (analysis/known.py): its first run builds the model.
        "gemma": GemmaConfig(**common, head_dim=16),
    }


MODELS = ("llama", "qwen2", "mixtral")


def build_model(kind: str, seed: int = 0, config=None):
    """A transformers model with random float32 weights (scaled up so logits are not all ~0)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config or _configs()[kind], dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
    return model


def save_tokenizer(d: Path) -> None:
    """A word-level tokenizer over the model's vocabulary (what mlx_lm.load and convert need)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, VOCAB)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(
        str(d)
    )


def save_safetensors(model, d: Path, shard: str = "60KB") -> Path:
    """``save_pretrained`` as sharded safetensors, plus a tokenizer."""
    model.save_pretrained(str(d), max_shard_size=shard)
    save_tokenizer(d)
    assert len(list(d.glob("model-*.safetensors"))) > 1, "expected a sharded checkpoint"
    return d


def state_dict_of(st_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors directory, in file order (Hub names, e.g. per-expert MoE weights)."""
    index = json.loads((st_dir / "model.safetensors.index.json").read_text())
    out: dict[str, torch.Tensor] = {}
    for f in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(st_dir / f)))
    return out


def write_bin_shards(
    tensors: dict[str, torch.Tensor],
    d: Path,
    n_shards: int,
    *,
    legacy: bool = False,
    tie: tuple[str, str] | None = None,
) -> None:
    """``pytorch_model-0000i-of-0000N.bin`` + ``pytorch_model.bin.index.json`` as transformers 4 wrote them.

    ``tie=(alias, target)`` stores ``alias`` as a view of ``target``'s storage in the
    same shard, as a tied ``lm_head.weight`` was pickled. ``legacy`` uses torch's
    pre-1.6 (non-zip) pickle format.
    """
    names = [n for n in tensors if not tie or n != tie[0]]
    per = -(-len(names) // n_shards)
    weight_map, total = {}, 0
    for i in range(n_shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = {n: tensors[n].clone() for n in names[i * per : (i + 1) * per]}
        if tie and tie[1] in part:
            part[tie[0]] = part[tie[1]]  # same storage, pickled once
        torch.save(part, str(d / fname), _use_new_zipfile_serialization=not legacy)
        for n, t in part.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    (d / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )


def copy_sidecars(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.suffix in (".json", ".txt", ".model") and not f.name.endswith(".index.json"):
            shutil.copy(f, dst / f.name)


def save_bin(
    st_dir: Path,
    d: Path,
    *,
    legacy: bool = False,
    extra: dict | None = None,
    tie: tuple[str, str] | None = None,
    n_shards: int = 3,
) -> Path:
    """The same weights as ``st_dir`` as sharded ``pytorch_model-*.bin`` (+ ``extra`` tensors)."""
    d.mkdir()
    tensors = state_dict_of(st_dir)
    tensors.update(extra or {})
    write_bin_shards(tensors, d, n_shards, legacy=legacy, tie=tie)
    copy_sidecars(st_dir, d)
    return d


def torch_logits(model, prompt=PROMPT) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(prompt)).logits.float().numpy()


def rotary_buffers(model, n_layers: int) -> dict[str, torch.Tensor]:
    """``rotary_emb.inv_freq`` per layer, as transformers < 4.31 saved in Llama checkpoints."""
    inv = model.model.rotary_emb.inv_freq.detach().clone()
    return {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv.clone() for i in range(n_layers)}


def dir_listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))
