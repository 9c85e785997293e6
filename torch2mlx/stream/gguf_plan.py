"""The plan for a GGUF source's block-quantized tensors: lossless repack, or exact dequantization.

An entry of a quantized GGUF tensor is its raw blocks (``uint8``, one row of
blocks per weight row; ``formats/gguf.py``). Its op reads a block of rows and:

- repacks them to MLX affine codes, scales and biases (``gguf_repack``: Q8_0, Q4_0,
  Q4_1, Q5_0, Q5_1, Q4_K, Q5_K) -- exact with float32 scales, the default;
  ``--gguf-scales float16|bfloat16`` rounds them and the error is measured;
- or dequantizes them with gguf-py's numpy dequantizer (exact, float32) and then
  quantizes them to MLX affine at the nearest bit width (``--q-bits`` to choose;
  group 32, or ``--q-group-size``), measuring the error, or keeps them as floats
  with ``--dtype``.

Memory stays bounded by the executor's row blocks: no tensor is read whole.
"""

from __future__ import annotations

import math
import threading
from collections import Counter

import numpy as np

from ..core import casts, dtypes, quant, quant_recipes
from ..core.dtypes import DType
from ..core.quant_recipes import QuantSpec
from .gguf_repack import BITS as LOSSLESS
from .gguf_repack import GROUP, decode
from .options import Options
from .plan import Op, Output

F32 = dtypes.get("float32")


def nearest_bits(qtype: str) -> int:
    """MLX affine bits nearest below the type's bits per weight (scales included), 2..8: Q6_K -> 6, Q3_K -> 3."""
    import gguf

    block, tsize = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    bits = max(2, min(8, math.floor(tsize * 8 / block)))
    return 8 if bits == 7 else bits


class _Error:
    """Largest |difference| from the exact values over the blocks of one tensor (threads add to it)."""

    def __init__(self, info: dict):
        self.info, self.lock = info, threading.Lock()
        self.abs = self.ref = 0.0

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        with np.errstate(invalid="ignore", over="ignore"):
            err = float(np.max(np.abs(got - want))) if got.size else 0.0
            ref = float(np.max(np.abs(want))) if want.size else 0.0
        with self.lock:
            self.abs, self.ref = max(self.abs, err), max(self.ref, ref)
            self.info["max_abs_error"] = self.abs
            self.info["max_rel_error"] = self.abs / self.ref if self.ref else 0.0


