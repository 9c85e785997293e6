"""A source that is already MLX: our own output, mlx-lm's, quantized or not.

Recognised up front from what such a directory carries (our torch2mlx.json, the
``{"format": "mlx"}`` shard metadata MLX writes, a ``quantization`` block in
config.json), so no model is built for it: the analyzer would map torch layouts
onto tensors that have none (and needs torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..formats.checkpoint import Checkpoint
from . import manifest
from .manifest import Manifest


@dataclass(frozen=True)
class MLXSource:
    quantized: bool
    bits: int | None = None
    group_size: int | None = None
    overrides: int = 0  # layers with their own bits/group (mixed recipes)
    mode: str = "affine"

    def describe(self) -> str:
        if not self.quantized:
            return "already MLX (not quantized)"
        if self.bits is None:
            return "already MLX (quantized; bits and group size not recorded)"
        more = f", {self.overrides} layer(s) with their own" if self.overrides else ""
        mode = f" {self.mode}" if self.mode != "affine" else ""
        return f"already MLX (quantized:{mode} {self.bits}-bit, group {self.group_size}{more})"


def _our_manifest(ck: Checkpoint) -> Manifest | None:
    m = manifest.read_or_none(ck.folder) if ck.folder is not None else None
    return m if m is not None and m.version is not None else None


def _has_quantized_triplets(ck: Checkpoint) -> bool:
    """``p.weight`` (uint32) with ``p.scales`` and ``p.biases`` (affine), or with uint8 ``p.scales``
    (mxfp4/nvfp4/mxfp8): how MLX stores a quantized layer."""
    dtypes = {e.name: e.dtype.name for e in ck.entries}
    return any(
        n.endswith(".scales")
        and (f"{n[: -len('.scales')]}.biases" in dtypes or dt == "uint8")
        and dtypes.get(f"{n[: -len('.scales')]}.weight") == "uint32"
        for n, dt in dtypes.items()
    )


def detect(ck: Checkpoint) -> MLXSource | None:
    """What ``ck`` is when it is already MLX; None for a PyTorch (or unknown-layout) source."""
    ours = _our_manifest(ck)
    if ours is not None and ours.to_torch:
        return None  # our --to torch output: PyTorch layout
    block = (ck.config or {}).get("quantization")
    if ours is None and ck.metadata.get("format") != "mlx" and not isinstance(block, dict):
        return None
    if isinstance(block, dict):
        per_layer = [v for v in block.values() if isinstance(v, dict)]
        mode = block.get("mode") or "affine"
        return MLXSource(True, block.get("bits"), block.get("group_size"), len(per_layer), mode)
    opts = (ours.options if ours is not None else None) or {}
    if opts.get("q_bits") or opts.get("q_recipe"):
        return MLXSource(True, opts.get("q_bits"), opts.get("q_group_size") or 64, mode=opts.get("q_mode") or "affine")
    return MLXSource(_has_quantized_triplets(ck))
