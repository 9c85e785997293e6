"""Planner: reads a checkpoint's entries and the options, and builds the ``Plan`` (the data in ``plan``).

Separate from ``plan`` so that the float8 and quantization steps (``transforms``) can use the plan's data
types while the planner uses them: the planner imports ``transforms``, ``transforms`` imports ``plan``.
"""

from __future__ import annotations

from ..core import dtypes, rules
from ..core.dtypes import DType
from ..core.entry import TensorEntry
from ..core.spec import RuleSpec
from ..errors import Torch2MLXError
from ..formats.checkpoint import Checkpoint
from . import transforms
from .options import Options
from .plan import Op, Output, Plan, assign_shards


def _strip(name: str, prefixes: list[str], used: set[str] | None = None) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if p and name.startswith(p) and len(name) > len(p):
                name, changed = name[len(p) :], True
                if used is not None:
                    used.add(p)
    return name


def out_dtype(src: DType, opts: Options, warn: list[str], name: str) -> DType:
    target = dtypes.mlx_target(src)
    if opts.dtype != "keep" and src.is_float:
        target = dtypes.get(opts.dtype)
    elif target is not src and target != src:  # `is`: DType's == compares field by field, in Python
        warn.append(
            f"{name}: {src.name} has no MLX equivalent; stored as {target.name}"
            + (" (exact)" if src.name.startswith("float8") else " (rounded)")
        )
    return target


def _user_rule(names, opts: Options, used: set[int]) -> str | None:
    """The first --rule matching any of ``names`` (the source name and the output name, after --strip-prefix)."""
    for i, (pattern, rule) in enumerate(opts.rules):
        if any(pattern.search(n) for n in names):
            used.add(i)
            return rule
    return None


def _unused_options(
    ck: Checkpoint, opts: Options, stripped: set[str], ruled: set[int], excluded: set[int]
) -> list[str]:
    """Warnings for --strip-prefix, --rule and --exclude values that matched no tensor: each was a silent no-op."""
    out = [f"--strip-prefix {p!r} matched no tensor name" for p in opts.strip_prefix if p not in stripped]
    rules_left = [i for i in range(len(opts.rules)) if i not in ruled]
    excl_left = [i for i in range(len(opts.exclude)) if i not in excluded]
    if rules_left or excl_left:
        # Not hit while planning is not yet a no-op: a rule shadowed by an earlier one, or a
        # pattern naming a tensor dropped anyway, still matches a name.
        names = [n for e in ck.entries for n in (e.name, _strip(e.name, opts.strip_prefix))]
        rules_left = [i for i in rules_left if not any(opts.rules[i][0].search(n) for n in names)]
        excl_left = [i for i in excl_left if not any(opts.exclude[i].search(n) for n in names)]
    out += [f"--rule '{opts.rules[i][0].pattern}={opts.rules[i][1]}' matched no tensor" for i in rules_left]
    out += [f"--exclude '{opts.exclude[i].pattern}' matched no tensor" for i in excl_left]
    return out


