"""The analyzer's answer: how much of a model converts, how each tensor does, and what blocks the rest."""

from __future__ import annotations

from dataclasses import dataclass, field

from .matching import Match, match
from .source import Blocker
from .tree import LayerUse, TensorInfo, walk

_HOW = {
    "module": "a live module",
    "class": "its class, built on the meta device",
    "config": "config.json, built on the meta device",
    "headers": "checkpoint headers only (no model)",
}


@dataclass
class Report:
    source: str
    model: str | None  # the analyzed class, None without a model
    how: str  # module | class | config | headers
    parameters: int
    coverage: float | None  # share of parameter elements whose module maps to MLX; None without a model
    unsupported: dict[str, int]
    blockers: list[Blocker]
    tensors: list[TensorInfo]
    layers: list[LayerUse] = field(default_factory=list)
    checkpoint: Match | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = {
            "source": self.source,
            "model": self.model,
            "built_from": self.how,
            "coverage": self.coverage,
            "parameters": self.parameters,
            "unsupported": dict(self.unsupported),
            "blockers": [b.to_dict() for b in self.blockers],
            "tensors": [t.to_dict() for t in self.tensors],
            "layers": [u.to_dict() for u in self.layers],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }
        if self.checkpoint is not None:
            d["checkpoint"] = self.checkpoint.to_dict()
        return d

    def table(self, limit: int = 20) -> str:
        lines = [
            f"source:     {self.source}",
            f"model:      {self.model or '-'} (from {_HOW[self.how]}, {self.seconds:.2f} s)",
            f"parameters: {self.parameters:,}",
        ]
        if self.coverage is None:
            lines.append("coverage:   unknown (no model information: rules are inferred from names and shapes)")
        else:
            lines.append(f"coverage:   {self.coverage:.2%} of parameters are in layers that map to MLX")
        if self.layers:
            lines += [
                "",
                _columns(
                    [("layer", "count", "parameters", "MLX", "rules")]
                    + [
                        (
                            _short(u.key) + ("" if u.supported else "  (!)"),
                            str(u.count),
                            f"{u.parameters:,}",
                            u.mlx or "-",
                            ", ".join(sorted(u.rules)) or "-",
                        )
                        for u in self.layers
                    ]
                ),
            ]
        else:
            lines += ["", _tensor_rows(self.tensors, limit)]
        lines.append("")
        lines.append("unsupported: " + (", ".join(f"{k} x{v}" for k, v in self.unsupported.items()) or "none"))
        lines.append(f"blockers:    {len(self.blockers) or 'none'}")
        for b in self.blockers[:limit]:
            lines.append(f"  {b.kind:<17} {b.where}  {b.detail}")
        if len(self.blockers) > limit:
            lines.append(f"  ... {len(self.blockers) - limit} more (--json lists all)")
        ck = self.checkpoint
        if ck is not None:
            lines.append(
                f"checkpoint:  {ck.tensors} tensors, {ck.matched} matched to the model, "
                f"{len(ck.unmatched)} with rules not from the model, {len(ck.drop)} dropped, "
                f"{len(ck.missing)} model tensors absent"
            )
            for n, w in ck.unmatched[:limit]:
                lines.append(f"  not from the model: {n} ({w})")
            if len(ck.unmatched) > limit:
                lines.append(f"  ... {len(ck.unmatched) - limit} more (--json lists all)")
        size = sum(_numel(t.shape) for t in self.tensors if t.mlx)
        lines.append(
            f"tensors:     {len(self.tensors)} ({size:,} elements; --json lists each with its MLX name, "
            f"shape, dtype, rule and rule source)"
        )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = table


def _short(key: str) -> str:
    """A class path as a table shows it: library and class (torch.nn names are already short)."""
    if key.startswith("torch.nn.") and key.count(".") == 2 or " " in key:
        return key
    return key.split(".")[0] + ":" + key.rsplit(".", 1)[-1]


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _columns(rows, width: int = 48) -> str:
    widths = [min(max(len(r[i]) for r in rows), width) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c[:width].ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _tensor_rows(tensors: list[TensorInfo], limit: int) -> str:
    rows = [("tensor", "shape", "dtype", "rule", "from")] + [
        (t.mlx or t.sources[0], "x".join(map(str, t.shape)) or "scalar", t.dtype, t.rule, t.rule_source)
        for t in tensors[: limit * 5]
    ]
    text = _columns(rows, 60)
    if len(tensors) > limit * 5:
        text += f"\n... {len(tensors) - limit * 5} more (--json lists all)"
    return text


def model_report(built, source: str, ck=None) -> Report:
    """Walk a built model; with a checkpoint, match its tensors to the model's too."""
    tree = walk(built.model)
    matched = match(ck.entries, tree, built.model) if ck is not None else None
    notes = built.notes + tree.notes + (matched.notes if matched else []) + (list(ck.notes) if ck else [])
    layers = sorted(tree.layers.values(), key=lambda u: (-u.parameters, u.key))
    return Report(
        source,
        built.name,
        built.how,
        tree.parameters,
        tree.coverage,
        dict(tree.unsupported),
        tree.blockers,
        tree.tensors,
        layers,
        matched,
        notes,
    )
