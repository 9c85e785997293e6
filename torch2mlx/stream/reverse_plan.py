"""The reverse plan (MLX -> PyTorch): the forward specs of a checkpoint, inverted, as an ordinary Plan.

Where the forward specs come from, in this order:

1. our own manifest (``torch2mlx.json`` next to the weights): each output's
   source(s), rule and args are exactly the spec that made it. The torch
   dtypes it records are restored (exact widenings; float8 by an exact lookup).
2. a model: ``--model`` or a config.json transformers knows (mlx-lm's output
   keeps the HF config). The analyzer's specs say which torch tensor became
   which MLX tensor under which rule.
3. nothing: tensors keep their names and layout, with a warning.

``reverse.reverse_specs`` inverts the specs (split -> concat, sum -> the sum
and zeros, permutations -> their twins, ...). Quantized weights first become
virtual float sources (``dequant``), so the plan, the executor and every rule
work unchanged; shards carry ``{"format": "pt"}`` as transformers writes them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from ..core import casts, dtypes, rules
from ..core.entry import TensorEntry
from ..core.model_rules import reverse_inputs as _model_specs
from ..core.reverse import reverse_specs
from ..core.spec import RuleSpec
from ..errors import Torch2MLXError
from ..formats.checkpoint import Checkpoint
from ..formats.data import DataReader
from . import dequant
from . import manifest as manifest_mod
from .manifest import NAME as MANIFEST
from .manifest import Manifest
from .options import Options
from .plan import Op, Plan, assign_shards
from .planner import build

TORCH_METADATA = {"format": "pt"}
# A training-step counter the forward stream drops (MLX norms have none): strict loading in torch
# needs the key, its value is unknown, and 0 is what a freshly built layer holds.
COUNTER = "num_batches_tracked"


@dataclass
class ReversePlan:
    plan: Plan
    view: Checkpoint  # what the plan reads: quantized triples as virtual float entries
    how: str  # manifest | model | given | none
    config: dict | None = None  # config.json for the torch side (quantization blocks removed)


def read_manifest(ck: Checkpoint) -> Manifest | None:
    """Our manifest next to the weights of a directory (or zarr store), if there is one with records."""
    d = ck.folder  # a remote source's manifest was fetched with its sidecars
    if d is None or not os.path.isfile(manifest_mod.path(d)):
        return None
    try:
        m = manifest_mod.read(d)
    except (OSError, ValueError) as e:
        raise Torch2MLXError(f"{manifest_mod.path(d)}: unreadable manifest ({e})") from None
    except TypeError:
        return None
    return m if isinstance(m.tensors, dict) else None


def _quant_params(base: str, records: dict, config: dict | None) -> dict | None:
    """bits/group_size/mode of one quantized module: our manifest record, else config.json as mlx-lm reads it."""
    rec = records.get(base + ".weight") or {}
    if isinstance(rec.get("quantization"), dict):
        return rec["quantization"]
    block = (config or {}).get("quantization") or (config or {}).get("quantization_config")
    if not isinstance(block, dict):
        return None
    own = block.get(base)
    q = own if isinstance(own, dict) else block
    return q if "bits" in q and "group_size" in q else None


def with_dequantized(
    ck: Checkpoint, reader: DataReader, fp_dtype=None, manifest: Manifest | None | bool = True
) -> tuple[Checkpoint, int]:
    """``with_float_views`` with the records of ``ck``'s own manifest (``manifest``: that manifest, already
    read, or None for none)."""
    m = read_manifest(ck) if manifest is True else manifest or None
    return with_float_views(ck, (m.tensors or {}) if m is not None else {}, reader, fp_dtype)


def with_float_views(ck: Checkpoint, records: dict, reader: DataReader, fp_dtype=None) -> tuple[Checkpoint, int]:
    """``ck`` with each quantized triple as one float weight read through ``reader``, and how many there were
    (``fp_dtype``: see ``dequant.view``)."""
    found = {}
    names = {e.name for e in ck.entries}
    for base, (w, s, b) in dequant.find(ck.entries).items():
        if base + ".global_scale" in names:
            raise Torch2MLXError(
                f"{base}: an nvfp4 weight with a global_scale (a tensor scale, as mlx-lm's "
                "quantize_model(global_scale=True) writes) is not read yet"
            )
        q = _quant_params(base, records, ck.config)
        if q is None:
            raise Torch2MLXError(
                f"{base}.weight is quantized (uint32 codes with scales), but neither {MANIFEST} "
                "nor config.json says with how many bits and which group size"
            )
        found[base] = dequant.check(base, w, s, b, int(q["bits"]), int(q["group_size"]), q.get("mode", "affine"))
    return (dequant.view(ck, found, reader, fp_dtype) if found else ck), len(found)


def _counters(names: list[str]) -> list[TensorEntry]:
    return [
        TensorEntry(n, dtypes.get("int64"), (), array=np.zeros((), np.int64), origin="restored counter")
        for n in names
        if n.rsplit(".", 1)[-1] == COUNTER
    ]


class ExactFloat8:
    """Op transform: the block's values as float8 codes, refusing any value the format cannot hold exactly."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, block, op: Op, start: int, reader, src=None) -> list[np.ndarray]:
        out = op.outputs[0].dtype
        codes, missed = casts.to_float8_exact(block, src or op.source_dtype, out)
        if missed:
            raise Torch2MLXError(
                f"{self.name}: {missed} value(s) are not exactly {out.name} (changed in MLX?); "
                "convert with --dtype bfloat16 to keep them"
            )
        return [codes]

    def info(self) -> dict:
        return {"exact_cast": True}


