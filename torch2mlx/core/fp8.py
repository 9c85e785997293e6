"""float8 weights with scales -> bfloat16 (numpy only), and pairing weights with their scales.

Reference semantics (what a torch user, DeepSeek's ``weight_dequant`` and
mlx-lm's ``sanitize`` compute)::

    (w.to(torch.float32) * scale_expanded.to(torch.float32)).to(torch.bfloat16)

one float32 product, rounded once to the output dtype. The scale always
multiplies: DeepSeek's ``weight_scale_inv`` is already the inverse of the
quantization scale. Scales come per tensor (one element), per row (``(out, 1)``)
or per block (``(ceil(out/bo), ceil(in/bi))``, 128x128 in DeepSeek-V3, edge
blocks partial); weights with more than two axes (stacked experts) carry their
leading axes in the scale too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from . import dtypes
from .casts import FLOAT8_TABLES, cast, to_f32
from .dtypes import DType

FP8_WEIGHT_DTYPES = frozenset({"float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"})
DEFAULT_BLOCK = 128  # DeepSeek-V3 / Qwen3-FP8 "weight_block_size": [128, 128]
# Suffixes of a float8 tensor's scale, in order of preference: "<p>.weight" pairs
# with "<p>.weight_scale_inv" or "<p>.weight_scale"; fused expert tensors such as
# "experts.down_proj" with "experts.down_proj_scale_inv".
SCALE_SUFFIXES = ("_scale_inv", "_scale")
# Activation / kv-cache scales of fp8 checkpoints: no MLX model has a use for them.
ACTIVATION_SCALE_SUFFIXES = (".input_scale", ".activation_scale", "_activation_scale", ".k_scale", ".v_scale")


def _dtype(d: DType | str) -> DType:
    return d if isinstance(d, DType) else dtypes.get(d)


def block_shape(
    weight_shape: tuple[int, ...], scale_shape: tuple[int, ...], block: int | tuple[int, int] | None = None
) -> tuple[int, ...]:
    """Per-axis block sizes mapping ``scale_shape`` onto ``weight_shape``.

    A one-element scale covers the tensor. Otherwise the scale has the weight's
    rank (or is left-padded with 1s to it) and each of its axes has size 1 (one
    block spans the axis) or ``ceil(n / b)``. For the last two axes ``b`` is
    ``block`` when given, else 128 when that fits (edge blocks partial), else the
    exact quotient; leading axes map one to one. ValueError when nothing fits.
    """
    ndim = len(weight_shape)
    if int(np.prod(scale_shape, dtype=np.int64)) == 1:
        return tuple(max(n, 1) for n in weight_shape)
    if len(scale_shape) > ndim:
        raise ValueError(f"scale of shape {scale_shape} has more axes than weight {weight_shape}")
    s = (1,) * (ndim - len(scale_shape)) + tuple(scale_shape)
    given = (block, block) if isinstance(block, int) else block
    out = []
    for ax, (n, k) in enumerate(zip(weight_shape, s, strict=True)):
        tail = ax - ndim + 2  # 0 or 1 for the last two axes
        if k == 1:
            b = max(n, 1)
        elif tail >= 0 and given is not None:
            b = given[tail]
        elif tail >= 0 and -(-n // DEFAULT_BLOCK) == k:
            b = DEFAULT_BLOCK
        elif tail >= 0 and n % k == 0:
            b = n // k
        elif k == n:
            b = 1
        else:
            b = 0
        if b <= 0 or -(-n // b) != k:
            raise ValueError(
                f"scale of shape {scale_shape} does not tile weight {weight_shape}"
                + (f" in blocks of {given}" if given else "")
            )
        out.append(b)
    return tuple(out)


def _scale_rows(scale: np.ndarray, blocks: tuple[int, ...], shape: tuple[int, ...], start: int) -> np.ndarray:
    """The scale expanded on every axis but the last, for weight rows ``[start, start + shape[0])``.

    Axes spanned by one block keep size 1 (numpy broadcasts them); the last axis
    stays one entry per block (``_scale_into`` applies it without expanding).
    """
    s = scale.reshape((1,) * (len(shape) - scale.ndim) + scale.shape)
    for ax, (b, n) in enumerate(zip(blocks[:-1], shape[:-1], strict=True)):
        if s.shape[ax] != 1:
            s = np.take(s, ((start if ax == 0 else 0) + np.arange(n)) // b, axis=ax)
    return s


def _scale_into(vals: np.ndarray, s: np.ndarray, b: int) -> None:
    """``vals *= scale`` where ``s`` holds one entry per block of ``b`` along the last axis."""
    if s.shape[-1] == 1:
        vals *= s
        return
    n = vals.shape[-1]
    # Whole blocks through a (..., blocks, b) view (splitting one axis never copies),
    # then the partial edge block.
    full = n // b * b
    lead = vals.shape[:-1]
    vals[..., :full].reshape(*lead, n // b, b)[...] *= s[..., : n // b, None]
    if full < n:
        vals[..., full:] *= s[..., -1:]


def dequantize(
    w: np.ndarray,
    fp8_dtype: DType | str,
    scale: np.ndarray | None = None,
    scale_dtype: DType | str = "float32",
    *,
    weight_shape: tuple[int, ...] | None = None,
    start: int = 0,
    block: int | tuple[int, int] | None = None,
    blocks: tuple[int, ...] | None = None,
    out_dtype: DType | str = "bfloat16",
) -> np.ndarray:
    """Dequantize float8 raw bits ``w`` to ``out_dtype`` (bfloat16 as uint16 bits).

    ``w`` is rows ``[start, start + len(w))`` (axis 0) of a weight of
    ``weight_shape`` (default ``w.shape``), so a large tensor can go a block of
    rows at a time; ``scale`` is the whole scale tensor (values, or raw bits of
    ``scale_dtype``, e.g. float8_e8m0fnu). Without a scale this is the exact cast.
    ``block`` is the (rows, cols) block of the last two axes when known; ``blocks``,
    one size per axis of the weight (``FP8Weight.blocks``), replaces the search.
    Equals ``(w.float() * scale_expanded.float()).to(out_dtype)`` in torch.
    """
    src, out = _dtype(fp8_dtype), _dtype(out_dtype)
    if src.name not in FLOAT8_TABLES:
        raise ValueError(f"{src.name} is not a float8 dtype")
    if scale is None:
        return cast(w, src, out)
    shape = tuple(w.shape) if weight_shape is None else tuple(weight_shape)
    if not shape or tuple(w.shape[1:]) != shape[1:] or start + len(w) > shape[0]:
        raise ValueError(
            f"rows of shape {w.shape} from {start} do not fit a weight of shape {shape}"
            " (a scaled float8 tensor needs at least one axis)"
        )
    scale = np.asarray(scale)
    if blocks is None:
        blocks = block_shape(shape, scale.shape, block)
    elif len(blocks) != len(shape) or (
        scale.size > 1
        and tuple(-(-n // b) for n, b in zip(shape, blocks, strict=True))
        != (1,) * (len(shape) - scale.ndim) + scale.shape
    ):
        raise ValueError(f"blocks {tuple(blocks)} do not map a scale of shape {scale.shape} onto weight {shape}")
    s = _scale_rows(to_f32(scale, _dtype(scale_dtype)), blocks, tuple(w.shape), start)
    # Decoding by table: np.take with native-int indices is ~2x faster than table[w].
    vals = np.take(FLOAT8_TABLES[src.name], w.astype(np.intp))
    with np.errstate(over="ignore"):  # overflow to inf, as float32 arithmetic in torch
        _scale_into(vals, s, blocks[-1])
    return cast(vals, dtypes.get("float32"), out)


def describes_fp8(quantization_config) -> bool:
    """Whether a config.json ``quantization_config`` describes float8 weights.

    Such a block is stale once the weights are dequantized: mlx-lm reads an
    ``fp8`` block with ue8m0 32x32 scales as mxfp8 and refuses compressed-tensors'
    ``float-quantized`` format, and transformers would expect float8 tensors.
    """
    qc = quantization_config if isinstance(quantization_config, dict) else {}
    method = qc.get("quant_method")
    return method in ("fp8", "fbgemm_fp8") or (method == "compressed-tensors" and qc.get("format") == "float-quantized")


# ---- pairing weights with scales (names, shapes and dtypes only) -----------------


@dataclass(frozen=True)
class FP8Weight:
    """A float8 tensor and how to dequantize it; ``scale`` None means an exact cast."""

    name: str
    dtype: str
    scale: str | None = None
    scale_dtype: str | None = None
    blocks: tuple[int, ...] | None = None


@dataclass
class FP8Pairing:
    weights: dict[str, FP8Weight] = field(default_factory=dict)  # every float8 tensor
    drop: set[str] = field(default_factory=set)  # scales, activation scales
    errors: list[str] = field(default_factory=list)  # scales that do not fit


def pair_scales(
    entries: Iterable[tuple[str, tuple[int, ...], DType | str]], block: int | tuple[int, int] | None = None
) -> FP8Pairing:
    """Pair each float8 tensor with its scale tensor, from ``(name, shape, dtype)`` records.

    The paired scales, and the activation/kv-cache scales (``input_scale``,
    ``activation_scale``, ``k_scale``, ``v_scale``) of a checkpoint holding float8
    weights, are listed in ``drop``: they have no place in the MLX output. A scale
    whose shape does not tile its weight is reported in ``errors`` (and not dropped).
    ``block`` is the checkpoint's ``weight_block_size`` when its config gives one.
    """
    table = {name: (tuple(shape), _dtype(dt)) for name, shape, dt in entries}
    result = FP8Pairing()
    for name, (shape, dt) in table.items():
        if dt.name not in FP8_WEIGHT_DTYPES:
            continue
        found = next(
            (name + sfx for sfx in SCALE_SUFFIXES if name + sfx in table and table[name + sfx][1].is_float), None
        )
        if found is None:
            result.weights[name] = FP8Weight(name, dt.name)
            continue
        s_shape, s_dt = table[found]
        try:
            blocks = block_shape(shape, s_shape, block)
        except ValueError as e:
            result.errors.append(f"{name}: {e}")
            result.weights[name] = FP8Weight(name, dt.name)
            continue
        result.weights[name] = FP8Weight(name, dt.name, found, s_dt.name, blocks)
        result.drop.add(found)
    if result.weights:
        result.drop.update(n for n in table if n.endswith(ACTIVATION_SCALE_SUFFIXES))
    return result
