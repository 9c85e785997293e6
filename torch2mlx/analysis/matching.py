"""Match a checkpoint's tensor names to the analyzed model's, and turn the model's rules into stream specs.

Names differ for known reasons, tried in this order:
1. the same name;
2. wrapper prefixes: ``_orig_mod.`` (torch.compile), ``module.`` (DataParallel);
3. what transformers itself renames at load time (its per-model conversion
   mapping: old ViT/BEiT/DINOv2 names, ``gamma``/``beta``, ``weight_g``/``weight_v``,
   a missing or extra base-model prefix) and what it rebuilds from several
   tensors (per-expert MoE weights stacked into one fused tensor).

Tensors of the third kind's second sort keep their checkpoint names (that is
the layout MLX ports such as mlx-lm read) and get the rule of the tensor they
are a piece of, when stacking or concatenating cannot change it (identity).
Everything else is reported with the reason its rule did not come from the model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ..core.entry import TensorEntry
from ..core.spec import RuleSpec
from .tree import TensorInfo, Tree

WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# transformers' conversion operations under which a piece keeps its own layout.
_PIECE_OPS = {"MergeModulelist", "Concatenate", "Chunk", "Split", "SplitModulelist"}


@dataclass
class Match:
    specs: list[RuleSpec] = field(default_factory=list)
    drop: dict[str, str] = field(default_factory=dict)
    unmatched: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint name, why its rule is not the model's)
    missing: list[str] = field(default_factory=list)  # model tensors the checkpoint lacks
    tensors: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return self.tensors - len(self.unmatched)

    def to_dict(self) -> dict:
        return {
            "tensors": self.tensors,
            "matched": self.matched,
            "unmatched": [{"name": n, "why": w} for n, w in self.unmatched],
            "missing": self.missing,
            "dropped": [{"name": n, "why": w} for n, w in self.drop.items()],
        }


def strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p) :], True
    return name


class _Transformers:
    """transformers' own load-time renaming, when the model is a transformers model and the API is there."""

    def __init__(self, model, shapes: dict):
        self.ok = False
        if "transformers" not in sys.modules:
            return  # nothing imported transformers, so the model is no PreTrainedModel: skip seconds of imports
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import WeightConverter, rename_source_key
            from transformers.modeling_utils import PreTrainedModel
        except ImportError:
            return
        if not isinstance(model, PreTrainedModel):
            return
        try:
            transforms = get_model_conversion_mapping(model)
        except Exception:  # transformers internals vary between releases; fall back to plain names
            return
        self.converters = [t for t in transforms if isinstance(t, WeightConverter)]
        self.renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
        self.prefix = getattr(model, "base_model_prefix", None) or None
        self.rename_source_key = rename_source_key
        self.present = dict.fromkeys(shapes, True)
        self.ok = True

    def rename(self, name: str) -> tuple[str, list[str] | None]:
        """(model name, conversion operations when the tensor is a piece of a rebuilt one, else None)."""
        try:
            new, pattern = self.rename_source_key(name, self.renamings, self.converters, self.prefix, self.present)
        except Exception:  # an internal API that changed: no renaming
            return name, None
        if pattern is None:
            return new, None
        conv = next((c for c in self.converters if pattern in c.source_patterns), None)
        return new, [type(op).__name__ for op in getattr(conv, "operations", [])]


def match(entries: list[TensorEntry], tree: Tree, model=None) -> Match:
    res = Match(tensors=len(entries))
    hf = _Transformers(model, tree.shapes) if model is not None else None
    to_ckpt: dict[str, str] = {}  # model name -> checkpoint name
    exact: set[str] = set()  # checkpoint names equal to the model's once wrappers are stripped
    pieces: dict[str, tuple[str, list[str]]] = {}
    why: dict[str, str] = {}

    for e in entries:
        plain = strip_wrappers(e.name)
        target, ops = (plain, None) if plain in tree.shapes or not (hf and hf.ok) else hf.rename(plain)
        if ops is not None and target in tree.shapes:
            pieces[e.name] = (target, ops)
        elif target not in tree.shapes:
            why[e.name] = "not in the model"
        elif tuple(e.shape) != tree.shapes[target]:
            why[e.name] = f"shape {list(e.shape)} differs from the model's {list(tree.shapes[target])}"
        elif target in to_ckpt:
            why[e.name] = f"the model's {target} is already matched to {to_ckpt[target]}"
        else:
            to_ckpt[target] = e.name
            if plain == target:
                exact.add(e.name)

    covered: set[str] = set()
    by_source = {t.sources: t for t in tree.tensors}
    for t in tree.tensors:
        names = [to_ckpt.get(s) for s in t.sources]
        if any(n is None for n in names):
            continue
        covered.update(names)
        if t.mlx is None:
            res.drop[names[0]] = t.why
            continue
        res.specs.append(RuleSpec(_out_name(t, names, exact), tuple(names), t.rule, dict(t.args), "model"))

    for name, (target, ops) in pieces.items():
        whole = by_source.get((target,))
        bad = sorted(set(ops) - _PIECE_OPS)
        if whole is None or whole.rule != "identity" or bad:
            why[name] = (
                f"transformers rebuilds {target} from it ({', '.join(ops)}) and the rule of a piece is not known"
            )
            continue
        covered.add(name)
        res.specs.append(RuleSpec(strip_wrappers(name), (name,), "identity", {}, "model"))

    for e in entries:
        if e.name not in covered:
            res.unmatched.append((e.name, why.get(e.name, "part of a model tensor whose other sources are missing")))
    matched_model = set(to_ckpt) | {t for t, _ in pieces.values()}
    res.missing = sorted(n for n in tree.shapes if n not in matched_model)
    tied = [n for n in res.missing if n in tree.tied]
    if tied:
        res.notes.append(
            f"{len(tied)} model tensor(s) share storage with another and are not in the checkpoint "
            f"(tied weights, e.g. {tied[0]} = {tree.tied[tied[0]]})"
        )
    renamed = len(to_ckpt) - len(exact)
    res.notes += rename_notes(renamed, len(pieces))
    return res


def rename_notes(renamed: int, pieces: int) -> list[str]:
    """What a match says of names it found through renames and of fused tensors' pieces (the data path too)."""
    notes = []
    if renamed:
        notes.append(f"{renamed} checkpoint name(s) matched the model through known renames")
    if pieces:
        notes.append(
            f"{pieces} checkpoint tensor(s) are pieces transformers stacks into fused tensors; "
            "kept per piece under their checkpoint names"
        )
    return notes


def _out_name(t: TensorInfo, names: list[str], exact: set[str]) -> str:
    """The MLX name, said the way the checkpoint says it when only a known rename separates the two."""
    if all(n in exact for n in names):
        return t.mlx
    if len(names) == 1 and t.mlx == t.sources[0]:
        return strip_wrappers(names[0])
    return t.mlx
