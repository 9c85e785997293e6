"""What the stream takes from the analyzer: specs (exact rules and names) and buffers to drop.

Used automatically by ``torch2mlx.stream.convert`` when the checkpoint directory
has a config.json transformers knows, or when a model class is given, and by
``torch2mlx.convert`` with a live module. Without any of these, nothing here
imports torch.
"""

from __future__ import annotations

from ..core.model_rules import StreamInputs
from ..core.spec import RuleSpec
from ..errors import Torch2MLXError
from ..formats.checkpoint import Checkpoint

__all__ = ["StreamInputs", "stream_inputs", "reverse_inputs", "module_inputs"]


def stream_inputs(ck: Checkpoint, *, model: str | None = None, model_kwargs=None, status=None) -> StreamInputs:
    """Specs and drops for converting ``ck``, from ``model`` (a class path) or the directory's config.json.

    ``status(text)`` hears about the seconds of silence to come (importing torch and transformers)
    before they start, and ``status(None)`` when they are over.
    """
    shown = []

    def say(text: str) -> None:
        if status is not None:
            shown.append(text)
            status(text)

    try:
        return _stream_inputs(ck, model, model_kwargs, say)
    finally:
        if shown:
            status(None)


def _stream_inputs(ck: Checkpoint, model, model_kwargs, status) -> StreamInputs:
    from . import build

    if model is not None:
        status(f"analyzing {model}: importing torch...")
        config_dir = ck.config_dir if ck.config is not None else None
        built = build.from_class(model, model_kwargs, config_dir)
    elif ck.config is not None:
        from . import known

        kept = known.match_known(ck)
        if kept is not None:  # a registered architecture: its rules are data, no model to build
            model_name, m, types = kept
            inputs = from_match(ck, model_name, m, [], known.HOW)
            inputs.types = types
            return inputs
        from . import cache

        k = cache.key(ck.config_dir, ck)
        hit = cache.load(k, ck.path, ck)
        if hit is not None:
            report, built_notes, where = hit
            return _from_report(
                ck,
                report,
                built_notes,
                "config.json, analyzed on the meta device",
                [f"analysis reused from {where} (T2MLX_NO_CACHE=1 builds the model again)"],
            )
        if build.transformers_available():
            status("analyzing the model (first run; cached afterwards)...")
        try:
            why = build.why_not_config(ck.config_dir)
            if why is not None:
                return StreamInputs(notes=[why])
            built = build.from_config_dir(ck.config_dir)
        except Torch2MLXError as e:
            return StreamInputs(notes=[f"{e}; rules inferred from shapes"])
        except ImportError as e:  # torch/transformers present but broken: convert anyway, by inference
            return StreamInputs(
                notes=[f"config.json found, but the model could not be built ({e}); rules inferred from shapes"]
            )
    else:
        return StreamInputs()
    how = "config.json" if built.how == "config" else model
    inputs = _inputs(ck, built, f"{how}, analyzed on the meta device")
    if model is None:
        cache.save(k, inputs.report, built.notes, ck)
    return inputs


def reverse_inputs(ck: Checkpoint, model, model_kwargs) -> tuple[list[RuleSpec] | None, dict, list[str]]:
    """For the reverse direction: the forward specs of the model of the MLX checkpoint ``ck`` (torch names ->
    MLX names, to be inverted), the torch shapes, notes. ``model`` is a class path, else ``ck``'s config.json."""
    from . import build as abuild
    from .tree import walk

    if model is not None:
        built = abuild.from_class(model, model_kwargs, ck.config_dir if ck.config is not None else None)
    else:
        why = abuild.why_not_config(ck.config_dir)
        if why is not None:
            return None, {}, [why.replace("rules inferred from shapes", "tensors kept as they are")]
        try:
            built = abuild.from_config_dir(ck.config_dir)
        except (Torch2MLXError, ImportError) as e:
            return None, {}, [f"{e}; tensors kept as they are"]
    tree = walk(built.model)
    specs = [RuleSpec(t.mlx, t.sources, t.rule, dict(t.args), "model") for t in tree.tensors if t.mlx]
    shapes = {n: s for n, s in tree.shapes.items() if n not in tree.tied}
    note = f"rules from the model {built.name} ({'config.json' if model is None else model}), inverted"
    return specs, shapes, [note] + built.notes


def module_inputs(ck: Checkpoint, module) -> StreamInputs:
    """Specs and drops for tensors ``ck`` holds from a live ``module`` (its own state dict, typically).

    Wrappers (torch.compile's ``_orig_mod.``, DataParallel's ``module.``) are seen through:
    the output names are the inner model's.
    """
    from .build import SCRIPTED, from_module, is_scripted

    if is_scripted(module):  # no layer types to take rules from: the stream infers them, as without a model
        return StreamInputs(notes=[SCRIPTED])
    return _inputs(ck, from_module(module), "a live module")


def _inputs(ck: Checkpoint, built, how: str) -> StreamInputs:
    from .report import model_report

    return _from_report(ck, model_report(built, ck.path, ck), built.notes, how)


def _from_report(ck: Checkpoint, report, built_notes: list[str], how: str, extra: list[str] = ()) -> StreamInputs:
    inputs = from_match(ck, report.model, report.checkpoint, built_notes, how, extra)
    inputs.report = report
    return inputs


def from_match(ck: Checkpoint, model: str, m, built_notes: list[str], how: str, extra=()) -> StreamInputs:
    """The stream's inputs from the analyzer's match of ``ck`` to ``model``."""
    from ..core.fp8 import pair_scales

    # float8 scales are folded into their weights by the plan: no model has them, and no rule applies.
    scales = pair_scales((e.name, e.shape, e.dtype) for e in ck.entries).drop
    unmatched = [(n, w) for n, w in m.unmatched if n not in scales]
    counted = m.tensors - (len(m.unmatched) - len(unmatched))
    notes = (
        [
            f"rules from the model {model} ({how}): {m.matched} of {counted} tensors"
            + (f" (and {len(scales)} float8 scales)" if scales else "")
        ]
        + m.notes
        + built_notes
        + list(extra)
    )
    return StreamInputs(m.specs, m.drop, notes, [], None, unmatched)
