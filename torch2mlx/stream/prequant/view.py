"""Packed modules as virtual entries: MLX affine triples when exact, else one float32 weight.

Lossless repack. MLX affine dequantizes ``scale * q + bias`` per group of 32/64/128
consecutive inputs; GPTQ/AWQ compute ``scale * (q - zero)`` per source group. When every
MLX group of ``gs`` consecutive inputs lies in one source group (groups in input order of
any multiple of ``gs``, even act-order when the permutation happens to keep such runs
together), the codes are kept, ``scales`` repeat the source group's scale and
``biases = -scale * zero``. Both are stored in float32: a float16 scale times an integer
code or zero of at most 8 bits is exact in float32, so ``mx.dequantize`` (``scale * q``,
then ``+ bias``, each rounded to float32) gives ``scale * (q - zero)`` bit for bit. In
float16 the bias would be rounded (``scale * zero`` needs up to 19 significant bits).

Otherwise the module is one float32 ``weight`` holding that exact dequantization, read
a block of rows at a time, which the plan requantizes (``--q-bits``/``--q-group-size``,
default the source's bits and the nearest MLX group size) or casts (``--dtype``).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from ...core import dtypes, quant, quant_fp, quant_recipes
from ...core.casts import to_f32
from ...core.dtypes import DType
from ...core.entry import TensorEntry
from ...formats.data import DataReader
from ..plan import assign_shards
from .common import Found, Packed, read_scales

F32, U32 = dtypes.get("float32"), dtypes.get("uint32")


class _Reads:
    """The reader the virtual entries share: the plan's loaders are called without one."""

    def __init__(self):
        self.reader = DataReader()
        weakref.finalize(self, self.reader.close)


class _Part:
    """``loader`` of one virtual entry: rows [start, stop) of an output tensor."""

    def __init__(self, m: Packed, reads: _Reads, what: str, gmap: np.ndarray | None, gidx: np.ndarray | None):
        self.m, self.reads, self.what, self.gmap, self.gidx = m, reads, what, gmap, gidx
        zb = m.qzeros.nbytes if m.qzeros is not None else 0
        self.nbytes_read = {
            "weight": m.qweight.nbytes,
            "scales": m.scales.nbytes,
            "biases": zb,
            "float": m.qweight.nbytes + zb + m.scales.nbytes,
        }[what]

    def read(self, axis: int, start: int, stop: int) -> np.ndarray:
        assert axis == 0  # the plan reads these by rows (identity rule)
        m, r, fmt = self.m, self.reads.reader, self.m.fmt
        if self.what == "float" and hasattr(fmt, "dequantized"):  # no affine form: the format's own
            return fmt.dequantized(m, r, start, stop)
        if self.what == "weight":
            return fmt.words(m, r, start, stop)
        s = read_scales(m, r, start, stop)
        if self.what == "scales":
            return np.ascontiguousarray(s[:, self.gmap])
        z = fmt.zeros(m, r, start, stop)
        if self.what == "biases":
            return np.ascontiguousarray(-(s * z)[:, self.gmap])
        assert self.gidx is not None  # a "float" part is made with its group index
        return dequantize_rows(fmt.words(m, r, start, stop), s, z, self.gidx, m.bits)


def dequantize_rows(words: np.ndarray, s: np.ndarray, z: np.ndarray, gidx: np.ndarray, bits: int) -> np.ndarray:
    """``scale * (q - zero)`` in float32 for rows of MLX-packed codes, per-input group ``gidx``."""
    q = quant.unpack_codes(words, bits).astype(np.float32)
    q -= z[:, gidx]
    q *= s[:, gidx]
    return q


def mlx_group_size(gidx: np.ndarray) -> int | None:
    """The largest MLX group size whose groups each lie in one source group (None: none does)."""
    for gs in sorted(quant.GROUP_SIZES, reverse=True):
        if gidx.size % gs == 0:
            g = gidx.reshape(-1, gs)
            if (g == g[:, :1]).all():
                return gs
    return None


