"""config.json as the converted weights need it.

The converted directory must load in MLX tools as is: mlx-lm reads the
quantization block from config.json, the dtype from ``torch_dtype``, and RoPE
settings only from the top-level ``rope_theta`` / ``rope_scaling`` that
transformers 5 moved into ``rope_parameters`` (without them mlx-lm silently
uses its default base frequency and computes different logits).
"""

from __future__ import annotations

from ..formats.checkpoint import Checkpoint
from .options import Options
from .plan import Plan


def _hoist_rope(cfg: dict) -> list[str]:
    """Copy transformers-5 ``rope_parameters`` to the top-level keys older readers use."""
    rp = cfg.get("rope_parameters")
    if not isinstance(rp, dict):
        return []
    added = []
    if "rope_theta" in rp and "rope_theta" not in cfg:
        cfg["rope_theta"] = rp["rope_theta"]
        added.append("rope_theta")
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type != "default" and cfg.get("rope_scaling") is None:
        cfg["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
        added.append("rope_scaling")
    return added


def rewrite(ck: Checkpoint, opts: Options, plan: Plan) -> dict[str, dict] | None:
    """config.json as the converted weights need it: quantization block, new dtype, no stale fp8 block
    (a dequantized source's ``ck.config`` comes without its quantization block already); a target with a
    module (stream/targets) makes its own from that."""
    from . import targets

    mod = targets.module(plan.target) if plan.target is not None else None
    if mod is None:
        return _rewrite(ck, opts, plan)
    done = _rewrite(ck, opts, plan)
    cfg = done["config.json"] if done else ck.config
    return {"config.json": mod.config(dict(cfg or {}), opts)}


def _rewrite(ck: Checkpoint, opts: Options, plan: Plan) -> dict[str, dict] | None:
    from ..core.fp8 import FP8_WEIGHT_DTYPES, describes_fp8

    stale_fp8 = (
        ck.config is not None
        and describes_fp8(ck.config.get("quantization_config"))
        and any(op.source_dtype.name in FP8_WEIGHT_DTYPES for op in plan.ops)
    )
    if ck.config is None:
        return None
    from .prequant import describes

    # GPTQ/AWQ tensors are always rewritten (repacked or dequantized): their block no longer applies
    stale_packed = describes(ck.config.get("quantization_config"))
    cfg = dict(ck.config)
    hoisted = _hoist_rope(cfg)
    if (
        plan.quantization is None
        and opts.dtype == "keep"
        and not stale_fp8
        and not hoisted
        and not stale_packed
        and not opts.dequantize
    ):
        return None
    if hoisted:
        plan.notes.append(
            f"config.json: {', '.join(hoisted)} copied to the top level from rope_parameters "
            "(mlx-lm reads only the top-level keys)"
        )
    if stale_fp8:
        del cfg["quantization_config"]
        plan.notes.append("config.json: float8 quantization_config removed (the weights are dequantized)")
    if stale_packed and plan.quantization is None:
        del cfg["quantization_config"]
        plan.notes.append("config.json: GPTQ/AWQ quantization_config removed (the weights are dequantized)")
    if plan.quantization is not None:
        from ..core.quant_recipes import with_quantization

        cfg = with_quantization(cfg, plan.quantization)
    if opts.dtype != "keep":
        for k in ("torch_dtype", "dtype"):
            if k in cfg or k == "torch_dtype":
                cfg[k] = opts.dtype
    return {"config.json": cfg}
