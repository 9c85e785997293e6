"""torch optimizer state <-> ``mlx.optimizers`` state, moments laid out as their weights are.

A moment (Adam's ``exp_avg``, SGD's ``momentum_buffer``, ...) has its weight's
shape and meaning element by element, so it converts with its weight's rule:
a conv weight's moments are transposed to channels-last, a MultiheadAttention
``in_proj`` moment splits into q/k/v as the weight does, names become MLX's.
Rules that compute (an LSTM's two biases summed into one, ``weight_norm``)
have no exact counterpart for moments: those are reported and left for MLX to
start from zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core import rules as _rules
from ..core.spec import RuleSpec
from ..errors import Torch2MLXError
from . import names as _names
from .arrays import Array
from .optimizers import MOMENTS, USES_STEP, infer_kind, kind_of
from .report import TrainingReport

_MOVING = ("identity", "split", "concat")  # besides permutations: rules that only move elements


def _moves_only(rule: str) -> bool:
    r = _rules.get(rule)
    return rule in _MOVING or type(r).__name__ == "Permute"


@dataclass
class OptimizerState:
    """An MLX optimizer state tree converted from torch (or the parts to build one)."""

    kind: str
    state: dict  # ready for ``optimizer.state = ...`` (``{"states": [...]}`` for several groups)
    step: int
    groups: list[list[str]]  # MLX parameter names per param group
    report: TrainingReport = field(default_factory=TrainingReport)


def forward_specs(model) -> list[RuleSpec]:
    """The analyzer's torch -> MLX specs for a torch module (meta tensors are fine: only shapes are read)."""
    from ..analysis.stream_inputs import module_inputs
    from ..stream.memory import names_only

    return module_inputs(names_only(model.state_dict()), model).specs or []


def _specs(rules, model, torch_names, shapes) -> list[RuleSpec]:
    if rules is not None:
        return list(rules)
    if model is not None:
        return forward_specs(model)
    # No model information: the stream's inference, so moments follow the weights converted without a model.
    # (a parameter without state has no shape here; it needs no rule either)
    return [
        RuleSpec(n, (n,), _rules.infer(n, shapes.get(n, ()), True) or "identity", {}, "inferred") for n in torch_names
    ]


def _unpack(torch_state, model_or_names):
    """``(state dict, model or None, names per id, live optimizer or None)``."""
    optimizer = None
    if hasattr(torch_state, "state_dict") and hasattr(torch_state, "param_groups"):
        optimizer, torch_state = torch_state, torch_state.state_dict()
    if not isinstance(torch_state, dict) or "state" not in torch_state or "param_groups" not in torch_state:
        raise Torch2MLXError("expected a torch optimizer or its state_dict() ({'state': ..., 'param_groups': ...})")
    if model_or_names is None:
        raise Torch2MLXError("the parameter names are needed: pass the model (or the names in the optimizer's order)")
    names = _names.resolve(model_or_names, torch_state["param_groups"], optimizer)
    model = model_or_names if hasattr(model_or_names, "named_parameters") else None
    return torch_state, model, names, optimizer


def _step_of(per_param: dict, kind: str, step, report: TrainingReport) -> int:
    steps = {name: int(Array.of(name, s["step"]).item()) for name, s in per_param.items() if "step" in s}
    if step is not None:
        return int(step)
    if not steps:
        return 0
    values = sorted(set(steps.values()))
    if len(values) > 1 and kind in USES_STEP:
        report.inexact.append(
            f"parameters were stepped {values[0]}..{values[-1]} times; MLX keeps one step "
            f"count for all (using {values[-1]})"
        )
    return values[-1]


def convert_optimizer_state(
    torch_state,
    model_or_param_names=None,
    rules=None,
    *,
    kind: str | None = None,
    step: int | None = None,
    strict: bool = True,
) -> OptimizerState:
    """An ``mlx.optimizers`` state tree from a torch optimizer's state.

    ``torch_state``: a live torch optimizer or its ``state_dict()`` (torch tensors, numpy
    arrays, or what ``read_training_checkpoint`` gives for Lightning's ``optimizer_states``).
    ``model_or_param_names``: the torch model (its parameter order names the ids; with a live
    optimizer the ids are matched exactly), or the names in the optimizer's order.
    ``rules``: the torch -> MLX ``RuleSpec``s of the weights (default: the analyzer's for the
    model, else the stream's shape inference). ``step`` overrides the step count (SGD keeps none).
    """
    sd, model, torch_names, optimizer = _unpack(torch_state, model_or_param_names)
    kind = kind or (kind_of(optimizer) if optimizer is not None else infer_kind(sd["param_groups"], sd["state"]))
    if kind not in MOMENTS:
        raise Torch2MLXError(f"optimizer kind {kind!r} has no MLX mapping (supported: {', '.join(MOMENTS)})")
    report = TrainingReport()
    ids = [i for g in sd["param_groups"] for i in g["params"]]
    per_param = {torch_names[pos]: sd["state"][i] for pos, i in enumerate(ids) if i in sd["state"]}
    group_of = dict(zip(torch_names, (gi for gi, g in enumerate(sd["param_groups"]) for _ in g["params"]), strict=True))
    shapes = {n: Array.of(n, next(iter(_tensors(s).values()))).shape for n, s in per_param.items() if _tensors(s)}
    specs = _specs(rules, model, torch_names, shapes)
    moments = MOMENTS[kind]
    flat: list[dict] = [{} for _ in sd["param_groups"]]
    mapped: set[str] = set()
    for spec in specs:
        params = [s for s in spec.sources if s in group_of]
        if not params:
            continue  # a buffer: optimizers keep no state for it
        if len(params) != len(spec.sources):
            report.inexact.append(f"{spec.out}: made from parameters and buffers together; its state is not carried")
            continue
        gi = group_of[params[0]]
        states = [per_param.get(s) for s in spec.sources]
        mapped.update(spec.sources)
        if any(s is None for s in states):
            continue  # never stepped in torch: MLX starts it from zero too
        if not _moves_only(spec.rule):
            report.inexact.append(
                f"{spec.out}: rule {spec.rule} combines {', '.join(spec.sources)}; "
                f"their {'/'.join(moments)} cannot be combined exactly (MLX starts it from zero)"
            )
            continue
        for tkey, mkey in moments.items():
            vals = [s.get(tkey) for s in states]
            if any(v is None for v in vals):
                continue
            arrs = [Array.of(f"{src}.{tkey}", v) for src, v in zip(spec.sources, vals, strict=True)]
            out = _rules.get(spec.rule).forward([a.data for a in arrs], dict(spec.args))
            flat[gi][f"{spec.out}.{mkey}"] = arrs[0].with_data(out).to_mlx()
        for extra in sorted(set().union(*[set(_tensors(s)) for s in states]) - set(moments) - {"step"}):
            report.inexact.append(f"{spec.out}: torch state {extra!r} has no MLX counterpart ({kind})")
    for name in sorted(set(per_param) - mapped):
        report.inexact.append(f"{name}: has optimizer state but no rule maps it to an MLX parameter")
    n_step = _step_of(per_param, kind, step, report)
    check_sgd_start(kind, sd, per_param, torch_names, report)
    group_names = [sorted({k.rsplit(".", 1)[0] for k in f}) for f in flat]
    trees = [_tree(f, n_step, g.get("lr", 0.0)) for f, g in zip(flat, sd["param_groups"], strict=True)]
    state = trees[0] if len(trees) == 1 else {"states": trees}
    report.check(strict, f"the {kind} state")
    return OptimizerState(kind, state, n_step, group_names, report)


