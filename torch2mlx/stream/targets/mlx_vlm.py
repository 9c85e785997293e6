"""The mlx-vlm target: a directory ``mlx_vlm.load(OUT)`` loads as it is.

mlx-vlm runs its models' ``sanitize`` on every load, so the output must be a fixed point of it:
the parameter names its models have (``language_model.model.*``, ``language_model.lm_head``,
``vision_tower.*``, ``multi_modal_projector.*``), whatever spelling the checkpoint used (the legacy
top-level prefixes or transformers' ``model.language_model.*`` / ``model.visual.*``), and the vision
convolutions channels-last (the layout rules already do that; mlx-vlm's shape check then keeps them).
mlx-vlm quantizes the language model only (its convert skips vision towers and projectors, its
loader quantizes exactly the modules that have ``scales``), and reads some settings from places
transformers 5 moved: Qwen2-VL's text settings at the top level, Gemma 3's ``mm_tokens_per_image``
in ``text_config`` and its two RoPE bases as ``rope_global_base_freq`` / ``rope_local_base_freq``.
"""

from __future__ import annotations

from ...core import rules
from ...core.quant_recipes import module_path
from ...errors import Torch2MLXError
from ..plan import Op, Output, assign_shards
from ..sidecar_config import _hoist_rope
from ..transforms import Chain

# model_type -> family (how its names are spelled in mlx-vlm)
MODEL_TYPES = {"llava": "llava", "gemma3": "llava", "qwen2_vl": "qwen", "qwen2_5_vl": "qwen"}
# parts of a module path mlx-vlm never quantizes (its convert's multimodal skip list, as it behaves
# for these models: vision towers and the projector between vision and text)
_MULTIMODAL = ("vision", "multi_modal_projector", "visual", "merger")
_TOP = ("language_model.", "vision_tower.", "visual.", "multi_modal_projector.")


def matches(config: dict) -> bool:
    return config.get("model_type") in MODEL_TYPES and isinstance(config.get("vision_config"), dict)


def mismatch(config: dict) -> str:
    kind = config.get("model_type")
    return (
        f"config.json describes {kind or 'an unnamed model type'}; the mlx-vlm target converts "
        f"{', '.join(sorted(MODEL_TYPES))} (image-text, with a vision_config)"
    )


def vlm_name(name: str, family: str) -> str:
    """The name mlx-vlm's model gives checkpoint tensor ``name`` once loaded."""
    n = name
    if n.startswith("model.") and n[len("model.") :].startswith(_TOP):
        n = n[len("model.") :]  # transformers' model.language_model.* / model.visual.*
    if n.startswith("lm_head."):
        return "language_model." + n
    if family == "qwen":
        if n.startswith("visual."):
            return "vision_tower." + n[len("visual.") :]
        if n.startswith("model."):  # the legacy Qwen2-VL layout: the text model at the top
            return "language_model." + n
    if n.startswith("language_model."):
        rest = n[len("language_model.") :]
        if not rest.startswith(("model.", "lm_head.")):
            return "language_model.model." + rest
    if family == "llava" and n.startswith("vision_tower."):
        rest = n[len("vision_tower.") :]
        if not rest.startswith("vision_model."):
            return "vision_tower.vision_model." + rest
    return n


def _multimodal(name: str) -> bool:
    return not name.startswith("language_model.") and any(p in name for p in _MULTIMODAL)


def _unquantize(op) -> None:
    """A quantized op back to its float weight (its rule's shape, the dtype the scales were in)."""
    chain = op.transform
    float_dtype = chain.float_dtype or op.outputs[1].dtype
    shape = rules.get(op.rule).out_shape([e.shape for e in op.sources], op.args)
    op.outputs = [Output(op.outputs[0].name, float_dtype, shape)]
    if chain.dequant is None and chain.fuse is None:
        op.transform, op.transform_info = None, None
    else:
        op.transform = Chain(chain.dequant, None, chain.fuse, float_dtype=float_dtype)
        op.transform_info = op.transform.info()


