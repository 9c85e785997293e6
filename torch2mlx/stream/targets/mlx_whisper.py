"""The mlx-whisper target: what ``mlx_whisper.load_models.load_model(OUT)`` loads.

mlx-whisper reads ``weights.safetensors`` (one file: it never looks for shards) and ``config.json``
holding exactly its ``ModelDimensions`` (plus ``model_type`` and ``quantization``, which it pops);
its modules keep OpenAI's names except the MLP (``mlp1``/``mlp2`` for OpenAI's ``mlp.0``/``mlp.2``),
convolutions are channels-last, and the encoder's sinusoidal positions are computed, not loaded
(``Module.update`` is strict: an extra tensor fails the load). It quantizes every Linear/Embedding
whose ``scales`` are in the file with the one group size and bit width of ``quantization``.

Sources: transformers' Whisper (names translated by ``_HF_NAMES``), OpenAI's ``.pt``
(``{"dims": ..., "model_state_dict": ...}``; read without torch, its dims become config.json) and
mlx-whisper's own output (names already right).
"""

from __future__ import annotations

import re

from ...errors import Torch2MLXError
from ..plan import assign_shards

WEIGHTS = "weights.safetensors"
DIMS = (
    "n_mels",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_vocab",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
)
# ModelDimensions field <- transformers' WhisperConfig key
_FROM_HF = {
    "n_mels": "num_mel_bins",
    "n_audio_ctx": "max_source_positions",
    "n_audio_state": "d_model",
    "n_audio_head": "encoder_attention_heads",
    "n_audio_layer": "encoder_layers",
    "n_vocab": "vocab_size",
    "n_text_ctx": "max_target_positions",
    "n_text_state": "d_model",
    "n_text_head": "decoder_attention_heads",
    "n_text_layer": "decoder_layers",
}
# transformers' name -> mlx-whisper's, on names without transformers' "model." prefix, in this order
_HF_NAMES = (
    (r"^(encoder|decoder)\.layers\.(\d+)\.", r"\1.blocks.\2."),
    (r"\.self_attn\.q_proj\.", ".attn.query."),
    (r"\.self_attn\.k_proj\.", ".attn.key."),
    (r"\.self_attn\.v_proj\.", ".attn.value."),
    (r"\.self_attn\.out_proj\.", ".attn.out."),
    (r"\.encoder_attn\.q_proj\.", ".cross_attn.query."),
    (r"\.encoder_attn\.k_proj\.", ".cross_attn.key."),
    (r"\.encoder_attn\.v_proj\.", ".cross_attn.value."),
    (r"\.encoder_attn\.out_proj\.", ".cross_attn.out."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.fc1\.", ".mlp1."),
    (r"\.fc2\.", ".mlp2."),
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^decoder\.layer_norm\.", "decoder.ln."),
    (r"^decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    # OpenAI's (and openai-whisper's state dict's) MLP names
    (r"\.mlp\.0\.", ".mlp1."),
    (r"\.mlp\.2\.", ".mlp2."),
)
_HF_COMPILED = tuple((re.compile(p), r) for p, r in _HF_NAMES)
# Source tensors mlx-whisper has no parameter for, and why they are not needed
_DROP = (
    (
        re.compile(r"^(model\.)?encoder\.(embed_positions\.weight|positional_embedding)$"),
        "mlx-whisper computes the encoder's sinusoidal positions",
    ),
    (re.compile(r"^proj_out\.weight$"), "mlx-whisper's decoder projects with token_embedding (tied)"),
)
_PARAM = "(weight|bias|scales|biases)"
_BLOCK = rf"blocks\.\d+\.((attn|cross_attn)\.(query|key|value|out)|attn_ln|cross_attn_ln|mlp1|mlp2|mlp_ln)\.{_PARAM}"
_KNOWN = re.compile(
    rf"^(encoder\.(conv[12]\.(weight|bias)|ln_post\.(weight|bias)|{_BLOCK})"
    rf"|decoder\.(positional_embedding|token_embedding\.{_PARAM}|ln\.(weight|bias)|{_BLOCK}))$"
)
_CONV = re.compile(r"^encoder\.conv[12]\.weight$")
_POSITIONS = re.compile(r"^(model\.)?decoder\.(embed_positions\.weight|positional_embedding)$")


def matches(config: dict) -> bool:
    """transformers' Whisper seq2seq model mlx-whisper's architecture can hold, or mlx-whisper's / OpenAI's
    dimensions."""
    return mismatch(config) is None


def mismatch(config: dict) -> str | None:
    """Why mlx-whisper cannot load this model (None: it can)."""
    if all(k in config for k in DIMS):
        return None
    archs = config.get("architectures") or []
    if config.get("model_type") != "whisper" or (archs and "WhisperForConditionalGeneration" not in archs):
        from . import describe

        return f"{describe(config)}, not a Whisper speech-to-text model"
    try:
        dims(config)
    except Torch2MLXError as e:
        return str(e).split(": ", 1)[1]
    return None


def source_config(ck) -> dict | None:
    """OpenAI's ``.pt``: the ``dims`` beside ``model_state_dict`` (the pickle read again, nothing run)."""
    if ck.config is not None or ck.key != "model_state_dict" or len(ck.files) != 1 or ck.remote:
        return None
    from ...formats.pickled import open_pickle

    try:
        obj, _ = open_pickle(ck.files[0]).load()
    except Exception:  # noqa: BLE001 - it was read once already; a second failure just means no dims
        return None
    dims = obj.get("dims") if isinstance(obj, dict) else None
    if not isinstance(dims, dict) or not all(isinstance(dims.get(k), int) for k in DIMS):
        return None
    return {"model_type": "whisper", **{k: dims[k] for k in DIMS}}


def options(opts, ck):
    """No mixed recipes (mlx-whisper's config has one group size and bit width); float16 unless a dtype
    is given: ``mlx_whisper.transcribe`` computes in float16 by default (``fp16=True``) and refuses
    float32 audio features (``--dtype float32``: transcribe with fp16=False)."""
    import dataclasses

    if opts.q_recipe is not None:
        raise Torch2MLXError(
            f"q_recipe {opts.q_recipe} mixes bit widths per layer; mlx-whisper's loader takes one "
            "group size and bit width (use q_bits)"
        )
    if opts.dtype != "keep" or not any(e.dtype.is_float and e.dtype.name != "float16" for e in ck.entries):
        return opts, []
    return dataclasses.replace(opts, dtype="float16"), [
        "target mlx-whisper: float weights written as float16, as mlx_whisper.transcribe computes by default "
        "(--dtype float32 keeps float32: transcribe with fp16=False)"
    ]


def dims(config: dict) -> dict:
    """ModelDimensions from mlx-whisper/OpenAI keys or transformers' WhisperConfig.

    Raises:
        Torch2MLXError: a WhisperConfig mlx-whisper's fixed architecture cannot represent.
    """
    if all(k in config for k in DIMS):
        return {k: config[k] for k in DIMS}
    missing = sorted({v for v in _FROM_HF.values() if v not in config})
    if missing:
        raise Torch2MLXError(f"target mlx-whisper: config.json lacks {', '.join(missing)}")
    d = config["d_model"]
    odd = [f"{k} {config[k]}" for k in ("encoder_ffn_dim", "decoder_ffn_dim") if k in config and config[k] != 4 * d]
    if config.get("activation_function", "gelu") != "gelu":
        odd.append(f"activation_function {config['activation_function']}")
    if config.get("scale_embedding"):
        odd.append("scale_embedding true")
    if odd:
        raise Torch2MLXError(
            f"target mlx-whisper: mlx-whisper's Whisper has MLPs of 4 x d_model ({4 * d}) "
            f"with gelu and unscaled embeddings; config.json has {', '.join(odd)}"
        )
    return {k: config[v] for k, v in _FROM_HF.items()}


def whisper_name(name: str) -> str:
    """mlx-whisper's name of a transformers or OpenAI Whisper tensor (its own names stay as they are)."""
    if name.startswith("model."):
        name = name[len("model.") :]
    for pattern, repl in _HF_COMPILED:
        name = pattern.sub(repl, name)
    return name


def apply(ck, opts, plan) -> list[str]:
    """Names, drops, one ``weights.safetensors``; the quantization mlx-whisper's loader can rebuild."""
    if ck.config is None:
        raise Torch2MLXError(
            "target mlx-whisper needs the model's dimensions: a config.json beside the weights, "
            "or OpenAI's .pt with its 'dims'"
        )
    dims(ck.config)  # refuses what mlx-whisper cannot build, before anything is written
    kept, dropped = [], 0
    for op in plan.ops:
        src = op.sources[0].name
        why = next((w for p, w in _DROP if p.match(src)), None)
        if why is not None:
            plan.dropped.append((src, why))
            dropped += 1
            continue
        if _POSITIONS.match(src) and op.transform is not None and len(op.outputs) > 1:
            _unquantized(op, opts, plan.warnings)  # an nn.Embedding in transformers, a plain array in mlx-whisper
        for o in op.outputs:
            o.name = whisper_name(o.name)
            if not _KNOWN.match(o.name):
                raise Torch2MLXError(f"target mlx-whisper: mlx-whisper's Whisper has no parameter for {src!r}")
            if _CONV.match(o.name) and op.rule_source == "inferred":
                op.rule_source = "target"  # a conv by the target's own table, not a guess
                plan.warnings = [w for w in plan.warnings if not w.startswith(f"{src}: rule conv1d inferred")]
        kept.append(op)
    if any(op.rule == "identity" and _CONV.match(op.outputs[0].name) for op in kept) and ck.layout != "mlx":
        raise Torch2MLXError(
            "target mlx-whisper: the convolutions would stay channels-first (a --rule made them identity)"
        )
    plan.ops = kept
    plan.shards = assign_shards(kept, 1 << 62)
    (shard,) = plan.shards
    shard.file = WEIGHTS
    notes = [f"target mlx-whisper: {len(kept)} tensor(s) with mlx-whisper's names, unsharded ({WEIGHTS})"]
    if dropped:
        notes[0] += f", {dropped} not needed by it dropped"
    return notes


def hf_config(cfg: dict) -> dict:
    """transformers' WhisperConfig keys for mlx-whisper's config.json (``--to torch`` of a transformers
    source); any other config as it is. The keys mlx-whisper does not keep take WhisperConfig's defaults."""
    if not all(k in cfg for k in DIMS) or "d_model" in cfg:
        return cfg
    d = cfg["n_audio_state"]
    out = {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper"}
    out |= {hf: cfg[k] for k, hf in _FROM_HF.items()}
    return out | {"encoder_ffn_dim": 4 * d, "decoder_ffn_dim": 4 * d}


def _unquantized(op, opts, warnings: list[str]) -> None:
    from ...core import rules
    from ..plan import Output
    from ..planner import out_dtype

    shape = rules.get(op.rule).out_shape([e.shape for e in op.sources], op.args)
    op.transform = op.transform_info = None
    op.outputs = [Output(op.outputs[0].name, out_dtype(op.source_dtype, opts, warnings, op.sources[0].name), shape)]


def config(source_config: dict, opts) -> dict:
    """ModelDimensions, ``model_type`` and the ``quantization`` nn.quantize takes (group_size, bits, mode)."""
    out = {"model_type": "whisper", **dims(source_config)}
    q = source_config.get("quantization")
    if isinstance(q, dict):
        block = {"group_size": q["group_size"], "bits": q["bits"]}
        if q.get("mode", "affine") != "affine":
            block["mode"] = q["mode"]
        out["quantization"] = block
    return out