def nearest_group_size(gs: int, k: int) -> int | None:
    """The MLX group size nearest ``gs`` (larger on a tie) that divides ``k``."""
    fits = [g for g in quant.GROUP_SIZES if k % g == 0]
    return min(fits, key=lambda g: (abs(g - gs), -g)) if fits else None


@dataclass
class Prepared:
    found: Found
    entries: list[TensorEntry]
    repacked: dict[str, quant_recipes.QuantSpec] = field(default_factory=dict)  # module path -> spec
    floats: dict[str, Packed] = field(default_factory=dict)  # "<p>.weight" -> module, dequantized
    requant: dict[str, quant_recipes.QuantSpec] = field(default_factory=dict)  # module path -> target
    notes: list[str] = field(default_factory=list)
    model_dtype: DType | None = None
    virtual_names: set[str] = field(default_factory=set)  # the entries the view made
    warnings: list[str] = field(default_factory=list)

    def packed_names(self) -> set[str]:
        """The repacked triples' names: no model has a ``scales``, and its ``weight`` has the float shape."""
        return {p + s for p in self.repacked for s in (".weight", ".scales", ".biases")}


def _entry(m: Packed, suffix: str, dtype, cols: int, loader: _Part) -> TensorEntry:
    # where the packed codes lie: the plan reads in file order
    qw = m.qweight
    return TensorEntry(
        m.base + suffix, dtype, (m.out_features, cols), path=qw.path, offset=qw.offset, loader=loader, origin=qw.origin
    )