def apply(ck, opts, plan) -> list[str]:
    if ck.config is None or not matches(ck.config):
        why = mismatch(ck.config) if ck.config is not None else "no config.json beside the weights"
        raise Torch2MLXError(f"{ck.path}: target mlx-vlm needs the model's config.json: {why}")
    family = MODEL_TYPES[ck.config["model_type"]]
    renamed = 0
    for op in plan.ops:
        for o in op.outputs:
            new = vlm_name(o.name, family)
            renamed += new != o.name
            o.name = new
    kept = 0
    for op in plan.ops:
        spec = getattr(op.transform, "spec", None)
        if spec is not None and _multimodal(op.outputs[0].name):
            _unquantize(op)
            kept += 1
    notes = [f"mlx-vlm names: {renamed} tensor(s) renamed as mlx-vlm's {ck.config['model_type']} model has them"]
    if plan.quantization is not None:
        block = {}
        for k, v in plan.quantization.items():
            if isinstance(v, dict):  # a per-module entry: its path as loaded
                k = module_path(vlm_name(k + ".weight", family)) or k
                if _multimodal(k):
                    continue
            block[k] = v
        plan.quantization = block
        if kept:
            notes.append(f"{kept} vision/projector weight(s) left unquantized (mlx-vlm quantizes the language model)")
        extra = _tied_quantized_head(ck.config, plan)
        if extra:
            notes.append(extra)
    seen: dict[str, str] = {}
    for op in plan.ops:
        for o in op.outputs:
            if o.name in seen:  # a checkpoint holding one tensor under both spellings
                raise Torch2MLXError(
                    f"{ck.path}: {seen[o.name]} and {op.sources[0].name} would both be mlx-vlm's {o.name}"
                )
            seen[o.name] = op.sources[0].name
    plan.shards = assign_shards(plan.ops, opts.max_shard_size)
    return notes


def _tied_quantized_head(config: dict, plan) -> str | None:
    """Gemma 3 always has an lm_head in mlx-vlm, copied from the embedding at load time when absent;
    a quantized embedding's copy has no scales, so the head is written quantized beside it."""
    if config.get("model_type") != "gemma3":
        return None
    head = "language_model.lm_head.weight"
    emb = next((op for op in plan.ops if op.outputs[0].name == "language_model.model.embed_tokens.weight"), None)
    if emb is None or getattr(emb.transform, "spec", None) is None:
        return None
    if any(o.name == head for op in plan.ops for o in op.outputs):
        return None
    base = "language_model.lm_head."
    outs = [Output(base + o.name.rsplit(".", 1)[1], o.dtype, o.shape) for o in emb.outputs]
    plan.ops.append(Op(emb.sources, emb.rule, emb.rule_source, dict(emb.args), outs, emb.transform, emb.transform_info))
    return "language_model.lm_head written quantized from the tied embedding (mlx-vlm's Gemma 3 has a separate head)"


def config(source_config: dict, opts) -> dict:
    cfg = dict(source_config)
    text = dict(cfg.get("text_config") or {})
    family = MODEL_TYPES.get(str(cfg.get("model_type")))
    rp = text.get("rope_parameters")
    if cfg.get("model_type") == "gemma3":
        if "mm_tokens_per_image" in cfg:
            text.setdefault("mm_tokens_per_image", cfg["mm_tokens_per_image"])
        if isinstance(rp, dict) and isinstance(rp.get("full_attention"), dict):
            full, local = rp["full_attention"], rp.get("sliding_attention") or {}
            text.setdefault("rope_global_base_freq", full.get("rope_theta"))
            if "rope_theta" in local:
                text.setdefault("rope_local_base_freq", local["rope_theta"])
            if full.get("rope_type", "default") != "default" and text.get("rope_scaling") is None:
                text["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
        layers = text.get("layer_types")
        if "sliding_window_pattern" not in text:
            if "_sliding_window_pattern" in text:
                text["sliding_window_pattern"] = text["_sliding_window_pattern"]
            elif isinstance(layers, list) and "full_attention" in layers:
                text["sliding_window_pattern"] = layers.index("full_attention") + 1
    else:
        _hoist_rope(text)
        if isinstance(rp, dict) and "mrope_section" in rp and text.get("rope_scaling") is None:
            text["rope_scaling"] = {"type": "mrope", "mrope_section": rp["mrope_section"]}
    if text:
        cfg["text_config"] = text
    if family == "qwen":
        vision = dict(cfg.get("vision_config") or {})
        vision["model_type"] = cfg["model_type"]  # transformers 5 says qwen2_vl_vision, which mlx-vlm refuses
        cfg["vision_config"] = vision
        # mlx-vlm's Qwen2-VL reads its text settings from the top level (the layout before transformers 5)
        for k, v in text.items():
            cfg.setdefault(k, v)
    return cfg
