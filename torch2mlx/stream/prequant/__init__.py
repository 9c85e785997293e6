"""Pre-quantized checkpoints in (GPTQ, AWQ, ...): detection, and the float or MLX-quantized view the planner reads.

A checkpoint saying ``quantization_config: {"quant_method": ...}`` in its
config.json, or holding ``*.qweight`` tensors, is matched against ``FORMATS``
(one module per format). Each format module gives its modules (``Packed``
records: which tensors, bits, group size) and how to read them; ``view``
then replaces every packed module by virtual entries the plan treats like
any other tensor (see ``view.py``): MLX affine ``weight``/``scales``/``biases``
when the numbers fit MLX exactly, else one float32 ``weight`` requantized by
the plan's usual quantization step.

MXFP4 (gpt-oss) is the exception: its blocks are MLX's ``mxfp4`` codes as they
are, so ``mxfp4.view`` renames and splits them without a float view.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

from ...errors import Torch2MLXError
from ...formats.checkpoint import Checkpoint
from . import awq, bnb, ctensors, gptq, view
from . import mxfp4 as mxfp4  # callers reach it as prequant.mxfp4
from .common import Found

# quant_method -> format module; each has detect(ck, qc, by_name) -> Found
FORMATS: dict[str, ModuleType] = {"gptq": gptq, "awq": awq, "compressed-tensors": ctensors, "bitsandbytes": bnb}
# handled elsewhere (float8 in transforms.plan_fp8; MXFP4's codes are MLX's already: mxfp4.view repacks them in
# place) or by later formats: not an error here
_OTHERS = ("fp8", "fbgemm_fp8", "mxfp4", "modelopt", "hqq", "eetq")


def detect(ck: Checkpoint) -> Found | None:
    """What pre-quantized format ``ck`` holds (None: none this package reads)."""
    qc = (ck.config or {}).get("quantization_config")
    qc = qc if isinstance(qc, dict) else {}
    method = str(qc.get("quant_method") or "").lower()
    packed = next((e for e in ck.entries if e.name.endswith(".qweight") and e.dtype.name in ("int32", "uint32")), None)
    if method in FORMATS:
        return FORMATS[method].detect(ck, qc)
    if packed is None:
        return None
    if method and method not in _OTHERS:
        raise Torch2MLXError(
            f"{ck.path}: config.json quantization_config.quant_method {method!r} is not a format torch2mlx reads "
            f"(known: {', '.join(FORMATS)}); {packed.name} is packed"
        )
    if not method:
        # No config: GPTQ is the one writer with a g_idx next to its qweight.
        if any(e.name.endswith(".g_idx") for e in ck.entries):
            return gptq.detect(ck, {})
        raise Torch2MLXError(
            f"{packed.origin or ck.path}: {packed.name} is packed but no config.json quantization_config says how "
            "(GPTQ or AWQ); add the checkpoint's config.json"
        )
    return None


def packed_view(ck: Checkpoint, found: Found, opts) -> tuple[Checkpoint, view.Prepared]:
    """``ck`` with each packed module as virtual entries, and what the planner needs to finish the job."""
    prepared = view.prepare(ck, found, opts)
    return dataclasses.replace(ck, entries=prepared.entries), prepared


def describes(quantization_config) -> bool:
    """Whether a config.json ``quantization_config`` is one of ``FORMATS`` (stale once the weights are rewritten)."""
    qc = quantization_config if isinstance(quantization_config, dict) else {}
    fmt = FORMATS.get(str(qc.get("quant_method") or "").lower())
    # a format may leave some of its configs to another path (compressed-tensors' float8: core.fp8)
    return fmt is not None and getattr(fmt, "describes", lambda qc: True)(qc)