def _restore_dtypes(plan: Plan, by_mlx: dict[str, dict], opts: Options, fmt: str) -> tuple[int, list[str]]:
    """Give each output the torch dtype its MLX source came from: (how many changed, those that cannot be)."""
    if opts.dtype != "keep":
        return 0, []
    changed, kept = 0, []
    for op in plan.ops:
        rec = by_mlx.get(op.sources[0].name)
        want = dtypes.by_name(rec.get("source_dtype", "")) if rec else None
        o = op.outputs[0]
        if rec is None or want is None or want == o.dtype or len(op.outputs) != 1 or rec.get("fp8_scale"):
            continue  # float8 with a scale came out scaled: its values are no float8 any more
        if fmt == "safetensors" and want.safetensors is None:
            kept.append(f"{o.name}: safetensors has no {want.name}; kept as {o.dtype.name} (--format bin keeps it)")
            continue
        if want.name.startswith("float8"):
            op.transform, op.transform_info = ExactFloat8(o.name), {"exact_cast": True}
        elif not (want.kind == o.dtype.kind and (want.is_float or want.exact_numpy)):
            continue
        o.dtype = want
        changed += 1
    return changed, kept


def _check_shapes(plan: Plan, by_mlx: dict[str, dict], model_shapes: dict) -> list[str]:
    """Outputs whose shape is not the torch shape the manifest or the model says (a wrong rule, a wrong model)."""
    bad = []
    for op in plan.ops:
        o = op.outputs[0]
        rec = by_mlx.get(op.sources[0].name)
        want = None
        if rec is not None and not isinstance(rec.get("source"), list):
            want = tuple(rec.get("source_shape") or ())
        elif o.name in model_shapes:
            want = tuple(model_shapes[o.name])
        if want is not None and want != o.shape:
            bad.append(f"{o.name}: {list(o.shape)} but the torch tensor is {list(want)}")
    return bad


def torch_config(config: dict | None, opts: Options, plan: Plan) -> dict | None:
    """config.json for the torch side: no MLX quantization block, the dtype the weights now have."""
    if config is None:
        return None
    cfg = dict(config)
    cfg.pop("quantization", None)
    qc = cfg.get("quantization_config")
    fp8_left = any(o.dtype.name.startswith("float8") for op in plan.ops for o in op.outputs)
    if isinstance(qc, dict) and ("quant_method" not in qc or (qc.get("quant_method") == "fp8" and not fp8_left)):
        del cfg["quantization_config"]  # mlx-lm's copy of its block, or fp8 weights now dequantized
    if any(o.name.startswith("model.decoder.") for op in plan.ops for o in op.outputs):
        from .targets.mlx_whisper import hf_config

        cfg = hf_config(cfg)  # mlx-whisper's ModelDimensions back to a WhisperConfig (else as it is)
    floats = sorted({o.dtype.name for op in plan.ops for o in op.outputs if o.dtype.is_float and o.shape})
    if len(floats) == 1:
        for k in ("torch_dtype", "dtype"):
            if k in cfg:
                cfg[k] = floats[0]
    return cfg