def check_sgd_start(kind, sd, per_param, torch_names, report):
    for g in sd["param_groups"]:
        if kind == "SGD" and g.get("momentum", 0) and g.get("dampening", 0):
            fresh = [n for n in torch_names if per_param.get(n, {}).get("momentum_buffer") is None]
            if fresh:
                report.inexact.append(
                    f"SGD dampening={g['dampening']}: {len(fresh)} parameter(s) have no momentum "
                    "buffer yet, and MLX damps the first step where torch does not"
                )
                return


def _tensors(s: dict) -> dict:
    return {k: v for k, v in s.items() if k != "step" and v is not None and not isinstance(v, (int, float, bool))}


def _tree(flat: dict, step: int, lr) -> dict:
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    tree = tree_unflatten(list(flat.items())) if flat else {}
    tree["step"] = mx.array(step, dtype=mx.uint64)
    tree["learning_rate"] = mx.array(float(lr), dtype=mx.float32)
    return tree


def optimizer_state_to_torch(
    mlx_optimizer_or_state, model, torch_optimizer, rules=None, *, strict: bool = True
) -> dict:
    """A state dict for ``torch_optimizer.load_state_dict`` from an MLX optimizer (or its state).

    ``model`` and ``torch_optimizer`` are the torch side the state goes to: the model's
    rules undo MLX's names and layouts, the optimizer's param groups give the ids and the
    hyper-parameters (their ``lr`` is set to MLX's current learning rate).
    """
    import numpy as np
    from mlx.utils import tree_flatten

    from ..core.reverse import reverse_specs

    state = getattr(mlx_optimizer_or_state, "state", mlx_optimizer_or_state)
    kind = kind_of(torch_optimizer)
    template = torch_optimizer.state_dict()
    groups = [dict(g) for g in template["param_groups"]]
    trees = state["states"] if "states" in state else [state]
    if len(trees) not in (1, len(groups)):
        raise Torch2MLXError(f"{len(trees)} MLX optimizer states for {len(groups)} torch param groups")
    flat = {}
    for t in trees:
        flat.update({k: v for k, v in tree_flatten(t) if k not in ("step", "learning_rate")})
    for g, t in zip(groups, trees if len(trees) == len(groups) else trees * len(groups), strict=True):
        if "learning_rate" in t:
            lr = t["learning_rate"].item()
            # MLX keeps the rate in float32: torch's double stays when it is what MLX rounded
            g["lr"] = g["lr"] if np.float32(g["lr"]) == np.float32(lr) else float(lr)
    step = int(trees[0]["step"].item()) if "step" in trees[0] else 0
    report = TrainingReport()
    back = reverse_specs(_specs(rules, model, [], {}), errors=report.inexact)
    torch_names = _names.from_module(model, torch_optimizer)
    by_name = {}
    for spec in back:
        if spec.out not in torch_names:
            continue
        if not _moves_only(spec.rule):
            report.inexact.append(f"{spec.out}: rule {spec.rule} cannot rebuild its moments exactly (left out)")
            continue
        entry = {}
        for tkey, mkey in MOMENTS[kind].items():
            srcs = [flat.get(f"{s}.{mkey}") for s in spec.sources]
            if any(s is None for s in srcs):
                continue
            arrs = [Array.of(s, a) for s, a in zip(spec.sources, srcs, strict=True)]
            entry[tkey] = (
                arrs[0]
                .with_data(np.ascontiguousarray(_rules.get(spec.rule).forward([a.data for a in arrs], dict(spec.args))))
                .to_torch()
            )
        if entry:
            if kind != "SGD":
                import torch

                entry["step"] = torch.tensor(float(step))
            by_name[spec.out] = entry
    report.check(strict, f"the MLX {kind} state")
    ids = [i for g in groups for i in g["params"]]
    return {
        "state": {i: by_name[n] for i, n in zip(ids, torch_names, strict=True) if n in by_name},
        "param_groups": groups,
    }
