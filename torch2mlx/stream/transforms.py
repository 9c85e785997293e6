"""Per-tensor transforms applied after the layout rule: float8 dequantization and quantization.

Both are decided at plan time from names, shapes and dtypes alone, and both
work on a block of rows at a time, so a 0.7 GB tensor is dequantized or
quantized in bounded memory. A transform replaces an op's final cast: it takes
the block the rule produced (in the source dtype) and returns one array per
output — three for an affine-quantized weight (``weight`` uint32, ``scales``, ``biases``),
two for the fp modes (mxfp4/nvfp4/mxfp8: ``weight`` and uint8 ``scales``).
"""

from __future__ import annotations

import threading

import numpy as np

from ..core import casts, dtypes, fp8, quant, quant_fp, quant_recipes
from ..core.dtypes import DType
from ..core.entry import TensorEntry
from ..errors import Torch2MLXError
from ..formats.checkpoint import Checkpoint
from .options import Options
from .plan import Op, Output

F32 = dtypes.get("float32")


class _FP8Dequant:
    """Dequantize float8 rows with their scale tensor (read once, it is small)."""

    def __init__(self, scale: TensorEntry, weight: fp8.FP8Weight):
        self.scale, self.weight = scale, weight
        self._arr: np.ndarray | None = None
        self._lock = threading.Lock()

    def scale_array(self, reader) -> np.ndarray:
        with self._lock:
            if self._arr is None:
                self._arr = reader.read_all(self.scale)
            return self._arr

    def __call__(self, block, op: Op, start: int, reader, dtype: DType) -> np.ndarray:
        return fp8.dequantize(
            block,
            op.source_dtype,
            self.scale_array(reader),
            self.scale.dtype,
            weight_shape=op.sources[0].shape,
            start=start,
            blocks=self.weight.blocks,
            out_dtype=dtype,
        )


class Chain:
    """What happens to a block after the rule: optional float8 scaling, an adapter fused in
    (``stream.lora.fuse.Fuse``), then cast or quantize."""

    def __init__(
        self,
        dequant: _FP8Dequant | None = None,
        spec: quant_recipes.QuantSpec | None = None,
        fuse=None,
        float_dtype: DType | None = None,
    ):
        """``float_dtype``: the dtype the weight would have had unquantized (MLX quantizes its values);
        the fp modes need it named, their scales being uint8."""
        self.dequant, self.spec, self.fuse = dequant, spec, fuse
        self.float_dtype = float_dtype
        # the scale tensor is read too, though folded in and never written: the report counts it
        self.nbytes_read = dequant.scale.nbytes if dequant is not None else 0

    def __call__(self, block, op: Op, start: int, reader, src: DType | None = None) -> list[np.ndarray]:
        """``src``: the dtype ``block`` is in (the rule may have widened it to float32)."""
        float_dtype = self.float_dtype or (op.outputs[1].dtype if self.spec else op.outputs[0].dtype)
        if self.dequant is not None:
            block, src = self.dequant(block, op, start, reader, float_dtype), float_dtype
        else:
            src = src or op.source_dtype
        if self.fuse is not None:
            block, src = self.fuse(casts.to_f32(block, src), start), F32
        if self.spec is None:
            return [casts.cast(block, src, float_dtype)]
        if self.spec.mode != "affine":
            return list(quant_fp.quantize(block, self.spec.mode, src, float_dtype))
        parts = list(quant.quantize(block, self.spec.bits, self.spec.group_size, src, float_dtype))
        if self.fuse is not None:  # what quantizing the fused rows cost, for the report
            packed, scales, biases = parts
            back = quant.dequantize(packed, scales, biases, self.spec.bits, self.spec.group_size, float_dtype)
            self.fuse.saw_quantized(float(np.abs(casts.to_f32(back, float_dtype) - block).max(initial=0.0)))
        return parts

    def info(self) -> dict:
        d: dict[str, object] = {}
        if self.dequant is not None:
            blocks = self.dequant.weight.blocks
            assert blocks is not None  # pair_scales gives every weight with a scale its blocks
            d["fp8_scale"] = self.dequant.scale.name
            d["fp8_blocks"] = list(blocks)
        if self.spec is not None:
            d["quantization"] = self.spec.as_config()
            if self.spec.mode != "affine" and self.float_dtype is not None:
                d["quantized_from"] = self.float_dtype.name
        if self.fuse is not None:
            d.update(self.fuse.info())
        return d