def _some(names) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


@dataclass
class _Rules:
    """Where the reverse specs came from and what that source knows about the torch side."""

    specs: list[RuleSpec] | None
    how: str  # manifest | model | given | none
    by_mlx: dict[str, dict]  # manifest record of each MLX tensor
    model_shapes: dict[str, tuple[int, ...]]  # torch name -> shape, from a model
    counters: list[str]  # torch names that may be restored step counters
    notes: list[str]
    errors: list[str]


def _rules(m: Manifest | None, view: Checkpoint, specs, model, model_kwargs, use_model: bool) -> _Rules:
    errors: list[str] = []
    if specs is not None:
        return _Rules(specs, "given", {}, {}, [], [], errors)
    if m is not None:
        forward, by_mlx = manifest_mod.specs_from_records(m.tensors or {})
        counters = manifest_mod.dropped_sources(m)
        return _Rules(
            reverse_specs(forward, errors),
            "manifest",
            by_mlx,
            {},
            counters,
            [f"rules from {MANIFEST} ({len(forward)} MLX tensors), inverted"],
            errors,
        )
    if model is not None or (use_model and view.config is not None):
        forward, shapes, notes = _model_specs(view, model, model_kwargs)
        if forward is not None:
            return _Rules(reverse_specs(forward, errors), "model", {}, shapes, list(shapes), notes, errors)
        return _Rules(None, "none", {}, {}, [], notes, errors)
    return _Rules(None, "none", {}, {}, [], [], errors)


def _select(view: Checkpoint, back: list[RuleSpec], strict: bool) -> tuple[Checkpoint, list[RuleSpec]]:
    """Only the MLX tensors ``back`` reads, and only the specs whose sources are there; ``strict`` refuses both
    a needed tensor that is missing and a tensor with no place (an in-memory ``to_torch`` for ``load_state_dict``)."""
    have = {e.name for e in view.entries}
    missing = sorted({s for spec in back for s in spec.sources} - have)
    if strict and missing:
        raise Torch2MLXError(f"{len(missing)} MLX tensor(s) the model needs are missing, e.g. {missing[:3]}")
    back = [s for s in back if all(n in have for n in s.sources)]
    used = {n for s in back for n in s.sources}
    extra = sorted(have - used)
    if strict and extra:
        raise Torch2MLXError(
            f"{len(extra)} MLX tensor(s) have no place in the model, e.g. {extra[:3]} (strict=False ignores them)"
        )
    return dataclasses.replace(view, entries=[e for e in view.entries if e.name in used]), back


