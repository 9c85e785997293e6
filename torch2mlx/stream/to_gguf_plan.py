"""The plan of ``to_gguf``: one item per GGUF tensor: its llama.cpp name (gguf-py's own ``TensorNameMap`` for the
architecture config.json names), its GGML type, and what becomes of the MLX values on the way:

- llama.cpp's conventions, as ``convert_hf_to_gguf.py`` applies them: the rotary permutation of Q and K
  (rows of each head interleaved) for the llama family (llama, mistral); ``w + 1`` for Gemma's RMSNorm
  weights (HF and MLX compute ``x * (1 + w)``, llama.cpp ``x * w``); 1-D tensors stay F32.
- MLX affine 8-/4-bit weights in groups of 32 whose every group is symmetric (bias = -2^(bits-1) * scale,
  scale exact in float16) repack losslessly into Q8_0/Q4_0: codes and scales are moved, not recomputed.
  Anything else is dequantized (``stream.dequant``, block by block) and quantized with gguf-py's own
  quantizers (``gguf.quants.quantize``), or ours for the K-quants (``core.kquants``; the mixes such as
  Q4_K_M in ``to_gguf_mix``); each tensor's max abs / rel error is measured while writing.

Only the writer (``writers/gguf_file.py``) touches data; this module reads headers, config.json and the
tokenizer files (``to_gguf_vocab``); ``to_gguf`` runs it. gguf-py is imported lazily:
``pip install 'torch2mlx[gguf]'``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from ..core.entry import TensorEntry
from ..errors import Torch2MLXError
from ..formats.checkpoint import Checkpoint
from ..formats.data import DataReader
from . import dequant, mlx_source, reverse_plan
from .to_gguf_mix import K_TYPES, fallback, mixed_type

# --gguf-type: what each name writes (GGML types by name, resolved when gguf-py is imported).
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1") + tuple(K_TYPES)
_QTYPE = {
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "q8_0": "Q8_0",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
}
_FILE_TYPE = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0",
    "q4_1": "MOSTLY_Q4_1",
    "q5_0": "MOSTLY_Q5_0",
    "q5_1": "MOSTLY_Q5_1",
}
# MLX affine bits -> the GGML block type its symmetric groups of 32 are, code for code.
LOSSLESS = {8: "Q8_0", 4: "Q4_0"}


@dataclass(frozen=True)
class LlamaCppArch:
    """How llama.cpp's converter treats one config.json ``model_type``."""

    arch: str  # gguf.MODEL_ARCH member
    permute_qk: bool = False  # convert_hf_to_gguf's LlamaModel.permute on q_proj/k_proj
    norm_plus_one: bool = False  # Gemma: stored norm weights are w + 1
    head_dim_keys: bool = False  # attention.key_length/value_length always written
    sliding_window: bool = False  # local layers always (Gemma); the others only when use_sliding_window


FAMILIES = {
    "llama": LlamaCppArch("LLAMA", permute_qk=True),
    "mistral": LlamaCppArch("LLAMA", permute_qk=True),  # llama.cpp has no separate mistral text arch
    "qwen2": LlamaCppArch("QWEN2"),
    "qwen3": LlamaCppArch("QWEN3", head_dim_keys=True),
    "gemma2": LlamaCppArch("GEMMA2", norm_plus_one=True, head_dim_keys=True, sliding_window=True),
    "gemma3": LlamaCppArch("GEMMA3", norm_plus_one=True, head_dim_keys=True, sliding_window=True),
    "gemma3_text": LlamaCppArch("GEMMA3", norm_plus_one=True, head_dim_keys=True, sliding_window=True),
    "phi3": LlamaCppArch("PHI3"),
}
# Multimodal checkpoints: llama.cpp keeps these towers in a separate mmproj file.
_NOT_TEXT = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def gguf_module(what: str = "--to gguf"):
    try:
        import gguf
    except ImportError:
        raise Torch2MLXError(f"{what} needs gguf-py: pip install 'torch2mlx[gguf]'") from None
    return gguf


@dataclass
class Item:
    """One GGUF tensor: where its values come from and how they are written."""

    name: str  # GGUF name
    source: str  # MLX name
    shape: tuple[int, ...]  # row-major (numpy) shape; GGUF lists it reversed
    qtype: str  # GGML type name
    entry: TensorEntry  # float view (a quantized triple: dequantized block by block)
    quant: dequant.Quantized | None = None  # the packed triple, for a lossless repack
    heads: int = 0  # Q/K rotary permutation over this many heads (0: none)
    plus_one: bool = False
    nbytes: int = 0
    how: str = ""  # set while writing: repack | requantize | dequantize | cast
    max_abs: float | None = None
    max_rel: float | None = None

    def record(self) -> dict:
        r: dict = {"source": self.source, "type": self.qtype, "shape": list(self.shape), "how": self.how}
        if self.heads:
            r["rotary_permuted_heads"] = self.heads
        if self.plus_one:
            r["plus_one"] = True
        if self.max_abs is not None:
            r["max_abs_error"], r["max_rel_error"] = self.max_abs, self.max_rel
        return r


