"""Walk a module tree: every parameter and persistent buffer, mapped to MLX through the registry.

Reads module attributes and tensor shapes only; works the same on the meta
device, on CPU tensors or on a model too large to load.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..core import registry, rules
from ..core.registry import CUSTOM, Layer, TensorMap
from . import source
from .source import Blocker


@dataclass
class TensorInfo:
    """One MLX tensor of the model (``mlx`` None: a buffer MLX does not keep, ``why`` says so)."""

    mlx: str | None
    sources: tuple[str, ...]  # full torch names
    source_shapes: tuple[tuple[int, ...], ...]
    shape: tuple[int, ...]  # MLX shape
    dtype: str
    rule: str
    args: dict
    rule_source: str  # model: from the registry; default: an unsupported module's tensor
    layer: str  # registry entry or class path
    why: str = ""

    def to_dict(self) -> dict:
        d = {
            "mlx": self.mlx,
            "sources": list(self.sources),
            "shape": list(self.shape),
            "dtype": self.dtype,
            "rule": self.rule,
            "rule_source": self.rule_source,
            "layer": self.layer,
        }
        if self.args:
            d["args"] = dict(self.args)
        if any(s != self.shape for s in self.source_shapes):
            d["source_shapes"] = [list(s) for s in self.source_shapes]
        if self.why:
            d["why"] = self.why
        return d


@dataclass
class LayerUse:
    key: str
    mlx: str | None
    supported: bool
    count: int = 0
    parameters: int = 0
    rules: set = field(default_factory=set)

    def to_dict(self) -> dict:
        return {
            "layer": self.key,
            "mlx": self.mlx,
            "supported": self.supported,
            "count": self.count,
            "parameters": self.parameters,
            "rules": sorted(self.rules),
        }


@dataclass
class ModuleInfo:
    """One module of the tree as the walk saw it: code generation builds the MLX module from these."""

    module: object  # the torch module
    path: str  # its torch path ("" for the root)
    mlx_path: str  # its MLX path, after the registry's child renames of its ancestors
    entry: Layer | None  # registry entry (CUSTOM: a module of the model's own holding tensors)
    supported: bool
    tensors: list[TensorInfo] = field(default_factory=list)  # its own tensors (full MLX names)
    buffers: dict = field(default_factory=dict)  # its non-persistent buffers: name -> tensor


@dataclass
class Tree:
    tensors: list[TensorInfo] = field(default_factory=list)
    layers: dict[str, LayerUse] = field(default_factory=dict)
    unsupported: Counter = field(default_factory=Counter)
    blockers: list[Blocker] = field(default_factory=list)
    parameters: int = 0
    covered: int = 0
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # every torch tensor name -> shape
    tied: dict[str, str] = field(default_factory=dict)  # a name -> the first name of that tensor
    notes: list[str] = field(default_factory=list)
    modules: list[ModuleInfo] = field(default_factory=list)  # every module, parents first

    @property
    def coverage(self) -> float:
        return self.covered / self.parameters if self.parameters else 1.0


def _dtype(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _own_tensors(mod) -> dict:
    out = {n: p for n, p in mod._parameters.items() if p is not None}
    skip = getattr(mod, "_non_persistent_buffers_set", set())
    out.update({n: b for n, b in mod._buffers.items() if b is not None and n not in skip})
    return out


def _weight_norms(mod, entry: Layer | None, tensors: dict) -> tuple[list[TensorMap], dict, list[str]]:
    """weight_norm in either form: parametrizations (``parametrizations.weight.original0/1``) or the old hook."""
    maps, extra, problems = [], {}, []
    rename = entry.child_name if entry else (lambda n: n)
    layout = (lambda n: entry.rules.get(n, "identity")) if entry else (lambda n: "identity")
    pz = getattr(mod, "parametrizations", None)
    if pz is not None and hasattr(pz, "items"):
        for name, plist in pz.items():
            originals = {n: p for n, p in plist._parameters.items() if p is not None}
            full = {f"parametrizations.{name}.{n}": p for n, p in originals.items()}
            extra.update(full)
            if len(plist) == 1 and type(plist[0]).__name__ == "_WeightNorm" and len(originals) == 2:
                g, v = (f"parametrizations.{name}.original{i}" for i in (0, 1))
                maps.append(
                    TensorMap(rename(name), (g, v), "weight_norm", {"dim": plist[0].dim, "layout": layout(name)})
                )
            else:
                problems.append(
                    f"parametrization {', '.join(type(p).__name__ for p in plist)} on {name!r} "
                    "(materialize it with torch.nn.utils.parametrize.remove_parametrizations)"
                )
                maps += [TensorMap(n, (n,)) for n in full]
    for hook in getattr(mod, "_forward_pre_hooks", {}).values():
        name = getattr(hook, "name", None)
        if type(hook).__name__ == "WeightNorm" and f"{name}_g" in tensors and f"{name}_v" in tensors:
            maps.append(
                TensorMap(
                    rename(name), (f"{name}_g", f"{name}_v"), "weight_norm", {"dim": hook.dim, "layout": layout(name)}
                )
            )
    return maps, extra, problems


def _hook_blockers(mod, key: str, path: str) -> list[Blocker]:
    found = []
    for attr, what in (
        ("_forward_hooks", "forward hook"),
        ("_forward_pre_hooks", "forward pre-hook"),
        ("_backward_hooks", "backward hook"),
        ("_backward_pre_hooks", "backward pre-hook"),
    ):
        for hook in getattr(mod, attr, {}).values():
            if type(hook).__name__ == "WeightNorm":
                continue  # old-style weight_norm: folded into the weight by the weight_norm rule
            found.append(Blocker("hook", key, path, f"{what} {getattr(hook, '__qualname__', type(hook).__name__)}"))
    return found


def _reason(mod, entry: Layer | None, builtin: bool, problems: list[str]) -> str | None:
    """Why this module does not map to MLX (None when it does)."""
    if problems:
        return "; ".join(problems)
    if entry is None:
        # An unknown torch layer does not map; a model's own module without tensors is only composition.
        return "no MLX equivalent known" if builtin else None
    if not entry.supported:
        return entry.note or "no MLX equivalent"
    return entry.check(mod) if entry.check is not None else None


def _maps(mod, entry: Layer | None, names: list[str]) -> tuple[list[TensorMap], dict[str, str]]:
    if entry is CUSTOM:
        layouts = source.functional_layouts(type(mod)) if names else {}
        return [TensorMap(n, (n,), layouts.get(n, "identity")) for n in names], {}
    if entry is not None:
        return entry.tensor_maps(mod, names)
    return [TensorMap(n, (n,)) for n in names], {}


def walk(model) -> Tree:
    tree = Tree()
    counted: dict[int, str] = {}
    seen_classes: set = set()

    def visit(mod, tprefix: str, mprefix: str):
        cls = type(mod)
        tensors = _own_tensors(mod)
        entry = registry.lookup(cls, list(tensors))
        if entry is not None and entry.torch == "transformers *LayerNorm" and not source.centers(cls):
            entry = registry.get("transformers *RMSNorm")  # T5-style: "LayerNorm" by name, RMS by code
        wn_maps, wn_tensors, problems = _weight_norms(mod, entry, tensors)
        tensors.update(wn_tensors)
        builtin = registry.is_torch_builtin(cls)
        if entry is None and not builtin and tensors:
            entry = CUSTOM
        key = entry.torch if entry is not None and entry is not CUSTOM else registry.class_key(cls)
        path = tprefix.rstrip(".") or "(root)"
        reason = _reason(mod, entry, builtin, problems)
        supported = reason is None
        rule_source = "model" if entry is not None and entry.supported and not problems else "default"
        if reason is not None:
            tree.unsupported[key] += 1
            tree.blockers.append(Blocker("layer", key, path, reason))
        tree.blockers += _hook_blockers(mod, key, path)
        if not builtin and cls not in seen_classes:
            seen_classes.add(cls)
            tree.blockers += source.forward_blockers(cls)
            if entry is not None and entry.mlx == "mlx.nn.RMSNorm" and source.offset_weight(cls):
                tree.notes.append(
                    f"{cls.__name__} scales by (1 + weight): an MLX RMSNorm needs weight + 1 "
                    "(the weights are kept as stored; mlx-lm's Gemma norms add the 1)"
                )

        handled = {s for m in wn_maps for s in m.sources}
        maps, dropped = _maps(mod, entry, [n for n in tensors if n not in handled])
        maps = wn_maps + maps
        if entry is not None or tensors:
            use = tree.layers.setdefault(key, LayerUse(key, entry.mlx if entry else None, supported))
            use.count += 1
            use.supported = use.supported and supported
            use.rules.update(m.rule for m in maps)

        for n, t in tensors.items():
            full = tprefix + n
            tree.shapes[full] = tuple(t.shape)
            first = counted.get(id(t))
            if first is not None:
                tree.tied[full] = first
                continue
            counted[id(t)] = full
            if n in mod._parameters or n in wn_tensors:
                tree.parameters += t.numel()
                tree.layers[key].parameters += t.numel()
                if supported:
                    tree.covered += t.numel()
        skip = getattr(mod, "_non_persistent_buffers_set", set())
        info = ModuleInfo(
            mod,
            tprefix.rstrip("."),
            mprefix.rstrip("."),
            entry,
            supported,
            buffers={n: b for n, b in mod._buffers.items() if b is not None and n in skip},
        )
        tree.modules.append(info)
        for m in maps:
            shapes = tuple(tuple(tensors[s].shape) for s in m.sources)
            out_shape = tuple(rules.get(m.rule).out_shape(list(shapes), m.args))
            tree.tensors.append(
                TensorInfo(
                    mprefix + m.mlx,
                    tuple(tprefix + s for s in m.sources),
                    shapes,
                    out_shape,
                    _dtype(tensors[m.sources[0]]),
                    m.rule,
                    dict(m.args),
                    rule_source,
                    key,
                )
            )
            info.tensors.append(tree.tensors[-1])
        for n, why in dropped.items():
            t = tensors[n]
            tree.tensors.append(
                TensorInfo(
                    None, (tprefix + n,), (tuple(t.shape),), tuple(t.shape), _dtype(t), "drop", {}, "model", key, why
                )
            )

        for name, child in mod._modules.items():
            if child is None or (name == "parametrizations" and wn_tensors):
                continue
            visit(child, f"{tprefix}{name}.", f"{mprefix}{entry.child_name(name) if entry else name}.")

    visit(model, "", "")
    return tree