def rebuild(info: dict, weight: TensorEntry, by_name: dict[str, TensorEntry]) -> Chain:
    """The transform a manifest record describes (``verify`` recomputes outputs with it)."""
    dequant = None
    if info.get("fp8_scale"):
        scale = by_name[info["fp8_scale"]]
        blocks = tuple(info.get("fp8_blocks") or fp8.block_shape(weight.shape, scale.shape))
        dequant = _FP8Dequant(
            scale, fp8.FP8Weight(weight.name, weight.dtype.name, scale.name, scale.dtype.name, blocks)
        )
    q = info.get("quantization")
    spec = quant_recipes.QuantSpec(q["group_size"], q["bits"], q.get("mode", "affine")) if q else None
    float_dtype = dtypes.get(info["quantized_from"]) if info.get("quantized_from") else None
    return Chain(dequant, spec, float_dtype=float_dtype)


def plan_fp8(
    ck: Checkpoint, by_name: dict[str, TensorEntry]
) -> tuple[dict[str, _FP8Dequant], dict[str, str], list[str]]:
    """(dequantizer per float8 weight with a scale, tensors to drop, warnings)."""
    if not any(e.dtype.name in fp8.FP8_WEIGHT_DTYPES for e in ck.entries):
        return {}, {}, []  # nothing to pair (and 100,000 entries need no table for that)
    block = None
    qc = (ck.config or {}).get("quantization_config") or {}
    if isinstance(qc, dict) and isinstance(qc.get("weight_block_size"), list):
        block = tuple(qc["weight_block_size"])
    pairing = fp8.pair_scales(((e.name, e.shape, e.dtype) for e in ck.entries), block)
    deq = {name: _FP8Dequant(by_name[w.scale], w) for name, w in pairing.weights.items() if w.scale}
    drop = {n: "float8 scale, folded into its weight" for n in pairing.drop}
    return deq, drop, list(pairing.errors)


def recipe_for(opts: Options, out_names: list[str], config: dict | None) -> quant_recipes.Recipe | None:
    if not opts.q_bits and not opts.q_recipe:
        return None
    if opts.q_recipe:
        paths = [quant_recipes.loaded_module_path(p) for p in map(quant_recipes.module_path, out_names) if p]
        try:
            loc = quant_recipes.layer_location(paths)
        except ValueError as e:
            raise Torch2MLXError(f"q_recipe {opts.q_recipe}: {e}") from None
        layers = (config or {}).get("num_hidden_layers") or 1 + max(
            (int(p.split(".")[loc]) for p in paths if len(p.split(".")) > loc and p.split(".")[loc].isdigit()),
            default=0,
        )
        return quant_recipes.mixed_recipe(opts.q_recipe, layers, loc, opts.q_group_size, opts.q_bits)
    assert opts.q_bits  # neither q_bits nor q_recipe returned above
    return quant_recipes.Recipe(quant_recipes.QuantSpec(opts.q_group_size, opts.q_bits, opts.q_mode))


def attach(
    ops: list[Op], deq: dict[str, _FP8Dequant], recipe, module_types: dict[str, str] | None, warnings: list[str]
) -> dict | None:
    """Give ops their float8 / quantization transforms; returns the config ``quantization`` block."""
    explicit: dict[str, quant_recipes.QuantSpec] = {}
    quantized = 0
    for op in ops:
        if len(op.outputs) != 1:
            continue
        out = op.outputs[0]
        d = deq.get(op.sources[0].name) if len(op.sources) == 1 else None
        spec = None
        if recipe is not None:
            path = quant_recipes.module_path(out.name)
            mtype = (module_types or {}).get(path) if path else None
            spec, is_entry = quant_recipes.decide(out.name, out.shape, out.dtype, recipe, mtype)
            if spec and is_entry:
                assert path is not None  # decide quantizes only weights of a module
                explicit[quant_recipes.loaded_module_path(path)] = spec
        if d is None and spec is None:
            continue
        op.transform = Chain(d, spec, float_dtype=out.dtype if spec is not None and spec.mode != "affine" else None)
        if spec is not None:
            quantized += 1
            lead, k = out.shape[:-1], out.shape[-1]
            groups = k // spec.group_size
            base = out.name[: -len("weight")]  # "a.b." (or "" for a bare Linear's "weight")
            op.outputs = [Output(out.name, dtypes.get("uint32"), lead + (k * spec.bits // 32,))]
            if spec.mode == "affine":
                op.outputs += [
                    Output(base + "scales", out.dtype, lead + (groups,)),
                    Output(base + "biases", out.dtype, lead + (groups,)),
                ]
            else:  # one uint8 scale per group (e8m0 or e4m3), no biases
                op.outputs.append(Output(base + "scales", dtypes.get("uint8"), lead + (groups,)))
        op.transform_info = op.transform.info()
    if recipe is None:
        return None
    if not quantized:
        warnings.append(
            "quantization asked for, but no tensor qualifies (2-D float *.weight with a last "
            "dimension divisible by the group size)"
        )
    return quant_recipes.quantization_config(recipe, explicit)