@dataclass
class GGUFPlan:
    arch: str  # llama.cpp's architecture name (general.architecture)
    gguf_type: str
    items: list[Item]
    metadata: list[tuple[str, tuple]]  # (GGUFWriter method, args), in order
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (MLX name, why)

    @property
    def nbytes_out(self) -> int:
        return sum(i.nbytes for i in self.items)


def hparams(config: dict) -> tuple[str, dict]:
    """(model_type, hyper-parameters): a multimodal config's text_config over its top level."""
    hp = dict(config)
    text = config.get("text_config")
    if isinstance(text, dict):
        hp.update(text)
    model_type = (text or {}).get("model_type") if isinstance(text, dict) else None
    return model_type or config.get("model_type") or "", hp


def family_of(config: dict | None, path: str) -> tuple[str, LlamaCppArch, dict]:
    if not isinstance(config, dict):
        raise Torch2MLXError(f"{path}: no config.json next to the weights: --to gguf needs the model's architecture")
    model_type, hp = hparams(config)
    fam = FAMILIES.get(model_type)
    if fam is None:
        raise Torch2MLXError(
            f"{path}: model_type {model_type or '(none)'!r} is not one --to gguf writes "
            f"(known: {', '.join(sorted(FAMILIES))})"
        )
    return model_type, fam, hp


def _rope(hp: dict) -> tuple[float | None, dict | None]:
    """(rope theta, a non-default scaling block) from transformers 4 or 5 spellings."""
    params = hp["rope_parameters"] if isinstance(hp.get("rope_parameters"), dict) else {}
    theta = hp.get("rope_theta", params.get("rope_theta"))
    scaling: dict = hp["rope_scaling"] if isinstance(hp.get("rope_scaling"), dict) else params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return theta, (None if kind in (None, "default") else dict(scaling, rope_type=kind))


def _metadata(model_type: str, fam: LlamaCppArch, hp: dict, gguf_type: str, name: str, gguf) -> list[tuple[str, tuple]]:
    def need(key: str):
        v = hp.get(key)
        if v is None:
            raise Torch2MLXError(f"config.json has no {key!r}, which --to gguf writes for {model_type}")
        return v

    heads = need("num_attention_heads")
    hidden = need("hidden_size")
    head_dim = hp.get("head_dim") or hidden // heads
    md: list[tuple[str, tuple]] = [
        ("add_name", (name,)),
        ("add_file_type", (int(gguf.LlamaFileType[_file_type(gguf_type)]),)),
        ("add_context_length", (int(need("max_position_embeddings")),)),
        ("add_embedding_length", (int(hidden),)),
        ("add_block_count", (int(need("num_hidden_layers")),)),
        ("add_feed_forward_length", (int(need("intermediate_size")),)),
        ("add_head_count", (int(heads),)),
        ("add_head_count_kv", (int(hp.get("num_key_value_heads") or heads),)),
        ("add_layer_norm_rms_eps", (float(need("rms_norm_eps")),)),
        ("add_vocab_size", (int(need("vocab_size")),)),
    ]
    theta, scaling = _rope(hp)
    if theta is not None:
        md.append(("add_rope_freq_base", (float(theta),)))
    if scaling is not None:
        if scaling["rope_type"] != "linear":
            raise Torch2MLXError(
                f"config.json: rope scaling {scaling['rope_type']!r} is not written by --to gguf yet (only linear)"
            )
        md += [
            ("add_rope_scaling_type", (gguf.RopeScalingType.LINEAR,)),
            ("add_rope_scaling_factor", (float(scaling["factor"]),)),
        ]
    if fam.arch == "LLAMA":
        md.append(("add_rope_dimension_count", (int(head_dim),)))
    if fam.arch == "PHI3":
        md.append(("add_rope_dimension_count", (int(head_dim * hp.get("partial_rotary_factor", 1.0)),)))
    if fam.head_dim_keys or head_dim != hidden // heads:
        md += [("add_key_length", (int(head_dim),)), ("add_value_length", (int(head_dim),))]
    if hp.get("sliding_window") and (fam.sliding_window or hp.get("use_sliding_window")):
        md.append(("add_sliding_window", (int(hp["sliding_window"]),)))
    if fam.arch == "GEMMA2":
        for key, method in (
            ("attn_logit_softcapping", "add_attn_logit_softcapping"),
            ("final_logit_softcapping", "add_final_logit_softcapping"),
        ):
            if hp.get(key) is not None:
                md.append((method, (float(hp[key]),)))
    return md


def _gguf_name(name: str, tmap, gguf) -> str | None:
    for candidate in (
        name,
        name.replace("model.language_model.", "model.", 1),
        name.replace("language_model.model.", "model.", 1),
        name.replace("language_model.", "", 1),
    ):
        got = tmap.get_name(candidate, try_suffixes=(".weight", ".bias"))
        if got is not None:
            return got
    return None