def prepare(ck, found: Found, opts) -> Prepared:
    reads = _Reads()
    unquantized = opts.dtype != "keep" or bool(getattr(opts, "dequantize", False))
    prep = Prepared(found, [])
    virtual: dict[str, list[TensorEntry]] = {}
    for base, m in found.modules.items():
        gidx = m.fmt.group_index(m, reads.reader)
        gs = None if (unquantized or opts.quantizing or gidx is None) else mlx_group_size(gidx)
        if gs is not None and m.bits in quant.BITS:
            gmap = gidx[::gs].copy()
            groups = m.in_features // gs
            virtual[m.qweight.name] = [
                _entry(m, ".weight", U32, m.in_features * m.bits // 32, _Part(m, reads, "weight", None, None)),
                _entry(m, ".scales", F32, groups, _Part(m, reads, "scales", gmap, None)),
                _entry(m, ".biases", F32, groups, _Part(m, reads, "biases", gmap, None)),
            ]
            prep.repacked[base] = quant_recipes.QuantSpec(gs, m.bits)
            continue
        virtual[m.qweight.name] = [_entry(m, ".weight", F32, m.in_features, _Part(m, reads, "float", None, gidx))]
        prep.floats[base + ".weight"] = m
        if unquantized or opts.quantizing:
            continue
        own = getattr(m.fmt, "target", None)  # a format whose nearest MLX form is not affine (NVFP4)
        if own is not None:
            prep.requant[base] = own(m)
            continue
        target = nearest_group_size(m.group_size, m.in_features)
        if target is None:
            prep.warnings.append(
                f"{base}: {m.in_features} inputs fit no MLX group size; written unquantized (exact dequantization)"
            )
            continue
        prep.requant[base] = quant_recipes.QuantSpec(target, m.bits)
    floats = [e.dtype for e in ck.entries if e.name not in found.hidden and e.dtype.name in quant.SCALE_DTYPES]
    # the model's float dtype (its unquantized tensors'), else the scales'; float32 only carries exact values
    prep.model_dtype = max(set(floats), key=floats.count) if floats else None
    prep.virtual_names = {v.name for vs in virtual.values() for v in vs}
    for e in ck.entries:
        if e.name in virtual:
            prep.entries += virtual[e.name]
        elif e.name not in found.hidden:
            prep.entries.append(e)
    prep.notes.append(f"source is pre-quantized: {found.describe()}")
    if prep.repacked:
        prep.notes.append(
            f"{len(prep.repacked)} module(s) repacked losslessly to MLX affine "
            "(codes kept; float32 scales and biases = -scale*zero, so mx.dequantize equals scale*(q-zero) exactly)"
        )
    wide = [b for b in prep.repacked if found.modules[b].scales.dtype.name == "float32"]
    if wide:
        prep.notes.append(
            f"{len(wide)} repacked module(s) have float32 scales: scale*q + bias then rounds twice where "
            "scale*(q-zero) rounds once, so mx.dequantize may differ from it by up to one float32 ulp of "
            "scale*2^bits (not bit for bit)"
        )
    if prep.floats:
        why = "--dtype/--dequantize" if unquantized else "--q-bits/--q-recipe" if opts.quantizing else None
        fmts = {m.fmt for m in prep.floats.values()}
        # a format with no affine form says what its exact dequantization is and why MLX cannot hold it
        how = "; ".join(sorted({getattr(f, "DEQUANTIZED", "") for f in fmts} - {""}))
        prep.notes.append(
            f"{len(prep.floats)} module(s) dequantized exactly ({how or 'float32 scale*(q-zero)'})"
            + (
                f", as {why} asks"
                if why
                else ""
                if how
                else ": their groups do not map onto MLX's (act-order g_idx or group size)"
            )
        )
    return prep


def recipe(prep: Prepared, opts) -> quant_recipes.Recipe | None:
    """Requantize exactly the modules that were quantized and could not be repacked (nothing else)."""
    if not prep.requant:
        return None
    from ..planner import _strip

    # the recipe sees output names: after --strip-prefix, as mlx-lm's model will load them
    specs = {
        quant_recipes.loaded_module_path(_strip(base + ".weight", opts.strip_prefix)[: -len(".weight")]): spec
        for base, spec in prep.requant.items()
    }
    default = max(set(specs.values()), key=list(specs.values()).count)

    def per_layer(path: str):
        spec = specs.get(path)
        return False if spec is None else True if spec == default else spec

    return quant_recipes.Recipe(default, per_layer, "prequant")


class _Measured:
    """A requantizing transform that also records the error it introduces (max abs, and relative to max |w|)."""

    def __init__(self, chain, info: dict):
        self.chain, self.info_ = chain, info
        self.nbytes_read = chain.nbytes_read
        self._lock = threading.Lock()
        self._abs = self._max = 0.0

    def __call__(self, block, op, start, reader, src=None):
        outs = self.chain(block, op, start, reader, src)
        spec = self.chain.spec
        if getattr(spec, "mode", "affine") != "affine":  # one uint8 scale per group: value * scale is exact
            back = quant_fp.dequantize(outs[0], outs[1], spec.mode, "float32")
        else:
            back = _dequantized_f32(outs, spec.bits, spec.group_size, op.outputs[1].dtype)
        err = float(np.max(np.abs(back - block))) if block.size else 0.0
        top = float(np.max(np.abs(block))) if block.size else 0.0
        with self._lock:
            self._abs, self._max = max(self._abs, err), max(self._max, top)
            self.info_["requant_max_abs_error"] = self._abs
            self.info_["requant_max_rel_error"] = self._abs / self._max if self._max else 0.0
        return outs

    def info(self) -> dict:
        return self.info_


def _dequantized_f32(outs, bits: int, gs: int, dt) -> np.ndarray:
    """``mx.dequantize`` of what was written, as float32 values (error measurement only).

    float16 rounds through numpy's own conversion (round to nearest even, as MLX): about 3x faster
    than ``quant.dequantize``'s exact-NaN path, and equal on the finite values a requantized weight holds.
    """
    if dt.name != "float16":
        return to_f32(quant.dequantize(outs[0], outs[1], outs[2], bits, gs, dt), dt)
    q = quant.unpack_codes(outs[0], bits).astype(np.float32)
    q = q.reshape(q.shape[0], -1, gs)
    s = to_f32(outs[1], dt)[..., None]
    b = to_f32(outs[2], dt)[..., None]
    with np.errstate(over="ignore", invalid="ignore"):
        q *= s
        q = q.astype(np.float16).astype(np.float32)
        q += b
        return q.astype(np.float16).astype(np.float32).reshape(q.shape[0], -1)


def finish_plan(plan, prep: Prepared, opts) -> None:
    """After ``build``: float outputs in the model's dtype, error measuring, the config block, notes."""
    changed = False
    measured = 0
    for op in plan.ops:
        m = prep.floats.get(op.sources[0].name) if len(op.sources) == 1 else None
        if m is None:
            continue
        if opts.dtype == "keep":  # the source model's float dtype, not the float32 carrier
            want = prep.model_dtype or m.scales.dtype
            for o in op.outputs:
                if o.dtype.is_float and o.dtype != want:
                    o.dtype, changed = want, True
        if op.transform is not None and getattr(op.transform, "spec", None) is not None:
            op.transform = _Measured(op.transform, op.transform_info if op.transform_info is not None else {})
            op.transform_info = op.transform.info_
            measured += 1
    if changed:
        plan.shards = assign_shards(plan.ops, opts.max_shard_size)
    if measured:
        plan.notes.append(
            f"{measured} dequantized module(s) requantized; the error each gets is in the report "
            "and the manifest (requant_max_abs_error / requant_max_rel_error)"
        )
    if not opts.quantizing:  # (asked-for quantization: the options' recipe wrote the block)
        # what each quantized module became, under its output name (after --strip-prefix)
        specs: dict[str, quant_recipes.QuantSpec] = {}
        for op in plan.ops:
            loader = op.sources[0].loader if len(op.sources) == 1 else None
            path = quant_recipes.module_path(op.outputs[0].name)
            if path is None:
                continue
            if isinstance(op.transform, _Measured):
                specs[quant_recipes.loaded_module_path(path)] = op.transform.chain.spec
            elif isinstance(loader, _Part) and loader.what == "weight":
                specs[quant_recipes.loaded_module_path(path)] = prep.repacked[loader.m.base]
        plan.quantization = _block(specs) if specs else None
    # every tensor's record says where it came from: the packed tensors it was rebuilt from
    for op in plan.ops:
        loader = op.sources[0].loader if len(op.sources) == 1 else None
        if isinstance(loader, _Part):
            m = loader.m
            info = dict(op.transform_info or {})
            info["prequant"] = {"method": prep.found.method, "module": m.base, "lossless": loader.what != "float"}
            if loader.what != "float":
                # Recorded as one quantized weight of the float tensor it stands for, so that `--to torch`
                # dequantizes the triple back to it (verify reads the three as written: see verify.py).
                spec = prep.repacked[m.base]
                info.update(
                    source=m.base + ".weight",
                    source_shape=[m.out_features, m.in_features],
                    source_dtype=(prep.model_dtype or m.scales.dtype).name,
                    role=loader.what,
                    quantization=spec.as_config(),
                )
            if op.transform_info is not None:
                op.transform_info.update(info)
            else:
                op.transform_info = info


def _block(specs: dict[str, quant_recipes.QuantSpec]) -> dict:
    """mlx-lm's ``quantization`` block: the most common spec, and an entry per module that differs."""
    values = list(specs.values())
    default = max(values, key=values.count)
    block = default.as_config()
    block.update({path: spec.as_config() for path, spec in specs.items() if spec != default})
    return block


def error_notes(plan) -> list[str]:
    """One line per requantized tensor (after execution: the transforms measured while writing)."""
    lines = []
    for op in plan.ops:
        if isinstance(op.transform, _Measured):
            i = op.transform.info_
            lines.append(
                f"requantized {op.outputs[0].name}: max abs error {i.get('requant_max_abs_error', 0.0):.3g}, "
                f"max rel error {i.get('requant_max_rel_error', 0.0):.3g} (of max |w|)"
            )
    return lines