class Repack:
    """Raw GGML rows -> MLX ``[weight, scales, biases]`` for the lossless types."""

    def __init__(self, qtype: str, scales: DType):
        self.qtype, self.bits, self.scales = qtype, LOSSLESS[qtype], scales
        self._info = {"gguf": {"type": qtype, "repack": "lossless" if scales is F32 else "rounded scales"}}
        self.error = None if scales.name == "float32" else _Error(self._info["gguf"])

    def __call__(self, block, op: Op, start: int, reader, src=None) -> list[np.ndarray]:
        lead = block.shape[:-1]
        rows = block.reshape(-1, block.shape[-1])
        codes, scale, bias = decode(rows, self.qtype)
        packed = quant.pack_codes(codes, self.bits)
        s, b = casts.cast(scale, F32, self.scales), casts.cast(bias, F32, self.scales)
        if self.error is not None:
            exact = (scale[..., None] * codes.reshape(codes.shape[0], -1, GROUP)).reshape(codes.shape)
            exact = exact + np.repeat(bias, GROUP, axis=1)
            got = quant.dequantize(packed, s, b, self.bits, GROUP, self.scales)
            self.error.add(casts.to_f32(got, self.scales), exact.astype(np.float32))
        k = codes.shape[1]
        return [
            packed.reshape(lead + (k * self.bits // 32,)),
            s.reshape(lead + (k // GROUP,)),
            b.reshape(lead + (k // GROUP,)),
        ]

    def info(self) -> dict:
        """The manifest record's keys (the same dict the measured error is added to while writing)."""
        return self._info


def dequantize(raw: np.ndarray, qtype: str) -> np.ndarray:
    """Raw GGML rows -> float32 values, with gguf-py's dequantizer (exact)."""
    import gguf

    return gguf.quants.dequantize(np.ascontiguousarray(raw), gguf.GGMLQuantizationType[qtype])


class Dequant:
    """Raw GGML rows -> floats (``spec`` None) or MLX affine quantization of those floats."""

    def __init__(self, qtype: str, spec: QuantSpec | None, out: DType):
        self.qtype, self.spec, self.out = qtype, spec, out
        g = {"type": qtype, "dequantized": "gguf.quants.dequantize"}
        self._info: dict = {"gguf": g}
        if spec is not None:
            self._info["quantization"] = spec.as_config()
        self.error = _Error(g) if spec is not None else None

    def __call__(self, block, op: Op, start: int, reader, src=None) -> list[np.ndarray]:
        values = dequantize(block, self.qtype)
        if self.spec is None:
            return [casts.cast(values, F32, self.out)]
        packed, s, b = quant.quantize(values, self.spec.bits, self.spec.group_size, F32, self.out)
        got = quant.dequantize(packed, s, b, self.spec.bits, self.spec.group_size, self.out)
        assert self.error is not None
        self.error.add(casts.to_f32(got, self.out), values)
        return [packed, s, b]

    def info(self) -> dict:
        """The manifest record's keys (the same dict the measured error is added to while writing)."""
        return self._info


def _float_shape(op: Op, qtype: str) -> tuple[int, ...]:
    import gguf

    block, tsize = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    raw = op.sources[0].shape
    return raw[:-1] + (raw[-1] // tsize * block,)


def attach(
    ops: list[Op], qtypes: dict[str, str], opts: Options, gguf_scales: str, recipe_block: dict | None, notes: list[str]
) -> dict | None:
    """Give each quantized GGUF tensor's op its transform and outputs; returns the config ``quantization`` block."""
    scales = dtypes.get(gguf_scales)
    float_out = F32 if opts.dtype == "keep" else dtypes.get(opts.dtype)
    specs: dict[str, QuantSpec] = {}
    counts: Counter = Counter()
    for op in ops:
        if len(op.sources) != 1 or op.sources[0].name not in qtypes:
            continue
        qtype = qtypes[op.sources[0].name]
        out = op.outputs[0]
        shape = _float_shape(op, qtype)
        lead, k = shape[:-1], shape[-1]
        spec = None
        t: Repack | Dequant
        if qtype in LOSSLESS and (opts.dtype == "keep" or opts.quantizing):
            t = Repack(qtype, scales)
            spec, sdt = QuantSpec(GROUP, LOSSLESS[qtype]), scales
            counts["repacked losslessly" if scales is F32 else f"repacked with {scales.name} scales"] += 1
        elif opts.dtype != "keep" and not opts.quantizing:
            t = Dequant(qtype, None, float_out)
            sdt = float_out
            counts[f"dequantized to {float_out.name}"] += 1
        else:
            bits = opts.q_bits or nearest_bits(qtype)
            group = opts.q_group_size if opts.quantizing else GROUP
            if k % group:
                group = GROUP
            spec, sdt = QuantSpec(group, bits), float_out
            t = Dequant(qtype, spec, float_out)
            counts[f"dequantized and requantized to {bits}-bit"] += 1
        op.transform = t
        op.transform_info = t.info()
        if spec is None:
            op.outputs = [Output(out.name, sdt, shape, out.shard, out.offset)]
            continue
        base = out.name[: -len("weight")] if out.name.endswith("weight") else out.name + "."
        op.outputs = [
            Output(out.name, dtypes.get("uint32"), lead + (k * spec.bits // 32,)),
            Output(base + "scales", sdt, lead + (k // spec.group_size,)),
            Output(base + "biases", sdt, lead + (k // spec.group_size,)),
        ]
        path = quant_recipes.module_path(out.name)
        if path:
            specs[quant_recipes.loaded_module_path(path)] = spec
    if counts:
        notes.append("GGUF quantized tensors: " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
    if not specs:
        return recipe_block
    if recipe_block is not None:
        default = QuantSpec(recipe_block["group_size"], recipe_block["bits"])
        block = dict(recipe_block)
    else:
        default = Counter(specs.values()).most_common(1)[0][0]
        block = default.as_config()
    for path, spec in specs.items():
        if spec != default:
            block[path] = spec.as_config()
    return block


def rebuild(rec: dict, outputs: list[Output]):
    """The transform a manifest record of a GGUF tensor describes (``verify`` recomputes outputs with it)."""
    g = rec["gguf"]
    if "repack" in g:
        return Repack(g["type"], outputs[1].dtype)
    q = rec.get("quantization")
    if q:
        return Dequant(g["type"], QuantSpec(q["group_size"], q["bits"], q.get("mode", "affine")), outputs[1].dtype)
    return Dequant(g["type"], None, outputs[0].dtype)


def error_notes(ops: list[Op]) -> list[str]:
    """After the run: the largest measured error of the tensors that were not repacked exactly."""
    worst = None
    n = 0
    for op in ops:
        g = (op.transform_info or {}).get("gguf")
        if g and "max_abs_error" in g:
            n += 1
            if worst is None or g["max_rel_error"] > worst[1]["max_rel_error"]:
                worst = (op.outputs[0].name, g)
    if worst is None:
        return []
    name, g = worst
    return [
        f"GGUF: {n} tensor(s) not exact (requantized or rounded scales); largest error in {name} "
        f"({g['type']}): max abs {g['max_abs_error']:.3g}, {g['max_rel_error']:.3g} of its largest |value| "
        "(each tensor's in torch2mlx.json)"
    ]