def build(
    ck: Checkpoint,
    opts: Options,
    specs: list[RuleSpec] | None = None,
    drop: dict[str, str] | None = None,
    module_types: dict[str, str] | None = None,
    recipe=None,
) -> Plan:
    """Plan the conversion of ``ck``. ``specs`` (from the analyzer) fix rules and names exactly;
    ``module_types`` (module path -> torch class name) sharpens which weights get quantized;
    ``recipe`` replaces the options' quantization (pre-quantized sources requantize only what was quantized)."""
    warnings: list[str] = []
    dropped: list[tuple[str, str]] = []
    by_name = {e.name: e for e in ck.entries}
    drop = dict(drop or {})
    if ck.config is not None:
        # A cached RoPE table: recomputed from the config by MLX (and rejected by mlx-lm's loader).
        drop.update(
            {
                e.name: "rotary cache, recomputed at load time"
                for e in ck.entries
                if e.name.endswith("rotary_emb.inv_freq")
            }
        )
        # A tied head saved next to its embedding: transformers and mlx-lm use the embedding,
        # and mlx-lm's loader rejects the copy once it is quantized (lm_head.scales/biases).
        head = by_name.get("lm_head.weight")
        if (
            ck.config.get("tie_word_embeddings") is True
            and head is not None
            and any(e is not head and e.shape == head.shape and e.dtype == head.dtype for e in ck.entries)
        ):
            drop["lm_head.weight"] = "tied to the input embedding (tie_word_embeddings)"
    dequant, fp8_drop, fp8_errors = transforms.plan_fp8(ck, by_name)
    drop.update(fp8_drop)
    warnings += fp8_errors
    kept, keep_notes = _kept(drop, opts, warnings)
    # A float8 weight with a scale is dequantized, not cast: it gets no per-tensor warning
    # (a DeepSeek-V3 has 45,000 of them), but one note below.
    quiet: list[str] = []

    def warn_for(srcs) -> list[str]:
        return quiet if len(srcs) == 1 and srcs[0].name in dequant else warnings

    ops: list[Op] = []
    covered: set[str] = set()

    stripped: set[str] = set()
    ruled: set[int] = set()
    excluded_by: set[int] = set()

    def excluded(*names) -> bool:
        for i, p in enumerate(opts.exclude):
            if any(p.search(n) for n in names):
                excluded_by.add(i)
                return True
        return False

    rule: str | None
    for spec in specs or []:
        if any(s not in by_name for s in spec.sources):
            continue  # the analyzer knows the module; this checkpoint lacks the tensor
        srcs = [by_name[s] for s in spec.sources]
        covered.update(spec.sources)
        gone = next((s for s in spec.sources if s in drop), None)
        if gone is not None:  # a drop decided from the checkpoint wins over the model's spec
            dropped.append((gone, drop[gone]))
            continue
        out_name = _strip(spec.out, opts.strip_prefix, stripped)
        if excluded(out_name, *spec.sources):
            dropped.append((",".join(spec.sources), "excluded by --exclude"))
            continue
        rule, source, args = spec.rule, spec.rule_source, dict(spec.args)
        user = _user_rule((spec.sources[0], out_name), opts, ruled) if len(spec.sources) == 1 else None
        if user:
            rule, source, args = user, "user", {}
        ops.append(_make_op(srcs, out_name, rule, source, args, opts, warn_for(srcs)))

    for e in ck.entries:
        if e.name in covered:
            continue
        if e.name in drop:
            dropped.append((e.name, drop[e.name]))
            continue
        out_name = _strip(e.name, opts.strip_prefix, stripped)
        if excluded(out_name, e.name):
            dropped.append((e.name, "excluded by --exclude"))
            continue
        rule = _user_rule((e.name, out_name), opts, ruled)
        source = "user"
        if rule is None and e.name in kept:  # as it is: the rules had no layout for it
            rule = "identity"
        elif rule is None and ck.layout == "mlx":
            rule, source = "identity", "default"
        elif rule is None:
            guess = rules.infer(e.name, e.shape, e.dtype.is_float)
            rule, source = (guess, "inferred") if guess else ("identity", "default")
            if guess:
                warnings.append(
                    f"{e.name}: rule {guess} inferred from its {len(e.shape)}-D shape "
                    f"(override with --rule '{e.name}=identity')"
                )
        ops.append(_make_op([e], out_name, rule, source, {}, opts, warn_for([e])))

    warnings += _unused_options(ck, opts, stripped, ruled, excluded_by)
    if ck.layout == "mlx" and not specs:
        warnings.append("source is already in MLX layout (format=mlx / .npz): no layout rules inferred")
    if not ops:
        raise Torch2MLXError(f"{ck.path}: nothing to convert (all {len(ck.entries)} tensors were dropped or excluded)")
    seen: dict[str, str] = {}
    for op in ops:
        for o in op.outputs:
            if o.name in seen:
                raise Torch2MLXError(
                    f"two tensors would both be written as {o.name!r} "
                    f"({seen[o.name]} and {op.sources[0].name}); check --strip-prefix"
                )
            seen[o.name] = op.sources[0].name
    ops.sort(key=lambda op: (op.sources[0].path or "", op.sources[0].offset))
    if recipe is None:  # a given recipe (pre-quantized modules to requantize) wins
        recipe = transforms.recipe_for(opts, [o.name for op in ops for o in op.outputs], ck.config)
    block = transforms.attach(ops, dequant, recipe, module_types, warnings)
    notes = list(ck.notes) + keep_notes
    if ck.gguf is not None:  # block-quantized GGUF tensors: repacked, dequantized or requantized
        from . import gguf_plan

        block = gguf_plan.attach(ops, ck.gguf.qtypes, opts, opts.gguf_scales, block, notes)
    scaled = [
        (op, op.transform)
        for op in ops
        if isinstance(op.transform, transforms.Chain) and "fp8_scale" in (op.transform_info or {})
    ]
    if scaled:
        kinds = sorted(
            {(chain.float_dtype or op.outputs[-1].dtype).name for op, chain in scaled}
        )  # [-1]: biases  # [-1]: biases
        notes.append(
            f"{len(scaled)} float8 weight(s) dequantized to {', '.join(kinds)} with their scales "
            "(the scale tensors are folded in, not written)"
        )
    plan = Plan(ops, assign_shards(ops, opts.max_shard_size), dropped, warnings, notes)
    plan.quantization = block
    return plan


def _kept(drop: dict[str, str], opts: Options, warnings: list[str]) -> tuple[set[str], list[str]]:
    """Take the tensors ``--keep`` names out of ``drop`` (they are written with the rules' name, or as they
    are); a pattern that names no dropped tensor is a warning, as an unused --exclude is."""
    if not opts.keep:
        return set(), []
    kept: set[str] = set()
    for p in opts.keep:
        hit = {n for n in drop if p.search(n)}
        if not hit:
            warnings.append(f"--keep '{p.pattern}' matched no tensor the rules drop")
        kept |= hit
    for n in kept:
        del drop[n]
    if not kept:
        return kept, []
    names = sorted(kept)
    shown = ", ".join(names[:5]) + (f" ... and {len(names) - 5} more" if len(names) > 5 else "")
    return kept, [f"{len(names)} tensor(s) the rules drop kept by --keep: {shown}"]


def _make_op(
    srcs: list[TensorEntry], out_name: str, rule_name: str, source: str, args: dict, opts: Options, warnings: list[str]
) -> Op:
    rule = rules.get(rule_name)
    shapes = [e.shape for e in srcs]
    why = rule.check(shapes, args)
    if why:
        raise Torch2MLXError(f"{srcs[0].name}: rule {rule_name} ({source}) does not fit: {why}")
    if len(srcs) > 1 and len({e.dtype for e in srcs}) != 1:
        raise Torch2MLXError(f"{out_name}: sources have different dtypes")
    dt = out_dtype(srcs[0].dtype, opts, warnings, srcs[0].name)
    return Op(srcs, rule_name, source, args, [Output(out_name, dt, rule.out_shape(shapes, args))])