def _file_type(gguf_type: str) -> str:
    return K_TYPES[gguf_type][2] if gguf_type in K_TYPES else _FILE_TYPE[gguf_type]


def _qtype_for(
    shape: tuple[int, ...], gguf_name: str, gguf_type: str, gguf, notes: list[str], n_layers: int, tied: bool
) -> str:
    """convert_hf_to_gguf's choice: 1-D tensors and norms F32; then the type or llama.cpp's K-quant mix;
    rows a block cannot divide fall back as llama.cpp does (to F16 for the legacy types)."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return "F32"
    if gguf_type in K_TYPES:
        q = mixed_type(gguf_name, gguf_type, n_layers, tied)
    else:
        q = _QTYPE[gguf_type]
    got = fallback(q, shape[-1], lambda t: gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t]][0])
    if got != q:
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[q]][0]
        notes.append(f"{gguf_name}: rows of {shape[-1]} are not whole {q} blocks of {block}; written as {got}")
    return got


def nbytes_of(shape: tuple[int, ...], qtype: str, gguf) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def check_gguf_type(gguf_type: str, gguf=None) -> None:
    if gguf_type not in GGUF_TYPES:
        raise Torch2MLXError(f"gguf_type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")


def plan(ck: Checkpoint, reader: DataReader, gguf_type: str, name: str | None = None) -> GGUFPlan:
    """The GGUF plan of MLX checkpoint ``ck``; ``reader`` serves the dequantized views. Headers only."""
    gguf = gguf_module()
    check_gguf_type(gguf_type, gguf)
    if mlx_source.detect(ck) is None:
        raise Torch2MLXError(
            f"{ck.path}: not an MLX checkpoint (--to gguf reads MLX weights: "
            "convert with `t2mlx stream SRC MLX_DIR` first)"
        )
    model_type, fam, hp = family_of(ck.config, ck.path)
    view, _ = reverse_plan.with_dequantized(ck, reader)
    arch = gguf.MODEL_ARCH[fam.arch]
    n_layers = int(hp.get("num_hidden_layers") or 0)
    tmap = gguf.get_tensor_name_map(arch, n_layers)
    heads = int(hp.get("num_attention_heads") or 0)
    kv_heads = int(hp.get("num_key_value_heads") or heads)
    notes: list[str] = []
    items, skipped, unknown = [], [], []
    named = []
    for e in view.entries:
        if e.name.startswith(_NOT_TEXT):
            skipped.append((e.name, "vision/projector tensor (llama.cpp keeps it in a separate mmproj GGUF)"))
            continue
        if e.name.endswith("rotary_emb.inv_freq"):
            skipped.append((e.name, "rotary buffer (llama.cpp computes it)"))
            continue
        gname = _gguf_name(e.name, tmap, gguf)
        if gname is None:
            unknown.append(e.name)
            continue
        named.append((gname, e))
    tied = not any(g == "output.weight" for g, _ in named)
    for gname, e in named:
        q = e.loader.q if isinstance(e.loader, dequant.DequantRows) else None
        shape = tuple(e.shape)
        qtype = _qtype_for(shape, gname, gguf_type, gguf, notes, n_layers, tied)
        n_perm = 0
        if fam.permute_qk and gname.startswith("blk.") and (".attn_q." in gname or ".attn_k." in gname):
            n_perm = heads if ".attn_q." in gname else kv_heads
            if n_perm <= 0 or shape[0] % (2 * n_perm):
                raise Torch2MLXError(f"{e.name}: {shape[0]} rows are not {n_perm} heads of an even size")
        plus_one = fam.norm_plus_one and gname.endswith("_norm.weight")
        items.append(Item(gname, e.name, shape, qtype, e, q, n_perm, plus_one, nbytes_of(shape, qtype, gguf)))
    if unknown:
        raise Torch2MLXError(
            f"{len(unknown)} tensor(s) have no llama.cpp name for {arch.name.lower()} in gguf-py's TensorNameMap, "
            f"e.g. {', '.join(unknown[:3])}"
        )
    if not items:
        raise Torch2MLXError(f"{ck.path}: no tensors to write")
    dup = sorted(n for n, k in Counter(i.name for i in items).items() if k > 1)
    if dup:
        raise Torch2MLXError(f"two MLX tensors map to the same GGUF tensor {dup[0]}")
    label = name or hp.get("_name_or_path") or os.path.basename(os.path.normpath(ck.folder or ck.path))
    metadata = _metadata(model_type, fam, hp, gguf_type, str(label), gguf)
    p = GGUFPlan(gguf.MODEL_ARCH_NAMES[arch], gguf_type, items, metadata, notes, [], skipped)
    if any(i.heads for i in items):
        p.notes.append("Q/K rows permuted as convert_hf_to_gguf.py does for llama-family models")
    if any(i.plus_one for i in items):
        p.notes.append("Gemma norm weights written as w + 1 (llama.cpp's RMSNorm multiplies by w)")
    return p
