"""``torch2mlx.to_torch``: MLX weights back to a PyTorch state dict (names and layouts undone).

The forward specs (torch -> MLX) come from the torch model through the analyzer,
exactly as ``convert`` computed them, or from a conversion's records (its
manifest or ``Result``). ``reverse_specs`` turns them around and the stream's
plan and block computation apply them in memory, so bfloat16 stays bit-exact
and sums are split the way ``torch2mlx.core.reverse`` documents.
"""
from __future__ import annotations

import os

from ..core import dtypes
from ..errors import Torch2MLXError
from ..core.reverse import reverse_specs
from ..stream.checkpoint import Checkpoint, open_checkpoint
from ..core.entry import TensorEntry
from ..core.spec import RuleSpec
from ..stream import manifest
from ..stream.reverse_plan import dequantized
from .memory import is_module, memory_checkpoint


def _names_only(state: dict) -> Checkpoint:
    """The model's tensor names, dtypes and shapes: all the analyzer's matching needs (meta tensors too)."""
    entries = []
    for n, t in state.items():
        dt = dtypes.by_name(str(t.dtype))
        if dt is None:
            raise Torch2MLXError(f"{n}: dtype {t.dtype} has no MLX counterpart")
        entries.append(TensorEntry(n, dt, tuple(t.shape)))
    return Checkpoint("<model>", entries, [], "memory")


def _forward(model_or_rules, path: str | None):
    """``(forward specs, dropped torch names, the model's state dict or None, the conversion's records)``."""
    if is_module(model_or_rules):
        from ..analysis.stream_inputs import module_inputs
        state = model_or_rules.state_dict()
        got = module_inputs(_names_only(state), model_or_rules)
        return got.specs or [], dict(got.drop), state, {}
    if model_or_rules is None:
        if not path or not os.path.isfile(manifest.path(path)):
            raise Torch2MLXError("to_torch needs the torch model (or its rules) unless the source is a "
                                 f"conversion directory with {manifest.NAME}")
        try:
            records = manifest.read(path).tensors
        except (OSError, ValueError, TypeError) as e:
            raise Torch2MLXError(f"{manifest.path(path)}: unreadable manifest ({e})") from None
        if not isinstance(records, dict):
            raise Torch2MLXError(f"{manifest.path(path)}: unreadable manifest (it lists no tensors)")
        return manifest.specs_from_records(records)[0], {}, None, records
    plan = getattr(model_or_rules, "plan", None)
    if plan is not None:   # a conversion's Result
        records = plan.tensor_records()
        return manifest.specs_from_records(records)[0], {}, None, records
    specs = list(model_or_rules)
    if not all(isinstance(s, RuleSpec) for s in specs):
        raise Torch2MLXError("model_or_rules must be an nn.Module, a conversion Result or a list of RuleSpec")
    return specs, {}, None, {}


def _select(ck: Checkpoint, back: list[RuleSpec], strict: bool) -> tuple[Checkpoint, list[RuleSpec]]:
    have = {e.name for e in ck.entries}
    missing = sorted({s for spec in back for s in spec.sources} - have)
    if strict and missing:
        raise Torch2MLXError(f"{len(missing)} MLX tensor(s) the model needs are missing, e.g. {missing[:3]}")
    back = [s for s in back if all(n in have for n in s.sources)]
    used = {n for s in back for n in s.sources}
    extra = sorted(have - used)
    if strict and extra:
        raise Torch2MLXError(f"{len(extra)} MLX tensor(s) have no place in the model, e.g. {extra[:3]} "
                             "(strict=False ignores them)")
    entries = [e for e in ck.entries if e.name in used]
    return Checkpoint(ck.path, entries, ck.files, ck.format, layout="mlx"), back


def _to_tensor(arr, dt):
    import torch
    t = torch.from_numpy(arr)
    return t if dt.exact_numpy else t.view(getattr(torch, dt.name))


def to_torch(path_or_dict, model_or_rules=None, *, strict: bool = True, dtype: str = "keep") -> dict:
    """A PyTorch state dict from MLX weights: a conversion (file or directory) or ``{name: array}``.

    ``model_or_rules``: the torch model the weights belong to (its names, layouts and
    wrapper prefixes such as torch.compile's ``_orig_mod.``), the ``Result`` of
    ``convert``, or forward ``RuleSpec``s; optional for a directory with a manifest.
    With a model, buffers MLX does not keep (BatchNorm's ``num_batches_tracked``) are
    taken from the model, so ``model.load_state_dict(sd, strict=True)`` accepts the result.
    ``strict``: every MLX tensor must have a place and every needed one must be there.
    """
    from ..stream.data import DataReader
    from ..stream.execute import compute_block
    from ..stream.options import Options
    from ..stream.planner import build
    path = os.fspath(path_or_dict) if isinstance(path_or_dict, (str, os.PathLike)) else None
    ck = open_checkpoint(path) if path is not None else memory_checkpoint(path_or_dict, "<MLX weights>")
    specs, dropped, state, records = _forward(model_or_rules, path)
    if not specs:
        raise Torch2MLXError("no tensors to convert back (the rules are empty)")
    out = {}
    with DataReader() as reader:
        if records:   # a conversion's quantized weights go back dequantized, as the stream's --to torch does
            ck = dequantized(ck, records, reader)[0]
        ck, back = _select(ck, reverse_specs(specs), strict)
        plan = build(ck, Options.make(dtype=dtype), back)
        for op in plan.ops:
            o = op.outputs[0]
            arr = compute_block(op, reader, 0, o.shape[0] if o.shape else 1).reshape(o.shape)
            out[o.name] = _to_tensor(arr, o.dtype)
    if state is None:
        return out
    for name in dropped:
        t = state[name]
        out[name] = t.detach().clone() if t.device.type != "meta" else _zeros_like(t)
    order = {n: i for i, n in enumerate(state)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def _zeros_like(t):
    import torch
    return torch.zeros(t.shape, dtype=t.dtype)
