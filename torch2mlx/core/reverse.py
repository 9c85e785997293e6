"""Reverse specs: turn a torch -> MLX plan into the MLX -> torch plan that undoes it.

A single-source rule has a reverse twin (``conv2d`` / ``conv2d.reverse``).
Some torch tensors are read by several specs or share one with another
tensor, and their reverse is decided by the group:

- the three ``split`` parts of a packed projection concatenate back;
- a summed pair (``sum``) gives the whole sum to the first tensor and zeros
  to the second, which computes the same thing in torch;
- a GRU's ``b`` gives ``b_ih`` (``sum.reverse``) and ``bhn`` rebuilds ``b_hh``
  with zero reset/update thirds (``gru_hidden_bias``);
- ``weight_norm`` gives g (the weight's norm) and v (the weight).
"""

from __future__ import annotations

from ..errors import Torch2MLXError
from . import rules
from .spec import RuleSpec


def reverse_specs(specs: list[RuleSpec], errors: list[str] | None = None) -> list[RuleSpec]:
    """MLX -> torch specs (outputs are torch names, sources MLX names) for torch -> MLX ``specs``.

    A torch tensor that cannot be rebuilt raises, unless ``errors`` is given: then
    the reason is appended there and the tensor left out (a stream converts the rest).
    """
    readers: dict[str, list[RuleSpec]] = {}
    for s in specs:
        for src in s.sources:
            readers.setdefault(src, []).append(s)
    out = []
    for name, group in readers.items():
        try:
            out.append(_reverse_one(name, group))
        except Torch2MLXError as e:
            if errors is None:
                raise
            errors.append(str(e))
    return out


def _reverse_one(name: str, group: list[RuleSpec]) -> RuleSpec:
    src = group[0].rule_source
    splits = [s for s in group if s.rule == "split"]
    joint = [s for s in group if len(s.sources) > 1]
    if len(splits) == len(group) and {s.args.get("index") for s in splits} == set(range(splits[0].args["parts"])):
        ordered = sorted(splits, key=lambda s: s.args["index"])
        return RuleSpec(name, tuple(s.out for s in ordered), "concat", {}, src)
    if len(group) == 1 and not joint:
        (s,) = group
        back = rules.get(s.rule).reverse_name
        if back is None or s.rule in ("split", "gru_hidden_bias"):
            raise Torch2MLXError(f"{name}: rule {s.rule} keeps only part of it; it cannot be rebuilt alone")
        return RuleSpec(name, (s.out,), back, dict(s.args), src)
    if len(joint) != 1:
        raise Torch2MLXError(f"{name}: read by {len(joint)} multi-source rules; no reverse is defined")
    (s,) = joint
    index = s.sources.index(name)
    if s.rule == "weight_norm":
        return RuleSpec(name, (s.out,), "weight_norm.reverse", {**s.args, "index": index}, src)
    if s.rule == "gru_input_bias" and index == 1:
        bhn = next((x for x in splits if x.args == {"parts": 3, "index": 2}), None)
        if bhn is None:
            raise Torch2MLXError(f"{name}: a GRU hidden bias needs its bhn part to be rebuilt")
        return RuleSpec(name, (bhn.out,), "gru_hidden_bias", {}, src)
    if s.rule in ("sum", "gru_input_bias"):
        return RuleSpec(name, (s.out,), "sum.reverse", {"index": index}, src)
    raise Torch2MLXError(f"{name}: no reverse for rule {s.rule}")
