"""Regenerate ``known_rules.json``: the analyzer's rules for every registered architecture, kept as data.

    python -m torch2mlx.analysis.known_gen      (or ``make rules-data``)

Each architecture is built on the meta device from transformers' default config, once as it is and once
with ``tie_word_embeddings`` flipped, and walked. Layer indices (name parts that are all digits) become
``*``: what is left does not depend on the config's layer count or sizes, and an architecture where it
would (a pattern with two rules, an MLX name whose indices are not the torch name's, a tie between
numbered tensors) is refused here rather than kept wrong. Imports torch and transformers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from .known import ARCHS, pattern

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "known_rules.json")


def _walk(model_type: str, arch: str, tie: bool | None):
    from transformers import AutoConfig

    from .build import from_config_dir
    from .tree import walk

    config = AutoConfig.for_model(model_type)
    config.architectures = [arch]
    if tie is not None:  # sub-configs too: the data is used only where they agree with the top
        for sub in [config] + [v for v in vars(config).values() if hasattr(v, "tie_word_embeddings")]:
            sub.tie_word_embeddings = tie
    with tempfile.TemporaryDirectory() as d:
        config.to_json_file(os.path.join(d, "config.json"))
        built = from_config_dir(d)
    if built.name != arch or built.notes:
        raise ValueError(f"{arch}: built {built.name} ({built.notes})")
    return walk(built.model), getattr(config, "tie_word_embeddings", None), built.model


def _numbers(name: str) -> list[str]:
    return [p for p in name.split(".") if p.isdigit()]


def _mlx_pattern(mlx: str, source: str) -> str:
    """``mlx`` with ``*`` for the indices its source has as ``*`` (the k-th index of one is the other's k-th)."""
    wild = iter([p == "*" for p in source.split(".") if p == "*" or p.isdigit()])
    return ".".join("*" if p.isdigit() and next(wild) else p for p in mlx.split("."))


class _Conflict(Exception):
    pass


def _split_at(a: str, b: str) -> str:
    """The prefix (as a pattern) whose numbered child differs last between two names of one pattern."""
    pa, pb = a.split("."), b.split(".")
    last = max(i for i, (x, y) in enumerate(zip(pa, pb, strict=False)) if x != y)
    return pattern(".".join(pa[:last]))


def _table(tree, arch: str, fixed: list) -> dict:
    """Sources and MLX name as patterns -> [source patterns, mlx pattern, rule, args, layer class, why,
    source ranks]. Raises _Conflict(prefix) when a pattern would have two rules."""
    tensors: dict[str, list] = {}
    first: dict[str, str] = {}
    for t in tree.tensors:
        if t.rule_source != "model":
            raise ValueError(f"{arch}: {t.sources} has no rule from the model")
        nums = _numbers(t.sources[0])
        if any(_numbers(s) != nums for s in t.sources) or (t.mlx is not None and _numbers(t.mlx) != nums):
            raise ValueError(f"{arch}: {t.sources} -> {t.mlx}: indices do not carry over")
        row = [
            [pattern(s, fixed) for s in t.sources],
            None if t.mlx is None else _mlx_pattern(t.mlx, pattern(t.sources[0], fixed)),
            t.rule,
            dict(t.args),
            t.layer.replace(":", ".").split(".")[-1],
            t.why,
            [len(s) for s in t.source_shapes],
        ]
        key = f"{' '.join(row[0])} -> {row[1]}"
        old = tensors.setdefault(key, row)
        first.setdefault(key, t.sources[0])
        if old != row:
            raise _Conflict(_split_at(first[key], t.sources[0]))
    return tensors


def _fixed_table(tree, arch: str, fixed: list) -> dict:
    """The table, keeping literal the indices of children whose layers differ (a Sequential's LayerNorm, Conv2d)."""
    while True:
        try:
            return _table(tree, arch, fixed)
        except _Conflict as c:
            if c.args[0] in fixed:
                raise ValueError(f"{arch}: {c.args[0]} conflicts with its indices kept") from None
            fixed.append(c.args[0])


def _order(trees: list, fixed: list, arch: str) -> dict:
    """Prefix pattern -> its rank among its siblings in the depth-first walk. Siblings seen in several
    places (a T5 block's attention layer and its feed-forward layer, both ``layer.*``) are ordered by every
    place they are seen together; contradicting places are refused."""
    children: dict[str, list[str]] = {}  # a real prefix -> its children's patterns, in walk order
    first: dict[str, int] = {}
    for tree in trees:
        for t in tree.tensors:
            for s in t.sources:
                parts = s.split(".")
                for i in range(len(parts)):
                    child = pattern(".".join(parts[: i + 1]), fixed)
                    first.setdefault(child, len(first))
                    seq = children.setdefault(".".join(parts[:i]), [])
                    if child not in seq:
                        seq.append(child)
    after: dict[str, set] = {c: set() for c in first}
    for seq in children.values():
        for a, b in zip(seq, seq[1:], strict=False):
            after[b].add(a)
    order: dict[str, int] = {}
    left = sorted(first, key=first.get)
    while left:
        ready = next((c for c in left if not (after[c] - set(order))), None)
        if ready is None:
            raise ValueError(f"{arch}: siblings in contradicting orders ({left[:3]})")
        order[ready] = len(order)
        left.remove(ready)
    return order


def architecture(model_type: str, arch: str) -> dict:
    fixed: list[str] = []
    tree, tie, model = _walk(model_type, arch, None)
    variants = {json.dumps(tie): tree}
    models = [model]
    if tie is not None:
        variants[json.dumps(not tie)], _, other = _walk(model_type, arch, not tie)
        models.append(other)
    for t in variants.values():
        _fixed_table(t, arch, fixed)
    tensors: dict = {}
    for t in variants.values():
        more = _table(t, arch, fixed)
        for k, row in more.items():
            if tensors.setdefault(k, row) != row:
                raise ValueError(f"{arch}: {k} has another rule when tie_word_embeddings is {not tie}")
    order = _order(list(variants.values()), fixed, arch)
    for t in variants.values():
        if any(_numbers(n) for n in t.tied):
            raise ValueError(f"{arch}: numbered tied tensors ({sorted(t.tied)[:2]}): their count depends on the config")
    saved: dict = {}
    for t, m in zip(variants.values(), models, strict=True):
        for k, row in (_saved_layout(t, m, arch, fixed) or {}).items():
            if saved.setdefault(k, row) != row:
                raise ValueError(f"{arch}: saved {k} has another rule when tie_word_embeddings is {not tie}")
    return {
        "model_type": model_type,
        "tie_default": tie,
        "fixed": sorted(fixed),
        "tensors": tensors,
        "saved": saved,
        "tied": {k: t.tied for k, t in variants.items()},
        "order": order,
    }


def _saved_layout(tree, model, arch: str, fixed: list) -> dict | None:
    """The rows for the names transformers saves the model under, when they are not the model's own
    (per-expert MoE weights it stacks at load time, a multimodal model's older prefixes): checkpoint source
    patterns -> [source patterns, output pattern, rule, args, module type, why, ranks, the model's name
    for the first source as a pattern (None: a piece of a stacked tensor), kind (exact, renamed, piece)]."""
    from transformers.core_model_loading import revert_weight_conversion

    from ..core.dtypes import get as dtype
    from ..core.entry import TensorEntry
    from .matching import _Transformers, match

    state = model.state_dict()
    saved = revert_weight_conversion(model, state)
    if list(saved) == list(state):
        return None
    entries = [TensorEntry(n, dtype(str(t.dtype).removeprefix("torch.")), tuple(t.shape)) for n, t in saved.items()]
    m = match(entries, tree, model)
    if m.unmatched:
        raise ValueError(f"{arch}: saved names the analyzer does not match: {m.unmatched[:2]}")
    hf = _Transformers(model, tree.shapes)
    kind: dict[str, tuple[str, str | None]] = {}
    for e in entries:
        target, ops = (e.name, None) if e.name in tree.shapes else hf.rename(e.name)
        kind[e.name] = ("piece", None) if ops is not None else ("exact" if target == e.name else "renamed", target)
    types = {
        t.mlx[: -len(".weight")]: t.layer.replace(":", ".").split(".")[-1]
        for t in tree.tensors
        if t.mlx and t.mlx.endswith(".weight")
    }
    ndims = {e.name: len(e.shape) for e in entries}
    rows: dict[str, list] = {}
    outs = [(s.sources, s.out, s.rule, s.args, "") for s in m.specs] + [
        ((n,), None, "drop", {}, w) for n, w in m.drop.items()
    ]
    for sources, out, rule, args, why in outs:
        nums = _numbers(sources[0])
        k, target = kind[sources[0]]
        if any(_numbers(x) != nums for x in sources) or (out is not None and _numbers(out) != nums):
            raise ValueError(f"{arch}: saved {sources} -> {out}: indices do not carry over")
        if target is not None and _numbers(target) != nums:
            raise ValueError(f"{arch}: saved {sources[0]} is the model's {target}: indices do not carry over")
        src = [pattern(x, fixed) for x in sources]
        row = [
            src,
            None if out is None else _mlx_pattern(out, src[0]),
            rule,
            dict(args),
            types.get(out[: -len(".weight")]) if out is not None and out.endswith(".weight") else None,
            why,
            [ndims[x] for x in sources],
            None if target is None else _mlx_pattern(target, src[0]),
            k,
        ]
        key = f"{' '.join(src)} -> {row[1]}"
        if rows.setdefault(key, row) != row:
            raise ValueError(f"{arch}: saved {key} has two rules")
    return rows


def generate_rules() -> dict:
    import transformers

    return {
        "transformers": transformers.__version__,
        "architectures": {arch: architecture(mt, arch) for mt, arch in ARCHS.items()},
    }


def render_rules(data: dict) -> str:
    """JSON, an item a line (diffs of a regeneration show what changed)."""
    return json.dumps(data, indent=0) + "\n"


def main() -> int:
    text = render_rules(generate_rules())
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