def plan_reverse(
    ck: Checkpoint,
    opts: Options,
    reader: DataReader,
    *,
    specs: list[RuleSpec] | None = None,
    drop: dict[str, str] | None = None,
    model=None,
    model_kwargs=None,
    use_model: bool = True,
    fmt: str = "safetensors",
    conversion: Manifest | None = None,
    strict: bool | None = None,
) -> ReversePlan:
    """Plan turning the MLX checkpoint ``ck`` into PyTorch tensors (written as ``fmt``: safetensors or bin);
    ``reader`` serves the dequantized sources.

    ``conversion``: the manifest of the conversion that made ``ck`` when it is not on disk next to it (an
    in-memory source: a ``Result``'s records). ``strict`` (in-memory ``to_torch``): keep only the tensors
    the rules rebuild, refusing missing or extra ones when true and any tensor the rules cannot rebuild.
    """
    if ck.metadata.get("format") == "pt" or "pickle" in ck.format:  # MLX never writes pickles
        what = "a pickle" if "pickle" in ck.format else "format=pt"
        raise Torch2MLXError(f"{ck.path}: already a PyTorch checkpoint ({what}); --to torch reads MLX checkpoints")
    m = conversion if conversion is not None else read_manifest(ck)
    if m is not None and m.to_torch:
        raise Torch2MLXError(f"{ck.path}: written by --to torch (already PyTorch layout)")
    if m is not None and not m.finished:
        raise Torch2MLXError(f"{ck.path}: its {MANIFEST} says the conversion did not finish")
    warnings = []
    if m is not None and m.transform:
        warnings.append(
            f"{MANIFEST}: written through a user transform, whose changes cannot be undone; its records are not used"
        )
        m = None
    copied_mlx = m is not None and m.source_layout == "mlx"
    if copied_mlx:  # its records map MLX tensors to themselves: nothing about torch layouts in them
        m = None
    view, n_quant = with_dequantized(ck, reader, manifest=m)
    view = dataclasses.replace(view, layout="mlx")  # no forward layout may be guessed on the way back
    r = _rules(m, view, specs, model, model_kwargs, use_model)
    if strict is not None:
        if strict and r.errors:
            raise Torch2MLXError(r.errors[0])
        view, r.specs = _select(view, r.specs or [], strict)
    notes = list(r.notes)
    if copied_mlx:
        notes.append(f"{MANIFEST}: the forward run read a source that was already MLX; its records are not used")
    if r.how == "none":
        warnings.append(
            f"no {MANIFEST} and no model information: tensors keep their MLX names and layouts "
            "(give --model, or --rule REGEX=RULE naming the forward layout to undo)"
        )
    have = {e.name for e in view.entries}
    restored = [e for e in _counters(r.counters) if e.name not in have]
    if restored:
        view = dataclasses.replace(view, entries=view.entries + restored)
        notes.append(f"{len(restored)} {COUNTER} counter(s) restored as 0 (MLX keeps none)")
    # A user --rule names the forward layout; on the way back its twin undoes it.
    bopts = dataclasses.replace(opts, rules=[(p, rules.reverse_of(name)) for p, name in opts.rules])
    plan = build(view, bopts, r.specs or [], drop)
    plan.warnings = [w for w in plan.warnings if not w.startswith("source is already in MLX layout")]
    plan.warnings[:0] = warnings + [f"not rebuilt: {e}" for e in r.errors]
    outs = {o.name for op in plan.ops for o in op.outputs}
    if r.how == "model":
        extra = [
            op.outputs[0].name
            for op in plan.ops
            if op.rule_source == "default" and op.outputs[0].name not in r.model_shapes
        ]
        if extra:
            plan.warnings.append(
                f"{len(extra)} tensor(s) are not in the model and keep their MLX names and layout: {_some(extra)}"
            )
        missing = sorted(set(r.model_shapes) - outs)
        if missing:
            plan.warnings.append(f"{len(missing)} model tensor(s) have no source in the checkpoint: {_some(missing)}")
    if r.how == "manifest":
        assert m is not None and r.specs is not None  # what _rules read them from, and what it made
        absent = sorted({s.out for s in r.specs if not all(n in have for n in s.sources)})
        if absent:
            plan.warnings.append(
                f"{len(absent)} tensor(s) in {MANIFEST} are not in the checkpoint, so not rebuilt: {_some(absent)}"
            )
        lost = [s for s in manifest_mod.dropped_sources(m) if s not in outs]
        if lost:
            notes.append(f"{len(lost)} tensor(s) the forward conversion dropped are not rebuilt: {_some(lost)}")
    bad = _check_shapes(plan, r.by_mlx, r.model_shapes)
    if bad and r.how == "manifest":
        raise Torch2MLXError(f"{MANIFEST} does not describe these tensors: {bad[0]}")
    plan.warnings += [f"shape differs: {b}" for b in bad]
    if n_quant:
        notes.append(f"{n_quant} quantized weight(s) dequantized (mx.dequantize, block by block)")
    if r.how == "manifest":
        changed, kept = _restore_dtypes(plan, r.by_mlx, opts, fmt)
        plan.warnings += kept
        if changed:
            notes.append(f"{changed} source dtype(s) restored from {MANIFEST}")
    plan.notes[:0] = notes
    plan.shards = assign_shards(plan.ops, opts.max_shard_size, TORCH_METADATA)
    return ReversePlan(plan, view, r.how, torch_config(ck.config, opts, plan))
